"""The class-conditional variant of a config, for classifier-free guidance (Ho & Salimans 2022):
the same network plus a class embedding, labels dropped to "no label" with probability 0.1
(their best setting at 0.1-0.2), and sampling that draws every class, one grid row each."""


def make_class_conditional(config, num_classes: int = 10):
    config.model.num_classes = num_classes
    config.training.cond_drop_prob = 0.1
    config.sampling.labels = ""            # every class, one row each in the sample grid
    config.sampling.guidance_scale = 1.0
    config.sampling.num_samples = 10 * num_classes
    config.sampling.batch_size = 10 * num_classes
    return config
