"""Class-conditional VP SDE on the bundled digits (10 classes) with classifier-free guidance:
vp_digits' network plus a class embedding; labels are dropped to "no label" in 10% of training
samples, so sampling can guide with any scale (`--config.sampling.guidance_scale`)."""
from configs.vp_digits import get_config as get_vp_digits_config


def get_config():
    config = get_vp_digits_config()
    config.model.num_classes = 10
    config.training.cond_drop_prob = 0.1
    config.sampling.labels = ""            # every class, one row each in the sample grid
    config.sampling.guidance_scale = 1.0
    config.sampling.num_samples = 100      # 10 per class
    config.sampling.batch_size = 100
    return config
