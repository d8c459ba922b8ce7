"""VP SDE on Fashion-MNIST (28x28 gray, zero-padded to 32 so that the U-Net's three levels halve
evenly: 32 -> 16 -> 8), a small DDPM U-Net, continuous time. The files: Debian/Ubuntu's
`apt-get install dataset-fashion-mnist` (read from /usr/share/datasets/fashion-mnist), or
--config.data.root=DIR (with --config.data.download=True to fetch them there)."""
from configs.vp_digits import get_config as digits


def get_config():
    config = digits()
    config.data.dataset = "fashion_mnist"
    config.data.image_size = 32
    config.data.num_channels = 1
    config.data.random_flip = True  # clothes are mirror-symmetric enough
    config.model.nf = 32
    config.model.ch_mult = (1, 2, 2)
    config.model.attn_resolutions = (16,)
    config.training.n_iters = 20000
    config.training.snapshot_freq = 5000
    config.training.snapshot_freq_for_preemption = 1000
    config.sampling.method = "dpm_solver++"
    config.sampling.steps = 20
    return config
