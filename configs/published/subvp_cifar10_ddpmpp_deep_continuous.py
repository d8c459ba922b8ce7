"""Reference subvp/cifar10_ddpmpp_deep_continuous.py (checkpoint subvp/cifar10_ddpmpp_deep_continuous):
DDPM++ cont. deep, 8 blocks per level."""
from configs.published.common import ddpmpp, published_config


def get_config():
    config = ddpmpp(published_config("subvpsde", continuous=True), num_res_blocks=8)
    config.training.n_iters = 950001
    return config
