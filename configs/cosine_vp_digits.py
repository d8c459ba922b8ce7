"""The cosine VP schedule (Nichol & Dhariwal 2021) on the bundled digits with the vp_digits
network, predicting v (Salimans & Ho 2022), trained by denoising score matching."""
from configs.vp_digits import get_config as vp_digits


def get_config():
    config = vp_digits()
    config.training.sde = "cosine_vp"
    config.model.parameterization = "v"
    config.sampling.method = "dpm_solver++"
    config.sampling.steps = 20
    return config
