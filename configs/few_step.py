"""The few-step recipes on a trained model's config (docs/few_step.md): a consistency model's
network row and sampler, Easy Consistency Tuning, and reflow. Data, network and process fields
stay those of the teacher (a run started from one refuses otherwise)."""


def consistency_model(config):
    """The network behind the consistency row, sampled with 2 consistency steps."""
    config.model.parameterization = "consistency"
    sampling = config.sampling
    sampling.method = "consistency"
    sampling.steps = 2
    sampling.eps = None                   # the consistency sampler's own grid: T, then noise level 0.8
    return config


def ect(config, n_iters: int, lr: float, snapshot_freq: int):
    """ECT (Geng et al. 2024) of an EDM config's trained weights: ECT's loss, whose gap between the
    two noise levels shrinks over n_iters in ect_stages stages, from the teacher's EMA weights."""
    training = config.training
    training.loss = "ect"
    training.n_iters = n_iters
    training.snapshot_freq = snapshot_freq
    training.ect_stages = 8               # the gap halves (q) this many times over n_iters
    training.ect_q = 2.0
    training.ect_k = 8.0                  # ECT's m(n) = 1 + k sigmoid(-b n): smaller gaps at low noise
    training.ect_b = 1.0
    training.huber_c = 0.0                # > 0: iCT's pseudo-Huber distance instead of the squared one
    config.optim.lr = lr
    config.optim.warmup = 0               # the weights are trained already
    return consistency_model(config)


def reflow(config, pairs: int, pair_sampler: str, n_iters: int, lr: float, snapshot_freq: int, steps: int):
    """Reflow (Liu et al. 2023) of a flow-matching config's trained weights: `pairs` (noise,
    sample) pairs by the teacher's deterministic `pair_sampler`, the straight paths between them
    learnt from the teacher's EMA weights; sampled with `steps` Euler steps (DDIM on rectified
    flow is Euler)."""
    training = config.training
    training.loss = "reflow"
    training.reflow_pairs = pairs
    training.reflow_sampler = pair_sampler
    training.n_iters = n_iters
    training.snapshot_freq = snapshot_freq
    config.optim.lr = lr
    config.optim.warmup = 0               # the weights are trained already
    sampling = config.sampling
    sampling.method = "ddim"              # Euler on rectified flow's straight path
    sampling.steps = steps
    sampling.schedule = "uniform"
    return config
