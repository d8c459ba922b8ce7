r"""Command line: train, sample, score and evaluate score-based models.

    python main.py --config configs/vp_toy.py --workdir runs/toy --mode train
    python main.py --config configs/vp_toy.py --workdir runs/toy --mode sample \
        --config.sampling.method=ode
    python main.py --config configs/vp_digits.py --workdir runs/digits --mode likelihood
    python main.py --config configs/vp_digits.py --workdir runs/digits --mode study
    python main.py --config configs/published/vp_cifar10_ddpmpp_continuous.py --workdir runs/pub \
        --mode sample --config.eval.reference_checkpoint=checkpoint_8.pth
    python main.py --config configs/vp_digits.py --workdir runs/digits --mode inpaint \
        --config.controllable.mask=center_square
    torchrun --nproc_per_node=4 main.py --config configs/vp_cifar10.py --workdir runs/c10 --mode train
    python main.py --workdir runs/toy --mode sample --config.sampling.method=ddim

Without --config a run starts from the workdir's config.json (what its training run stored;
configs/workdir.py): reading modes may override sampling.*, eval.*, study.*, controllable.*,
seed, device, threads and data.root, and train resumes with the fields a resume may change.

Bad input (flags, config files and values, missing data, an unusable workdir or checkpoint) ends
with one line on stderr and a non-zero exit, before anything in the workdir is written.
"""
import re
import signal
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags.tuple_parser import TupleParser

FLAGS = flags.FLAGS


class CommaListParser(TupleParser):
    """A tuple field on the command line as a comma-separated list: `--config.study.samplers="ddim,
    heun schedule=karras"` is ("ddim", "heun schedule=karras"), `--config.study.nfe=10,20` is
    (10, 20). The rule: commas separate the elements (a sampler spec separates its options by
    spaces, so it never holds one), spaces around an element are dropped, and an element that is
    a Python literal (a number, True, a quoted string) is that value, any other a string. A value
    starting with ( or [ is read as a Python literal, as ml_collections reads it."""

    def parse(self, argument):
        if isinstance(argument, str) and not argument.strip().startswith(("(", "[")):
            return tuple(self._element(part.strip()) for part in argument.split(",") if part.strip())
        return super().parse(argument)

    @staticmethod
    def _element(text: str):
        import ast
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text


config_flags.register_flag_parser_for_type(tuple, CommaListParser())
config_flags.DEFINE_config_file("config", None, "Config file (ml_collections), e.g. configs/vp_toy.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, samples and metrics.")
flags.DEFINE_enum("mode", None, ["train", "sample", "likelihood", "eval", "study", "inpaint", "colorize"], "What to run.")
flags.mark_flags_as_required(["workdir", "mode"])

# The config file that reads a workdir's config.json (`--config=configs/workdir.py:WORKDIR`),
# what a run without --config starts from; STARTED_FROM names that workdir once parse_flags used it.
STORED_CONFIG_FILE = Path(__file__).resolve().parent / "configs" / "workdir.py"
STARTED_FROM = {}


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _first_and_last_line(error: BaseException) -> str:
    """A traceback folded into a message becomes its headline plus the exception's own line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines)


# Where a mode's solver tolerances and evaluation cap are set, and the batch that sizes its memory.
SOLVER_FIELDS = {"sample": ("sampling.rtol", "sampling.atol", "sampling.max_nfe"),
                 "likelihood": ("eval.bpd_rtol", "eval.bpd_atol", "eval.bpd_max_nfe"),
                 "study": ("study.samplers (rtol=, atol=, max_nfe= in a spec)", "study.reference_tol")}
BATCH_FIELDS = {"train": "training.batch_size", "likelihood": "eval.batch_size", "study": "study.num_samples"}


# Where the modes write (the workdir itself: config.json, classes.json); checkpoints have their own
# cleanup, by the trainer under the workdir's lock.
OUTPUT_FOLDERS = (".", "samples", "snapshots", "eval", "study", "inpaint", "colorize")


def _remove_stale_outputs(workdir) -> None:
    """Delete the temporary files of outputs whose writer is gone (killed while writing: SIGKILL,
    a power cut); a live writer holds its file's lock, and its file stays (`image_cache`)."""
    import logging
    from pathlib import Path

    from sde_diffusion.data.image_cache import remove_stale_temporaries

    for folder in OUTPUT_FOLDERS:
        for path in remove_stale_temporaries(Path(workdir) / folder):
            logging.getLogger("main").warning("removed %s, left by an interrupted write", path)


