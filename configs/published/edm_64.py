"""What NVlabs/edm's 64x64 networks share (edm-ffhq-64x64-*, edm-afhqv2-64x64-*,
edm-imagenet-64x64-cond-adm.pkl), read from the pickle named by eval.reference_checkpoint: the
EDM process on its range [0.002, 80], images in [-1, 1], EDM's deterministic sampler (Heun on the
rho-7 grid) with the 40 steps (79 evaluations) its paper uses at 64x64. The data, for eval and
likelihood, is your folder of those images (data.root)."""
from configs.published.edm_cifar10 import get_config as cifar10


def edm_64(num_classes: int = 0):
    config = cifar10()
    config.data.dataset = "folder"
    config.data.image_size = 64
    config.data.labels_from = "subfolders" if num_classes else ""
    config.model.num_classes = num_classes
    config.sampling.steps = 40
    return config
