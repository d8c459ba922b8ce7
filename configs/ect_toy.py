"""Easy Consistency Tuning (Geng et al. 2024) of a toy EDM teacher (configs/edm_toy.py): the
same MLP under the consistency row of the preconditioning table, started from the teacher's EMA
weights and trained with ECT's loss, whose gap between the two noise levels shrinks over
n_iters in ect_stages stages; sampled with 1 or 2 consistency steps. Set the teacher:

    python main.py --config configs/edm_toy.py --workdir runs/edm_toy --mode train
    python main.py --config configs/ect_toy.py --workdir runs/ect_toy --mode train \\
        --config.training.init_from=runs/edm_toy
    python main.py --config configs/ect_toy.py --workdir runs/ect_toy --mode eval

Data, network and process fields must stay those of the teacher (the run refuses otherwise)."""
from configs.edm_toy import get_config as edm_toy


def get_config():
    config = edm_toy()
    training = config.training
    training.loss = "ect"
    training.n_iters = 4000
    training.snapshot_freq = 4000
    training.ect_stages = 8               # the gap halves (q) this many times over n_iters
    training.ect_q = 2.0
    training.ect_k = 8.0                  # ECT's m(n) = 1 + k sigmoid(-b n): smaller gaps at low noise
    training.ect_b = 1.0
    training.huber_c = 0.0                # > 0: iCT's pseudo-Huber distance instead of the squared one
    config.model.parameterization = "consistency"
    config.optim.lr = 5e-4
    config.optim.warmup = 0               # the weights are trained already
    sampling = config.sampling
    sampling.method = "consistency"
    sampling.steps = 2
    sampling.eps = None                   # the consistency sampler's own grid: T, then noise level 0.8
    return config
