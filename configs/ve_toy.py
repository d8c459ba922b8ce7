"""VE SDE on a 2-D toy set with the MLP: sigma_max of the order of the largest distance between
data points (Song & Ermon 2020, technique 1), Fourier features of log sigma, output / sigma."""
from configs.default_toy import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vesde"
    config.model.sigma_min = 0.01
    config.model.sigma_max = 10.0
    config.model.embedding_type = "fourier"
    config.model.scale_by_sigma = True
    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "none"
    return config
