"""Flow matching on the bundled digits with the vp_digits network predicting the velocity."""
from configs.processes import flow_matching
from configs.vp_digits import get_config as vp_digits


def get_config():
    return flow_matching(vp_digits())
