"""EDM on the bundled digits (in [-1, 1], std near EDM's sigma_data = 0.5) with the vp_digits
network behind EDM's preconditioning, its loss, and Heun on the rho-7 grid (18 steps)."""
from configs.vp_digits import get_config as vp_digits


def get_config():
    config = vp_digits()
    config.training.sde = "edm"
    config.training.loss = "edm"
    config.model.sigma_min = 0.002
    config.model.sigma_max = 80.0
    config.model.parameterization = "edm"
    config.sampling.method = "heun"
    config.sampling.steps = 18
    config.sampling.eps = 0.002
    return config
