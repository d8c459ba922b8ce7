"""Reference ve/cifar10_ncsnpp.py (checkpoint ve/cifar10_ncsnpp): NCSN++ on the discrete SMLD chain,
conditioned on the noise-level index (positional embedding); loaded through
sde_diffusion.published.score_sde.ChainIndexConditioned."""
from configs.published.common import ncsnpp_ve, published_config


def get_config():
    return ncsnpp_ve(published_config("vesde", continuous=False), embedding_type="positional")
