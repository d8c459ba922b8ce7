"""VP SDE on the bundled digits with a small DDPM U-Net, continuous time."""
from configs.default_digits import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vpsde"
    config.training.continuous = True
    config.training.reduce_mean = True
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.model.name = "ddpm"
    config.model.scale_by_sigma = False
    config.model.embedding_type = "positional"
    return config
