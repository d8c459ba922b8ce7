"""Class-conditional VP SDE on the bundled digits (10 classes) with classifier-free guidance:
vp_digits' network plus a class embedding (see configs/conditional.py); any guidance scale at
sampling time (`--config.sampling.guidance_scale`)."""
from configs.conditional import make_class_conditional
from configs.vp_digits import get_config as get_vp_digits_config


def get_config():
    return make_class_conditional(get_vp_digits_config(), num_classes=10)
