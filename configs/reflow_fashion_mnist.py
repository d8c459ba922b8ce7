"""Reflow (Liu et al. 2023) of the Fashion-MNIST flow-matching model (configs/fm_fashion_mnist.py,
8000 steps), the recipe of configs/reflow_digits.py: 8192 pairs by the teacher's UniPC at 40 NFE,
then 3000 steps from its EMA weights; sampled with 1 or 2 Euler steps.

    python main.py --config configs/fm_fashion_mnist.py --workdir runs/fm_fashion --mode train
    python main.py --config configs/reflow_fashion_mnist.py --workdir runs/reflow_fashion --mode train \\
        --config.training.init_from=runs/fm_fashion"""
from configs.few_step import reflow
from configs.fm_fashion_mnist import get_config as fm_fashion_mnist


def get_config():
    return reflow(fm_fashion_mnist(), pairs=8192, pair_sampler="dpm_solver++ order=3 unipc=True steps=40",
                  n_iters=3000, lr=2e-4, snapshot_freq=1500, steps=2)
