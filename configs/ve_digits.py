"""VE SDE on the bundled digits with a small NCSN++ (Fourier features of log sigma, output
divided by sigma), continuous time. sigma_max = 10 exceeds the largest distance between two
training images in [0, 1]^256, 8.5 (Song & Ermon 2020, technique 1)."""
from configs.default_digits import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vesde"
    config.training.continuous = True
    config.data.centered = False
    config.model.sigma_min = 0.01
    config.model.sigma_max = 10.0
    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"

    model = config.model
    model.name = "ncsnpp"
    model.scale_by_sigma = True
    model.embedding_type = "fourier"
    model.fourier_scale = 16
    model.resblock_type = "biggan"
    model.skip_rescale = True
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.progressive = "none"
    model.progressive_input = "none"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.conv_size = 3
    return config
