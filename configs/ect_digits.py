"""Easy Consistency Tuning (Geng et al. 2024) of the digits EDM model (configs/edm_digits.py,
6000 steps): the same U-Net under the consistency row, started from the teacher's EMA weights;
2000 tuning steps cost less than half the teacher's training time (a tuning step is about 4/3 of
a training step: one more forward pass for the target). docs/few_step.md has the results.

    python main.py --config configs/edm_digits.py --workdir runs/edm_digits --mode train
    python main.py --config configs/ect_digits.py --workdir runs/ect_digits --mode train \\
        --config.training.init_from=runs/edm_digits
    python main.py --workdir runs/ect_digits --mode eval --config.sampling.steps=1"""
from configs.edm_digits import get_config as edm_digits
from configs.few_step import ect


def get_config():
    return ect(edm_digits(), n_iters=2000, lr=2e-4, snapshot_freq=1000)  # lr a fifth of the teacher's
