"""Reflow (Liu et al. 2023) of the digits flow-matching model (configs/fm_digits.py, 6000
steps): the teacher's deterministic UniPC at 40 NFE pairs 8192 noises with its samples (stored in
the workdir under reflow_pairs/), and the same U-Net, started from the teacher's EMA weights,
learns the straight paths between them; sampled with 1 or 2 Euler steps (DDIM on rectified
flow is Euler). docs/few_step.md has the results.

    python main.py --config configs/fm_digits.py --workdir runs/fm_digits --mode train
    python main.py --config configs/reflow_digits.py --workdir runs/reflow_digits --mode train \\
        --config.training.init_from=runs/fm_digits"""
from configs.few_step import reflow
from configs.fm_digits import get_config as fm_digits


def get_config():
    # 40 NFE of a third-order solver: within the teacher's own sampling error of the ODE's map,
    # at a tenth of an rtol 1e-5 solve's cost
    return reflow(fm_digits(), pairs=8192, pair_sampler="dpm_solver++ order=3 unipc=True steps=40", n_iters=2000,
                  lr=2e-4, snapshot_freq=1000, steps=2)
