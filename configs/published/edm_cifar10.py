"""NVlabs/edm's CIFAR-10 networks (edm-cifar10-32x32-uncond-vp.pkl / -uncond-ve.pkl, EDMPrecond
with DDPM++ or NCSN++), read from the pickle named by eval.reference_checkpoint; the class-
conditional ones with configs/published/edm_cifar10_cond.py.

EDMPrecond's noise level sigma is the VE SDE's on EDM's range [0.002, 80]; the default sampler is
EDM's deterministic one, Heun on Karras et al.'s rho-7 grid with 18 steps (35 evaluations)."""
from configs.default_cifar10 import get_default_configs


def get_config():
    config = get_default_configs()
    config.model.name = "edm"      # the network comes from the pickle
    config.model.num_classes = 0
    config.model.sigma_min = 0.002
    config.model.sigma_max = 80.0
    config.training.sde = "vesde"
    config.data.centered = True    # EDM's images are in [-1, 1]
    config.sampling.method = "heun"
    config.sampling.steps = 18
    config.sampling.end_noise_level = 0.002  # EDM's sigma_min, on whichever process the network runs
    return config
