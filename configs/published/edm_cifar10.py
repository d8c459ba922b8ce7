"""NVlabs/edm's CIFAR-10 networks (edm-cifar10-32x32-uncond-vp.pkl / -uncond-ve.pkl: EDMPrecond
with DDPM++ or NCSN++; baseline-cifar10-32x32-uncond-vp.pkl / -ve.pkl: VPPrecond, VEPrecond), read
from the pickle named by eval.reference_checkpoint; the class-conditional ones with
configs/published/edm_cifar10_cond.py.

Sampled as EDM's generate.py samples every one of them (`edm_sampler`): on EDM's process
sigma(t) = t (`edm`) from sigma_max 80 to sigma_min 0.002, each clamped to the network's own
noise levels as generate.py clamps them (a VEPrecond's sigma_min 0.02; a VPPrecond's range
0.001 to 152 leaves 0.002 to 80), with Heun on Karras et al.'s rho-7 grid, 18 steps (35
evaluations). EDM's knobs are fields: --steps is sampling.steps, --rho sampling.rho, --sigma_min
sampling.end_noise_level, --sigma_max model.sigma_max, --S_churn / --S_min / --S_max / --S_noise
sampling.churn / churn_min / churn_max / churn_noise, --seeds sampling.seeds (per-image latents
and classes as generate.py draws them), --class sampling.labels. training.sde=vpsde (VPPrecond)
or vesde (the others) run them under those processes instead."""
from configs.default_cifar10 import get_default_configs


def get_config():
    config = get_default_configs()
    config.model.name = "edm"      # the network comes from the pickle
    config.model.num_classes = 0
    config.model.sigma_min = 0.002
    config.model.sigma_max = 80.0
    config.training.sde = "edm"    # sigma(t) = t: EDM's sampler's process for every preconditioning
    config.data.centered = True    # EDM's images are in [-1, 1]
    config.sampling.method = "heun"
    config.sampling.steps = 18
    config.sampling.end_noise_level = 0.002  # EDM's sigma_min, on whichever process the network runs
    return config
