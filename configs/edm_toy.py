"""EDM (Karras et al. 2022) on a 2-D toy set with the MLP (configs/processes.py: the edm process,
EDM's preconditioning, loss and Heun sampler). Toy data are not scaled to EDM's
sigma_data = 0.5; the preconditioning still helps, with a std near 1."""
from configs.default_toy import get_default_configs
from configs.processes import edm


def get_config():
    return edm(get_default_configs())
