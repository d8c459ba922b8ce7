"""NVlabs/edm's AFHQv2 64x64 networks (edm-afhqv2-64x64-uncond-vp.pkl / -uncond-ve.pkl)."""
from configs.published.edm_64 import edm_64


def get_config():
    return edm_64()
