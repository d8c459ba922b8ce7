"""Discrete SMLD / NCSN (Song & Ermon 2019, 2020): the VE chain's geometric noise levels, the
sigma^2-weighted denoising loss, annealed Langevin dynamics. The network is NCSN++ conditioned on
log sigma through Fourier features (the original RefineNet is not provided)."""
from configs.ve_cifar10 import get_config as get_ve_config


def get_config():
    config = get_ve_config()
    config.training.continuous = False
    config.model.num_scales = 232      # NCSNv2's CIFAR-10 noise levels (Song & Ermon 2020)
    config.model.sigma_max = 50.0
    config.sampling.steps = 232
    config.sampling.predictor = "none"
    config.sampling.corrector = "ald"
    config.sampling.corrector_steps = 5
    config.sampling.snr = 0.176
    return config
