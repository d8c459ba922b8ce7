"""NVlabs/edm's class-conditional ImageNet 64x64 network (edm-imagenet-64x64-cond-adm.pkl, ADM):
1000 classes (sampling.labels picks them; data.root, for eval, is a folder of one subfolder per
class in ImageNet's sorted order). Deterministic Heun, 40 steps, as configs/published/edm_64.py;
EDM's best ImageNet result uses its stochastic sampler (S_churn 40 over 256 steps), which `heun`
offers through its churn options."""
from configs.published.edm_64 import edm_64


def get_config():
    return edm_64(num_classes=1000)
