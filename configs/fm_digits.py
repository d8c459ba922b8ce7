"""Flow matching on the bundled digits with the vp_digits network predicting the velocity."""
from configs.vp_digits import get_config as vp_digits


def get_config():
    config = vp_digits()
    config.training.sde = "rectified_flow"
    config.training.loss = "flow_matching"
    config.model.parameterization = "velocity"
    config.sampling.method = "dpm_solver++"
    config.sampling.steps = 20
    return config
