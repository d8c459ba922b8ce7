"""2-D toy sets with the MLP: a whole run trains in a minute or two on a laptop CPU."""
from configs.defaults import get_base_config


def get_default_configs():
    config = get_base_config()
    config.device = "cpu"
    training = config.training
    training.batch_size = 512
    training.n_iters = 8000
    training.log_freq = 100
    training.eval_freq = 500
    training.snapshot_freq = 4000
    training.snapshot_freq_for_preemption = 1000
    training.num_snapshot_samples = 2000
    training.reduce_mean = True

    config.sampling.steps = 500
    config.sampling.num_samples = 4000
    config.sampling.batch_size = 4000
    config.eval.num_samples = 4000
    config.eval.batch_size = 4000
    config.eval.bpd_num_images = 2000
    config.eval.bpd_trace = "exact"        # exact divergence is cheap in 2-D

    data = config.data
    data.dataset = "checkerboard"
    data.dim = 2
    data.num_points = 20000
    data.random_flip = False

    model = config.model
    model.name = "mlp"
    model.width = 256
    model.num_blocks = 3
    model.embed_dim = 64
    model.embedding_type = "positional"
    model.fourier_scale = 16.0
    model.scale_by_sigma = False
    model.ema_rate = 0.999
    model.dropout = 0.0

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 200
    optim.grad_clip = 1.0
    return config
