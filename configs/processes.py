"""The settings that make a config EDM's or flow matching's, on top of any data/network config:
the process, the network's parameterization, the loss, and the sampler each is used with."""


def edm(config):
    """Karras et al. 2022: the edm process on [0.002, 80], EDM's preconditioning and loss, and its
    deterministic sampler (Heun on the rho-7 grid, 18 steps, 35 NFE)."""
    config.training.sde = "edm"
    config.training.loss = "edm"
    config.model.sigma_min = 0.002
    config.model.sigma_max = 80.0
    config.model.parameterization = "edm"
    config.sampling.method = "heun"
    config.sampling.steps = 18
    config.sampling.eps = 0.002
    return config


def flow_matching(config):
    """The linear path x_t = (1 - t) x_0 + t z, a network predicting its velocity, the
    flow-matching loss; sampled with dpm_solver++, which on velocity networks runs as UniPC
    (order 3 with its corrector) on its log-SNR grid, the family's declared default: within 3% of
    the best fast sampler at 10 and 20 NFE on the trained digits and Fashion-MNIST flow models
    (docs/benchmarks.md, "Defaults by family")."""
    config.training.sde = "rectified_flow"
    config.training.loss = "flow_matching"
    config.model.parameterization = "velocity"
    config.sampling.method = "dpm_solver++"
    config.sampling.steps = 20
    return config
