"""Reference subvp/cifar10_ddpmpp_continuous.py (checkpoint subvp/cifar10_ddpmpp_continuous): DDPM++ cont. (sub-VP)."""
from configs.published.common import ddpmpp, published_config


def get_config():
    return ddpmpp(published_config("subvpsde", continuous=True))
