"""Reflow (Liu et al. 2023) of a toy flow-matching teacher (configs/fm_toy.py): the teacher's
probability-flow ODE pairs training.reflow_pairs noises with its samples (stored in the workdir
under reflow_pairs/), and the same MLP, started from the teacher's EMA weights, learns the
straight paths between the pairs (training.loss=reflow); sampled with 1 or 2 Euler steps (DDIM
on rectified flow is Euler). Set the teacher:

    python main.py --config configs/fm_toy.py --workdir runs/fm_toy --mode train
    python main.py --config configs/reflow_toy.py --workdir runs/reflow_toy --mode train \\
        --config.training.init_from=runs/fm_toy
    python main.py --config configs/reflow_toy.py --workdir runs/reflow_toy --mode eval

Data, network and process fields must stay those of the teacher (the run refuses otherwise)."""
from configs.few_step import reflow
from configs.fm_toy import get_config as fm_toy


def get_config():
    return reflow(fm_toy(), pairs=20000, pair_sampler="ode rtol=1e-5 atol=1e-5 denoise=True", n_iters=4000,
                  lr=5e-4, snapshot_freq=4000, steps=1)