def _out_of_memory(error: BaseException) -> bool:
    """torch's allocation failures: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError."""
    text = str(error)
    return "out of memory" in text.lower() or "can't allocate memory" in text


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _flag_value(argv, name: str):
    """The value of --name=value or --name value in argv (None when absent)."""
    for index, arg in enumerate(argv[1:], 1):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def _with_stored_config(argv):
    """argv with --config=configs/workdir.py:WORKDIR put first when it names no --config (the run
    starts from the workdir's config.json); sys.argv likewise, which ml_collections reads its
    overrides from. A workdir without config.json stops here in one line."""
    if any(re.match(r"^-{1,2}config(=|$)", arg) for arg in argv[1:]):
        return argv
    workdir = _flag_value(argv, "workdir")
    if workdir is None or _flag_value(argv, "mode") is None:
        return argv  # absl names the missing flag
    if not (Path(workdir).expanduser() / "config.json").is_file():
        sys.exit(f"error: --config is required: {workdir} holds no config.json (what a training run "
                 f"stores) to start from")
    STARTED_FROM["workdir"] = workdir
    argv = [argv[0], f"--config={STORED_CONFIG_FILE}:{workdir}", *argv[1:]]
    sys.argv[:] = argv
    return argv


def parse_flags(argv):
    """absl's flag parsing with every failure as one line: a bad flag value, an unknown config
    field, a config file that is missing or does not run. Without --config, the workdir's
    config.json is the config file."""
    argv = _with_stored_config(argv)
    try:
        remaining = FLAGS(argv)
    except flags.Error as error:  # wrong type, unknown flag or mode, missing required flag
        sys.exit(f"error: {_first_and_last_line(error)}")
    except (AttributeError, KeyError) as error:  # ml_collections: an override of a field the config lacks
        sys.exit(f"error: {_unknown_field(error, argv)}")
    except Exception as error:  # noqa: BLE001 - the config file's own code failed (syntax, imports, ...)
        sys.exit(f"error: config file {_config_path(argv)} does not load: {type(error).__name__}: "
                 f"{_last_line(error)}")
    try:
        FLAGS.config.keys()  # a config file that cannot be read fails only when first used
    except OSError as error:
        sys.exit(f"error: config file {_config_path(argv)} does not load: {_last_line(error)}")
    return remaining


def _unknown_field(error: BaseException, argv) -> str:
    """ml_collections' KeyError for an override of a missing field (its text is quoted several
    times over and may end in 'Did you mean "x" instead of "y"?') as "--config.a.y: no such
    field (did you mean --config.a.x?)"."""
    text = str(error).replace("\\", "")
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    unknown = suggestion.group(2) if suggestion else (words[0] if words else text)
    for arg in argv[1:]:
        flag = arg.split("=")[0]
        parts = flag.split(".")
        if flag.startswith("--config.") and unknown in parts[1:]:
            if suggestion:
                fixed = ".".join(suggestion.group(1) if part == unknown else part for part in parts)
                return f"{flag}: no such field (did you mean {fixed}?)"
            return f"{flag}: no such field in the config file"
    return f"{unknown!r}: no such field in the config file"


def _overridden_fields(argv) -> set:
    """The config fields the command line sets: {"sampling.order", ...} for --config.sampling.order=3."""
    return {arg.split("=", 1)[0][len("--config."):] for arg in argv[1:] if arg.startswith("--config.")}


