"""VP SDE on a 2-D toy set (default: checkerboard) with the MLP, continuous time."""
from configs.default_toy import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vpsde"
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    return config
