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
from configs.few_step import ect


def get_config():
    return ect(edm_toy(), n_iters=4000, lr=5e-4, snapshot_freq=4000)
