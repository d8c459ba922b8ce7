"""Command line: train, sample, score and evaluate score-based models.

    python main.py --config configs/vp_toy.py --workdir runs/toy --mode train
    python main.py --config configs/vp_toy.py --workdir runs/toy --mode sample \
        --config.sampling.method=ode
    python main.py --config configs/vp_digits.py --workdir runs/digits --mode likelihood
    python main.py --config configs/vp_digits.py --workdir runs/digits --mode study
    python main.py --config configs/vp_digits.py --workdir runs/digits --mode inpaint \
        --config.controllable.mask=center_square

Bad input (config values, missing data, unusable checkpoints) ends with one line on stderr and a
non-zero exit, before anything in the workdir is written.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (ml_collections), e.g. configs/vp_toy.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, samples and metrics.")
flags.DEFINE_enum("mode", None, ["train", "sample", "likelihood", "eval", "study", "inpaint", "colorize"], "What to run.")
flags.mark_flags_as_required(["config", "workdir", "mode"])


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    # Imported here so that `--help` and flag errors do not pay for importing torch.
    from sde_diffusion import checkpoints
    from sde_diffusion.config import ConfigError, validate_config
    from sde_diffusion.modes import run_eval, run_likelihood, run_sample, run_study_mode
    from sde_diffusion.train import train

    config = FLAGS.config
    try:
        validate_config(config, FLAGS.mode)
        if FLAGS.mode in ("inpaint", "colorize"):
            from sde_diffusion.controllable_modes import run_controllable

            run_controllable(config, FLAGS.workdir, FLAGS.mode)
            return
        run = {"train": train, "sample": run_sample, "likelihood": run_likelihood, "eval": run_eval,
               "study": run_study_mode}[FLAGS.mode]
        run(config, FLAGS.workdir)
    except (ConfigError, checkpoints.CheckpointError, OSError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
