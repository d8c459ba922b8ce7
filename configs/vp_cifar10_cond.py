"""Class-conditional DDPM++ (VP, continuous) on CIFAR-10 with classifier-free guidance:
vp_cifar10's network plus a class embedding (see configs/conditional.py)."""
from configs.conditional import make_class_conditional
from configs.vp_cifar10 import get_config as get_vp_cifar10_config


def get_config():
    return make_class_conditional(get_vp_cifar10_config(), num_classes=10)
