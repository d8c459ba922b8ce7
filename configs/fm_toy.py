"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023) on a 2-D toy set with the
MLP: the linear path x_t = (1 - t) x_0 + t z, a network predicting its velocity, the flow-matching
loss, and the probability-flow ODE (which, on this path, is the learned flow) sampled with
DPM-Solver++ on its default grid."""
from configs.default_toy import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "rectified_flow"
    config.training.loss = "flow_matching"
    config.model.parameterization = "velocity"
    config.sampling.method = "dpm_solver++"
    config.sampling.steps = 20
    return config
