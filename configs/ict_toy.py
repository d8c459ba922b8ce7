"""Improved consistency training (iCT; Song & Dhariwal 2023) on the toy, from scratch: the
network of configs/edm_toy.py under the consistency row of the preconditioning table, trained
with iCT's loss (adjacent levels of a Karras grid that doubles from ict_s0 + 1 to ict_s1 + 1
levels over n_iters, pseudo-Huber distance) with no teacher; sampled with 1 or 2 consistency
steps. ECT (configs/ect_toy.py) tunes a trained EDM model instead, the cheaper route."""
from configs.edm_toy import get_config as edm_toy
from configs.few_step import consistency_model


def get_config():
    config = edm_toy()
    training = config.training
    training.loss = "ict"
    training.n_iters = 3000
    training.snapshot_freq = 3000
    training.ict_s0 = 10                  # grid levels at the start (plus one) ...
    training.ict_s1 = 160                 # ... doubling up to this many (iCT: 1280 over 400k steps)
    training.huber_c = 0.0                # 0: iCT's c = 0.00054 sqrt(data dimension)
    training.p_mean = 0.0                 # the pairs' log-normal over noise levels (iCT: -1.1 for
    training.p_std = 2.0                  # images of std 0.5; these points have std 1.8)
    return consistency_model(config)
