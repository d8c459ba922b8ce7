"""NVlabs/edm's class-conditional CIFAR-10 networks (edm-cifar10-32x32-cond-vp.pkl / -cond-ve.pkl):
configs/published/edm_cifar10.py with 10 classes (sampling.labels picks them; EDM trained these
without label dropout, so guidance_scale stays 0)."""
from configs.published.edm_cifar10 import get_config as unconditional


def get_config():
    config = unconditional()
    config.model.num_classes = 10
    return config
