"""Sub-VP SDE, continuous time, DDPM++ (Song et al. 2021, table 3: "DDPM++ cont. (sub-VP)")."""
from configs.vp_cifar10 import get_config as get_vp_config


def get_config():
    config = get_vp_config()
    config.training.sde = "subvpsde"
    return config
