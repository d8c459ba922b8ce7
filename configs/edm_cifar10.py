"""Training EDM on CIFAR-10 with its DDPM++ setup (Karras et al. 2022, table 7, config F's
network without augmentation): EDM's own SongUNet (`song_unet`, the module its pickles hold) at
its widths, EDM's process, preconditioning, loss and sampler (configs/processes.py). To sample
NVlabs' published EDM networks instead, use configs/published/edm_cifar10.py, which reads their
pickles.

On a GPU (docs/training.md): add --config.training.precision=bf16
--config.training.channels_last=True."""
import math

from configs.processes import edm
from configs.vp_cifar10 import get_config as vp_cifar10

BATCH = 512
EMA_HALF_LIFE_IMAGES = 500_000


def get_config():
    config = edm(vp_cifar10())
    model = config.model
    model.name = "song_unet"            # EDM's network; its constructor's names below
    model.model_channels = 128
    model.channel_mult = (2, 2, 2)      # EDM's DDPM++: three levels of 256 channels
    model.num_blocks = 4
    model.attn_resolutions = (16,)
    model.dropout = 0.13
    # EMA with a half-life of 500k images: rate^(steps per half-life) = 1/2
    model.ema_rate = math.exp(math.log(0.5) * BATCH / EMA_HALF_LIFE_IMAGES)
    training = config.training
    training.batch_size = BATCH
    training.n_iters = 200_000_000 // BATCH + 1   # EDM's 200M images
    config.data.random_flip = False     # "augmentation off"
    config.optim.lr = 1e-3
    config.optim.warmup = 10_000_000 // BATCH     # EDM's 10M-image learning-rate ramp
    config.optim.grad_clip = 0.0        # EDM does not clip gradients
    return config
