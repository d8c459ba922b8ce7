"""A diffusers UNet2DModel pipeline folder (what DDPMPipeline.save_pretrained writes: google/ddpm-*,
your own), read from the folder named by eval.reference_checkpoint (docs/diffusers.md).

The network and its betas come from the folder; these fields describe them so that the run's
process is the folder's and is checked against it (`published.diffusers.check_config`): set
model.beta_schedule / beta_start / beta_end / num_scales and model.parameterization (noise,
data or v for epsilon, sample, v_prediction) and data.image_size / num_channels to the
folder's. The default sampler is DDIMScheduler's call: ddim, 50 steps, on its "leading" timesteps."""
from configs.default_cifar10 import get_default_configs


def get_config():
    config = get_default_configs()
    config.model.name = "diffusers"          # the network comes from the folder
    config.training.sde = "discrete_vp"      # its scheduler's betas, as a process
    config.training.continuous = False       # conditioned on diffusers' timesteps, the chain index
    config.model.num_scales = 1000           # num_train_timesteps
    config.model.beta_schedule = "linear"    # linear, scaled_linear, squaredcos_cap_v2
    config.model.beta_start = 0.0001
    config.model.beta_end = 0.02
    config.model.parameterization = "noise"  # prediction_type epsilon
    config.data.centered = True              # diffusers' images are in [-1, 1]
    config.sampling.method = "ddim"
    config.sampling.steps = 50
    config.sampling.schedule = "diffusers_ddim_leading"
    return config
