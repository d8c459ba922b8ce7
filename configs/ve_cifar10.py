"""VE SDE, continuous time, NCSN++ (Song et al. 2021, table 3: "NCSN++ cont."): the published
config (`configs/published/ve_cifar10_ncsnpp_continuous.py`)."""
from configs.published.common import ncsnpp_ve, published_config


def get_config():
    return ncsnpp_ve(published_config("vesde", continuous=True))
