"""VP SDE, continuous time, DDPM++ (Song et al. 2021, table 3: "DDPM++ cont. (VP)"): the published
config (`configs/published/vp_cifar10_ddpmpp_continuous.py`)."""
from configs.published.common import ddpmpp, published_config


def get_config():
    return ddpmpp(published_config("vpsde", continuous=True))
