"""EDM on Fashion-MNIST: vp_fashion_mnist's data and network (the ddpm U-Net, 32x32 gray) behind
EDM's preconditioning, the teacher of configs/ect_fashion_mnist.py. The budget of the other
Fashion-MNIST recipes: 8000 steps of batch 64."""
from configs.processes import edm
from configs.vp_fashion_mnist import get_config as vp_fashion_mnist


def get_config():
    config = edm(vp_fashion_mnist())
    config.training.n_iters = 8000
    config.training.snapshot_freq = 2000
    return config
