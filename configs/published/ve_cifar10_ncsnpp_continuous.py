"""Reference ve/cifar10_ncsnpp_continuous.py (checkpoint ve/cifar10_ncsnpp_continuous): NCSN++ cont. (VE)."""
from configs.published.common import ncsnpp_ve, published_config


def get_config():
    return ncsnpp_ve(published_config("vesde", continuous=True))
