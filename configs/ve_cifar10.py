"""VE SDE, continuous time, NCSN++ (Song et al. 2021, table 3: "NCSN++ cont.")."""
from configs.default_cifar10 import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vesde"
    config.training.continuous = True
    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.data.centered = False

    model = config.model
    model.name = "ncsnpp"
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "residual"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.embedding_type = "fourier"
    model.fourier_scale = 16
    model.conv_size = 3
    return config
