"""Flow matching on Fashion-MNIST: vp_fashion_mnist's data and network (the ddpm U-Net, 32x32
gray) predicting the velocity of the linear path. The stated budget of the README's first result:
8000 steps of batch 64 (about an hour on 2 CPU cores)."""
from configs.processes import flow_matching
from configs.vp_fashion_mnist import get_config as vp_fashion_mnist


def get_config():
    config = flow_matching(vp_fashion_mnist())
    config.training.n_iters = 8000
    config.training.snapshot_freq = 2000
    return config
