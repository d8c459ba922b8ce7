"""CIFAR-10 defaults (Song et al. 2021's CIFAR-10 settings)."""
from configs.defaults import get_base_config


def get_default_configs():
    config = get_base_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.random_flip = True
    config.eval.batch_size = 512
    config.eval.num_samples = 50000
    return config
