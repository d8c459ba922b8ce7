"""Easy Consistency Tuning (Geng et al. 2024) of the digits EDM model (configs/edm_digits.py,
6000 steps): the same U-Net under the consistency row, started from the teacher's EMA weights;
2000 tuning steps cost less than half the teacher's training time (a tuning step is about 4/3 of
a training step: one more forward pass for the target). docs/few_step.md has the results.

    python main.py --config configs/edm_digits.py --workdir runs/edm_digits --mode train
    python main.py --config configs/ect_digits.py --workdir runs/ect_digits --mode train \\
        --config.training.init_from=runs/edm_digits
    python main.py --workdir runs/ect_digits --mode eval --config.sampling.steps=1"""
from configs.edm_digits import get_config as edm_digits


def ect(config, n_iters: int):
    """The ECT recipe on a trained EDM config: the consistency row, ECT's loss and schedule."""
    training = config.training
    training.loss = "ect"
    training.n_iters = n_iters
    training.snapshot_freq = n_iters // 2
    training.ect_stages = 8               # the gap halves (q) this many times over n_iters
    training.ect_q = 2.0
    training.ect_k = 8.0                  # ECT's m(n) = 1 + k sigmoid(-b n): smaller gaps at low noise
    training.ect_b = 1.0
    training.huber_c = 0.0                # > 0: iCT's pseudo-Huber distance instead of the squared one
    config.model.parameterization = "consistency"
    config.optim.lr = 2e-4                # a fifth of the teacher's: the weights are trained already
    config.optim.warmup = 0
    sampling = config.sampling
    sampling.method = "consistency"
    sampling.steps = 2
    sampling.eps = None                   # the consistency sampler's own grid: T, then noise level 0.8
    return config


def get_config():
    return ect(edm_digits(), 2000)
