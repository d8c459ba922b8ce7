"""Reference ve/cifar10_ncsnpp_deep_continuous.py (checkpoint ve/cifar10_ncsnpp_deep_continuous):
NCSN++ cont. deep (VE), 8 blocks per level, the paper's best FID (2.20)."""
from configs.published.common import ncsnpp_ve, published_config


def get_config():
    config = ncsnpp_ve(published_config("vesde", continuous=True), num_res_blocks=8)
    config.training.n_iters = 950001
    return config
