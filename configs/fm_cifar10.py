"""Flow matching on CIFAR-10 (the linear path x_t = (1 - t) x_0 + t z, a velocity network, the
flow-matching loss: configs/processes.py) with the DDPM++ network and training recipe of
configs/vp_cifar10.py, so that the two differ only in the process and what the network
predicts. On a GPU: add --config.training.precision=bf16 --config.training.channels_last=True."""
from configs.processes import flow_matching
from configs.vp_cifar10 import get_config as vp_cifar10


def get_config():
    return flow_matching(vp_cifar10())
