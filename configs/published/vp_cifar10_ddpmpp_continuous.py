"""Reference vp/cifar10_ddpmpp_continuous.py (checkpoint vp/cifar10_ddpmpp_continuous): DDPM++ cont. (VP)."""
from configs.published.common import ddpmpp, published_config


def get_config():
    return ddpmpp(published_config("vpsde", continuous=True))
