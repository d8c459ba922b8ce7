"""VP SDE on your own images: a folder of PNG / JPEG / WebP files (nested folders allowed),
resized (shorter side) and centre-cropped to 32x32 RGB, with a DDPM U-Net.

    python main.py --config configs/vp_folder.py --workdir runs/mine --mode train \
        --config.data.root=~/pictures

Gray images: --config.data.num_channels=1; another size: --config.data.image_size=64; classes
from the first-level subfolders: --config.data.labels_from=subfolders --config.model.num_classes=K
(class i is the i-th folder name, sorted; saved as classes.json in the workdir)."""
from configs.default_cifar10 import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.dataset = "folder"
    config.data.centered = True
    config.training.sde = "vpsde"
    config.training.continuous = True
    config.training.reduce_mean = True
    config.training.batch_size = 64
    config.training.n_iters = 100000
    config.training.snapshot_freq = 5000
    config.training.snapshot_freq_for_preemption = 1000
    config.sampling.method = "dpm_solver++"
    config.sampling.steps = 20
    config.eval.num_samples = 1000
    model = config.model
    model.name = "ddpm"
    model.nf = 64
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.dropout = 0.1
    model.ema_rate = 0.9999
    model.conditional = True
    model.scale_by_sigma = False
    model.embedding_type = "positional"
    config.optim.lr = 2e-4
    config.optim.warmup = 1000
    return config
