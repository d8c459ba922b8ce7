"""Class-conditional DDPM++ (VP, continuous) on CIFAR-10 with classifier-free guidance (Ho &
Salimans 2022): vp_cifar10's network plus a class embedding, labels dropped to "no label" with
probability 0.1 (their best setting at 0.1-0.2)."""
from configs.vp_cifar10 import get_config as get_vp_cifar10_config


def get_config():
    config = get_vp_cifar10_config()
    config.model.num_classes = 10
    config.training.cond_drop_prob = 0.1
    config.sampling.labels = ""            # every class, one row each in the sample grid
    config.sampling.guidance_scale = 1.0
    config.sampling.num_samples = 100      # 10 per class
    config.sampling.batch_size = 100
    return config
