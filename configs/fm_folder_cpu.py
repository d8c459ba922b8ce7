"""Your folder at a size a laptop's CPU trains: configs/vp_folder.py's data road (your images,
resized and centre-cropped to 32x32 RGB) with vp_fashion_mnist's 1.1M-parameter DDPM U-Net
(32 -> 16 -> 8, attention at 16x16), its learning rate (1e-3 after 200 warm-up steps) and EMA
(0.999), trained as flow matching (configs/processes.py), which at this budget samples better in
few steps than VP noise prediction (docs/benchmarks.md, Fashion-MNIST), and a 16-image snapshot
every 500 steps, so that the first minutes show what it learns (docs/training.md, "A folder on a
CPU").

    python main.py --config configs/fm_folder_cpu.py --workdir runs/mine --mode train \
        --config.data.root=~/pictures

The network halves the image twice, so data.image_size must be a multiple of 4 (28 is fine, 30
is not); the folder's images are resized to it, never padded."""
from configs.processes import flow_matching
from configs.vp_folder import get_config as folder


def get_config():
    config = folder()
    config.training.batch_size = 64
    config.training.n_iters = 20000
    config.training.snapshot_freq = 500
    config.training.snapshot_freq_for_preemption = 500
    config.training.num_snapshot_samples = 16
    config.sampling.batch_size = 64
    config.eval.num_samples = 256
    model = config.model
    model.nf = 32
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
    model.dropout = 0.0
    model.ema_rate = 0.999
    config.optim.lr = 1e-3
    config.optim.warmup = 200
    return flow_matching(config)
