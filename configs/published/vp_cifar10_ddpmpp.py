"""Reference vp/cifar10_ddpmpp.py (checkpoint vp/cifar10_ddpmpp): DDPM++, discrete VP chain."""
from configs.published.common import ddpmpp, published_config


def get_config():
    return ddpmpp(published_config("vpsde", continuous=False))
