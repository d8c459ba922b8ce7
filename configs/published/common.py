"""What the published score_sde_pytorch CIFAR-10 configs share, field for field with the
reference's `configs/default_cifar10_configs.py` and its `vp/`, `subvp/`, `ve/` files. Each
`configs/published/*.py` picks an SDE, the time mode and one of the three networks here."""
from configs.default_cifar10 import get_default_configs

# (predictor, corrector, data centered, reduce_mean) as the reference sets them per SDE
_SDE_SETTINGS = {
    "vpsde": ("euler_maruyama", "none", True, True),
    "subvpsde": ("euler_maruyama", "none", True, True),
    "vesde": ("reverse_diffusion", "langevin", False, False),
}


def published_config(sde: str, continuous: bool):
    config = get_default_configs()
    predictor, corrector, centered, reduce_mean = _SDE_SETTINGS[sde]
    training = config.training
    training.sde = sde
    training.continuous = continuous
    training.reduce_mean = reduce_mean
    training.batch_size = 128
    training.n_iters = 1300001
    sampling = config.sampling
    sampling.method = "pc"
    # The discrete VP models sample with ancestral sampling in the reference.
    sampling.predictor = "ancestral" if sde == "vpsde" and not continuous else predictor
    sampling.corrector = corrector
    sampling.snr = 0.16
    sampling.steps = 1000
    sampling.eps = 1e-5 if sde == "vesde" else 1e-3  # the reference's sampling_eps (run_lib.py), a time
    config.data.centered = centered
    model = config.model
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.embedding_type = "fourier"  # the reference's default; `ddpm` does not read it
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    return config


def ddpm(config):
    """DDPM's U-Net (`ddpm`): 2 blocks per level, sinusoidal embedding."""
    model = config.model
    model.name = "ddpm"
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.num_res_blocks = 2
    return config


def ncsnpp(config, *, num_res_blocks: int, fir: bool, progressive_input: str,
           embedding_type: str, scale_by_sigma: bool, ema_rate: float):
    """The `ncsnpp` network: DDPM++ (no FIR, no input pyramid, positional embedding) or
    NCSN++ (FIR, residual input pyramid, Fourier embedding for continuous VE)."""
    model = config.model
    model.name = "ncsnpp"
    model.scale_by_sigma = scale_by_sigma
    model.ema_rate = ema_rate
    model.num_res_blocks = num_res_blocks
    model.fir = fir
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = progressive_input
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.embedding_type = embedding_type
    model.fourier_scale = 16
    model.conv_size = 3
    return config


def ddpmpp(config, num_res_blocks: int = 4):
    return ncsnpp(config, num_res_blocks=num_res_blocks, fir=False, progressive_input="none",
                  embedding_type="positional", scale_by_sigma=False, ema_rate=0.9999)


def ncsnpp_ve(config, num_res_blocks: int = 4, embedding_type: str = "fourier"):
    return ncsnpp(config, num_res_blocks=num_res_blocks, fir=True, progressive_input="residual",
                  embedding_type=embedding_type, scale_by_sigma=True, ema_rate=0.999)
