"""Reference vp/ddpm/cifar10_continuous.py (checkpoint vp/cifar10_ddpm_continuous): DDPM, VP SDE."""
from configs.published.common import ddpm, published_config


def get_config():
    return ddpm(published_config("vpsde", continuous=True))
