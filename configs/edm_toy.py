"""EDM (Karras et al. 2022) on a 2-D toy set with the MLP: the edm process (sigma = t on
[0.002, 80]), EDM's preconditioning around the network, its log-normal noise levels and loss
weighting, and its deterministic Heun sampler on the rho-7 grid (18 steps, 35 NFE). Toy data are
not scaled to EDM's sigma_data = 0.5; the preconditioning still helps, with a std near 1."""
from configs.default_toy import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "edm"
    config.training.loss = "edm"
    config.model.sigma_min = 0.002
    config.model.sigma_max = 80.0
    config.model.parameterization = "edm"
    config.sampling.method = "heun"
    config.sampling.steps = 18
    config.sampling.eps = 0.002
    return config
