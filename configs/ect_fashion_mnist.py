"""Easy Consistency Tuning of the Fashion-MNIST EDM model (configs/edm_fashion_mnist.py, 8000
steps), the recipe of configs/ect_digits.py: 3000 tuning steps (quality and time against the
teacher's: docs/few_step.md).

    python main.py --config configs/edm_fashion_mnist.py --workdir runs/edm_fashion --mode train
    python main.py --config configs/ect_fashion_mnist.py --workdir runs/ect_fashion --mode train \\
        --config.training.init_from=runs/edm_fashion"""
from configs.edm_fashion_mnist import get_config as edm_fashion_mnist
from configs.few_step import ect


def get_config():
    return ect(edm_fashion_mnist(), n_iters=3000, lr=2e-4, snapshot_freq=1500)
