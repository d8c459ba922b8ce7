"""EDM on the bundled digits (in [-1, 1], std near EDM's sigma_data = 0.5) with the vp_digits
network behind EDM's preconditioning (configs/processes.py)."""
from configs.processes import edm
from configs.vp_digits import get_config as vp_digits


def get_config():
    return edm(vp_digits())
