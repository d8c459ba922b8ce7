"""Discrete DDPM (Ho et al. 2020): the VP chain with 1000 steps, the simple eps loss, the
DDPM U-Net (35.2M parameters as built here), ancestral sampling. The DDPM paper's
hyper-parameters: Adam 2e-4, batch 128, 5000 warmup steps, gradient clipping at 1, dropout 0.1,
EMA 0.9999, random flips."""
from configs.default_cifar10 import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vpsde"
    config.training.continuous = False
    config.training.reduce_mean = True
    config.training.n_iters = 800001
    config.sampling.method = "pc"
    config.sampling.predictor = "ancestral"
    config.sampling.corrector = "none"
    config.data.centered = True

    model = config.model
    model.name = "ddpm"
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.dropout = 0.1
    model.embedding_type = "positional"
    return config
