"""Reference vp/ddpm/cifar10.py (checkpoint vp/cifar10_ddpm): DDPM, discrete VP chain."""
from configs.published.common import ddpm, published_config


def get_config():
    return ddpm(published_config("vpsde", continuous=False))
