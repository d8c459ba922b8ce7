"""The config a workdir's training run stored (its config.json), as a config file:

    python main.py --config configs/workdir.py:runs/toy --workdir runs/toy --mode sample

main.py uses it by itself when `--config` is not given (README, "The main job").
"""
from configs.defaults import get_base_config
from sde_diffusion.app.workdir_config import config_from_workdir


def get_config(workdir):
    return config_from_workdir(workdir, base=get_base_config())
