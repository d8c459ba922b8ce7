"""Discrete DDPM (Ho et al. 2020): the VP chain with 1000 steps, the simple eps loss, the
DDPM U-Net (35.2M parameters as built here), ancestral sampling. The DDPM paper's
hyper-parameters: Adam 2e-4, batch 128, 5000 warmup steps, gradient clipping at 1, dropout 0.1,
EMA 0.9999, random flips, 800k steps."""
from configs.published.common import ddpm, published_config


def get_config():
    config = ddpm(published_config("vpsde", continuous=False))
    config.training.n_iters = 800001
    return config
