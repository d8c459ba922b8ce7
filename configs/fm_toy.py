"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023) on a 2-D toy set with the
MLP (configs/processes.py): the probability-flow ODE of this path is the learned flow."""
from configs.default_toy import get_default_configs
from configs.processes import flow_matching


def get_config():
    return flow_matching(get_default_configs())
