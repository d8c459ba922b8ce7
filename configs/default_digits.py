"""scikit-learn's 8x8 handwritten digits (1528 train / 269 test images, bundled: no download),
resized to 16x16, one channel. Sized to train to recognisable digits in minutes on a CPU."""
from configs.defaults import get_base_config


def get_default_configs():
    config = get_base_config()
    training = config.training
    training.batch_size = 64
    training.n_iters = 6000
    training.log_freq = 50
    training.eval_freq = 500
    training.snapshot_freq = 2000
    training.snapshot_freq_for_preemption = 500
    training.num_snapshot_samples = 64

    config.sampling.steps = 500
    config.sampling.num_samples = 64
    config.sampling.batch_size = 64
    config.eval.num_samples = 256
    config.eval.batch_size = 128
    config.eval.bpd_num_images = 128

    data = config.data
    data.dataset = "digits"
    data.image_size = 16
    data.num_channels = 1
    data.random_flip = False  # digits are not mirror-symmetric
    data.centered = True

    model = config.model
    model.ema_rate = 0.999
    model.dropout = 0.0
    model.nf = 32
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (8,)
    model.resamp_with_conv = True
    model.conditional = True
    model.nonlinearity = "swish"
    model.normalization = "GroupNorm"

    config.optim.lr = 1e-3
    config.optim.warmup = 200
    return config