def _config_path(argv) -> str:
    if STARTED_FROM:
        return str(Path(STARTED_FROM["workdir"]) / "config.json")
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
    return "?"


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    # Imported here so that `--help` and flag errors do not pay for importing torch.
    import torch

    from sde_diffusion.files import checkpoints

    from sde_diffusion.training import distributed
    from sde_diffusion.files.output_files import to_json
    from sde_diffusion.app.config import ConfigError, check_class_fields, check_sampler_options, select_device
    from sde_diffusion.app import cpu_share
    from sde_diffusion.app.plugins import load_plugins
    from sde_diffusion.app.validation import validate_config
    from sde_diffusion.app.controllable_modes import run_controllable
    from sde_diffusion.app.modes import run_eval, run_likelihood, run_sample, run_study_mode
    from sde_diffusion.app.signals import StoppedBySignal, interrupted_by_signals
    from sde_diffusion.app.workdir_config import check_stored_overrides
    from sde_diffusion.sampling.ode import SolverStopped
    from sde_diffusion.app.train import NonFiniteError, train

    config, plan = FLAGS.config, None
    try:
        if STARTED_FROM:  # the workdir's config.json: the command line changes only what the weights allow
            check_stored_overrides(_overridden_fields(sys.argv), FLAGS.mode, FLAGS.workdir)
        check_class_fields(FLAGS.mode, _overridden_fields(sys.argv))
        load_plugins(config)
        plan = validate_config(config, FLAGS.mode)  # the run's SDE, sampler call, data facts: built once
        check_sampler_options(config, _overridden_fields(sys.argv))
        checkpoints.check_workdir(FLAGS.workdir)
        _remove_stale_outputs(FLAGS.workdir)
        run = {"train": train, "sample": run_sample, "likelihood": run_likelihood, "eval": run_eval,
               "study": run_study_mode,
               "inpaint": partial(run_controllable, mode="inpaint"),
               "colorize": partial(run_controllable, mode="colorize")}[FLAGS.mode]
        if config.threads:
            torch.set_num_threads(config.threads)
        else:
            cpu_share.start()  # the usable cores, less those other processes keep busy
        distributed.setup(plan.device.type)  # under torchrun; nothing otherwise
        try:
            # the trainer saves and stops on a signal itself; elsewhere a signal stops the run where it is
            with nullcontext() if FLAGS.mode == "train" else interrupted_by_signals():
                report = run(config, FLAGS.workdir, config_file=_config_path(sys.argv), plan=plan)
            if report is not None and FLAGS.mode != "train":  # rank 0's report, one JSON line
                print(to_json(report))
            # all ranks leave together: gloo aborts a process whose peer closes the group under it
            distributed.barrier()
            distributed.leave_after_success()
        finally:
            distributed.teardown()
    except StoppedBySignal as stopped:  # the trainer said so and saved its state
        sys.exit(stopped.exit_status)
    except KeyboardInterrupt as interrupted:  # outside training: outputs are written whole or not at all
        signum = getattr(interrupted, "signum", signal.SIGINT)
        print(f"error: interrupted by {signal.Signals(signum).name}; no output was left half-written",
              file=sys.stderr)
        sys.exit(128 + signum)
    except (ConfigError, checkpoints.CheckpointError, NonFiniteError, OSError, ValueError) as error:
        sys.exit("error: " + " ".join(line.strip() for line in str(error).splitlines()))
    except SolverStopped as error:  # an adaptive solver's cap or step floor: its own line, plus the fields
        fields = SOLVER_FIELDS.get(FLAGS.mode, SOLVER_FIELDS["sample"])
        sys.exit(f"error: {_one_line(error)} (set by {', '.join('--config.' + field for field in fields)})")
    except (MemoryError, RuntimeError) as error:  # torch's CPU allocator says so in a RuntimeError
        if not isinstance(error, MemoryError) and not _out_of_memory(error):
            raise
        section, name = BATCH_FIELDS.get(FLAGS.mode, "sampling.batch_size").split(".")
        device = plan.device if plan is not None else select_device(config)
        sys.exit(f"error: out of memory in --mode {FLAGS.mode} on {device} with "
                 f"{section}.{name}={config[section][name]}: lower --config.{section}.{name}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
