"""Reference subvp/cifar10_ddpm_continuous.py (checkpoint subvp/cifar10_ddpm_continuous): DDPM, sub-VP SDE."""
from configs.published.common import ddpm, published_config


def get_config():
    return ddpm(published_config("subvpsde", continuous=True))
