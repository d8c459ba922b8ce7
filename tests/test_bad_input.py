"""Malformed command lines and configs, table-driven: each exits non-zero with one line on
stderr that names the problem, and leaves the workdir as it was (absent, or with the same files
and bytes).

Every case is `main.py` run as a program (argv, stderr, exit status), in a child forked from one
driver process that imported torch and absl once: a fresh interpreter per case would cost seconds.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
TOY = "--config=configs/vp_toy.py"
DIGITS = "--config=configs/vp_digits.py"
VE_TOY = "--config=configs/ve_toy.py"

# The trained workdir's own settings (and a longer run), so that a case changes only its own field.
TRAINED = ["--config.training.n_iters=40", "--config.model.width=16", "--config.model.num_blocks=1",
           "--config.data.num_points=1000", "--config.training.batch_size=64"]

# (case id, argv after main.py with {workdir} / {tmp} placeholders, what the error line must say,
#  the workdir: "missing" (must stay absent) or "trained" (a copy of a trained run, must not change))
CASES = [
    ("wrong type int", [TOY, "--config.training.batch_size=abc"], "config.training.batch_size", "missing"),
    ("wrong type float", [TOY, "--config.model.beta_min=fast"], "config.model.beta_min", "missing"),
    ("float for an int", [TOY, "--config.training.n_iters=1.5"], "config.training.n_iters", "missing"),
    ("unknown field", [TOY, "--config.training.nope=1"], "--config.training.nope", "missing"),
    ("field of another config", [TOY, "--config.model.ch_mult=(1,2)"], "--config.model.ch_mult", "missing"),
    ("unknown flag", [TOY, "--bogus=1"], "bogus", "missing"),
    ("unknown sde", [TOY, "--config.training.sde=vpsdee"], "config.training.sde", "missing"),
    ("unknown model", [TOY, "--config.model.name=unet9000"], "config.model.name", "missing"),
    ("unknown sampler", [TOY, "--config.sampling.method=magic"], "config.sampling.method", "missing"),
    ("unknown dataset", [TOY, "--config.data.dataset=imagenet"], "config.data.dataset", "missing"),
    ("unknown schedule", [TOY, "--config.sampling.schedule=cosine"], "config.sampling.schedule", "missing"),
    ("unknown predictor", [TOY, "--config.sampling.predictor=leapfrog"], "config.sampling.predictor", "missing"),
    ("unknown corrector", [TOY, "--config.sampling.corrector=hmc"], "config.sampling.corrector", "missing"),
    ("option of another sampler", [TOY, "--config.sampling.method=ddim", "--config.sampling.order=3"],
     "config.sampling.order: sampler ddim has no option order", "missing"),
    ("pc option with heun", [TOY, "--config.sampling.method=heun", "--config.sampling.snr=0.2"],
     "config.sampling.snr: sampler heun has no option snr", "missing"),
    ("an order dpm_solver++ has not", [TOY, "--config.sampling.method=dpm_solver++", "--config.sampling.order=5"],
     "config.sampling.order: sampler 'dpm_solver++' takes order 1, 2 or 3, got 5", "missing"),
    ("unknown nonfinite policy", [TOY, "--config.training.nonfinite=ignore"], "config.training.nonfinite", "missing"),
    ("zero batch_size", [TOY, "--config.training.batch_size=0"], "config.training.batch_size", "missing"),
    ("negative n_iters", [TOY, "--config.training.n_iters=-5"], "config.training.n_iters", "missing"),
    ("zero image_size", [DIGITS, "--config.data.image_size=0"], "config.data.image_size", "missing"),
    ("zero num_scales", [TOY, "--config.model.num_scales=0"], "config.model.num_scales", "missing"),
    ("zero nf", [DIGITS, "--config.model.nf=0"], "config.model.nf", "missing"),
    ("zero mlp width", [TOY, "--config.model.width=0"], "config.model.width", "missing"),
    ("zero snapshot_freq", [TOY, "--config.training.snapshot_freq=0"], "config.training.snapshot_freq", "missing"),
    ("negative preemption freq", [TOY, "--config.training.snapshot_freq_for_preemption=-1"],
     "config.training.snapshot_freq_for_preemption", "missing"),
    ("zero num_samples", [TOY, "--config.sampling.num_samples=0"], "config.sampling.num_samples", "missing"),
    ("zero sampling steps", [TOY, "--config.sampling.steps=0"], "config.sampling.steps", "missing"),
    ("zero toy points", [TOY, "--config.data.num_points=0"], "config.data.num_points", "missing"),
    ("zero channel multiplier", [DIGITS, "--config.model.ch_mult=(1,0)"], "config.model.ch_mult", "missing"),
    ("beta_min above beta_max", [TOY, "--config.model.beta_min=30.0"],
     "config.model: the vpsde SDE refuses its parameters: need 0 < beta_min <= beta_max", "missing"),
    ("nan beta_min", [TOY, "--config.model.beta_min=nan"], "config.model.beta_min", "missing"),
    ("sigma_min zero", [VE_TOY, "--config.model.sigma_min=0.0"], "config.model.sigma_min", "missing"),
    ("sigma_min above sigma_max", [VE_TOY, "--config.model.sigma_min=20.0"],
     "config.model: the vesde SDE refuses its parameters: need 0 < sigma_min < sigma_max", "missing"),
    ("ema_rate one", [TOY, "--config.model.ema_rate=1.0"], "config.model.ema_rate", "missing"),
    ("ema_rate negative", [TOY, "--config.model.ema_rate=-0.5"], "config.model.ema_rate", "missing"),
    ("lr zero", [TOY, "--config.optim.lr=0.0"], "config.optim.lr", "missing"),
    ("lr negative", [TOY, "--config.optim.lr=-0.001"], "config.optim.lr", "missing"),
    ("adam eps zero", [TOY, "--config.optim.eps=0.0"], "config.optim.eps", "missing"),
    ("grad_clip negative", [TOY, "--config.optim.grad_clip=-1.0"], "config.optim.grad_clip", "missing"),
    ("sampling eps one", [TOY, "--config.sampling.eps=1.0"], "config.sampling.eps", "missing"),
    ("sampling eps negative", [TOY, "--config.sampling.eps=-0.1"], "config.sampling.eps", "missing"),
    ("unknown device", [TOY, "--config.device=tpu9"], "config.device", "missing"),
    ("missing data folder", ["--config=configs/vp_cifar10.py", "--config.data.root={tmp}/no_cifar"],
     "no_cifar", "missing"),
    ("image data without a root", [DIGITS, "--config.data.dataset=mnist", "--config.data.image_size=32"],
     "data.root", "missing"),
    ("missing config file", ["--config=configs/no_such_config.py"], "configs/no_such_config.py", "missing"),
    ("config file with a syntax error", ["--config={tmp}/broken_config.py"], "broken_config.py", "missing"),
    ("config file that raises", ["--config={tmp}/raising_config.py"], "raising_config.py", "missing"),
    ("unknown mode", [TOY, "--mode=fly"], "--mode", "missing"),
    ("missing workdir", [TOY, "omit:--workdir"], "--workdir", "none"),
    ("empty workdir", [TOY, "--workdir="], "workdir", "none"),
    ("missing mode", [TOY, "omit:--mode"], "--mode", "missing"),
    ("missing config", [], "--config", "missing"),
    ("positional argument", [TOY, "stray"], "stray", "missing"),
    ("workdir is a file", [TOY, "--workdir={tmp}/a_file"], "a_file", "none"),
    ("workdir under a file", [TOY, "--workdir={tmp}/a_file/run"], "a_file", "none"),
    ("eval.checkpoint missing", [TOY, "--mode=sample", "--config.eval.checkpoint=999"], "checkpoint_999.pth",
     "trained"),
    ("eval.checkpoint negative", [TOY, "--mode=sample", "--config.eval.checkpoint=-1"], "config.eval.checkpoint",
     "trained"),
    ("checkpoint of another model", [TOY, "--mode=sample", "--config.model.width=32"],
     "model.width: 16 -> 32", "trained"),
    ("batch larger than the data", [TOY, "--config.data.num_points=100", "--config.training.batch_size=512"],
     "batch_size", "trained"),
    ("sampling without a checkpoint", [TOY, "--mode=sample"], "no checkpoint", "missing"),
    # what must not be silently wrong (NaN outputs, a perfect score for nothing, ...)
    ("sampling eps zero", [TOY, "--config.sampling.eps=0.0"], "config.sampling.eps", "missing"),
    ("lr infinite", [TOY, "--config.optim.lr=inf"], "config.optim.lr", "missing"),
    ("lr nan", [TOY, "--config.optim.lr=nan"], "config.optim.lr", "missing"),
    ("huge image_size", [DIGITS, "--config.data.image_size=4096"], "config.data.image_size", "missing"),
    ("empty test split for eval", [TOY, "--mode=eval", "--config.data.num_points=4"], "config.data.num_points",
     "missing"),
    ("empty test split for likelihood", [TOY, "--mode=likelihood", "--config.data.num_points=4"],
     "config.data.num_points", "missing"),
    ("sde_solver with one step", [TOY, *TRAINED, "--mode=sample", "--config.sampling.method=sde_solver",
                                  "--config.sampling.steps=1"], "config.sampling.steps", "trained"),
    ("inpaint images with NaN", [DIGITS, "--mode=inpaint", "--config.controllable.images={tmp}/nan_images.npz"],
     "NaN", "missing"),
    ("inpaint images with Inf", [DIGITS, "--mode=inpaint", "--config.controllable.images={tmp}/inf_images.npz"],
     "NaN or infinite", "missing"),
    ("npz with no images", [DIGITS, "--mode=inpaint", "--config.controllable.images={tmp}/no_images.npz"],
     "empty array", "missing"),
    ("inpaint mask with NaN", [DIGITS, "--mode=inpaint", "--config.controllable.mask={tmp}/nan_mask.npz"],
     "nan_mask.npz", "missing"),
    ("text file named .png", [DIGITS, "--mode=inpaint", "--config.controllable.images={tmp}/png_folder"],
     "not_an_image.png", "missing"),
    # labels and guidance that a mode would drop (it uses the "no label" prediction)
    ("labels for inpaint", ["--config=configs/vp_digits_cond.py", "--mode=inpaint", "--config.sampling.labels=3"],
     "config.sampling.labels: --mode inpaint does not read it", "missing"),
    ("guidance for colorize", ["--config=configs/vp_digits_cond.py", "--mode=colorize",
                               "--config.sampling.guidance_scale=2"],
     "config.sampling.guidance_scale: --mode colorize does not read it", "missing"),
    ("labels for likelihood", ["--config=configs/vp_digits_cond.py", "--mode=likelihood", "--config.sampling.labels=3"],
     "config.sampling.labels: --mode likelihood does not read it", "missing"),
    ("guidance for study", ["--config=configs/vp_digits_cond.py", "--mode=study", "--config.sampling.guidance_scale=2"],
     "config.sampling.guidance_scale: --mode study does not read it", "missing"),
    ("empty image folder", ["--config=configs/vp_folder.py", "--config.data.root={tmp}/empty_folder"],
     "no PNG, JPG, JPEG, WEBP images", "missing"),
    ("image folder missing", ["--config=configs/vp_folder.py", "--config.data.root={tmp}/no_such_folder"],
     "config.data.root", "missing"),
    ("npz data set missing", ["--config=configs/vp_folder.py", "--config.data.dataset=npz",
                              "--config.data.root={tmp}/no_such.npz"], "config.data.root", "missing"),
    ("unknown parameterization", [TOY, "--config.model.parameterization=x_start"], "config.model.parameterization",
     "missing"),
    # a workdir remembers what it trains: resuming or reading it under another meaning is refused
    ("resume under vesde", [TOY, *TRAINED, "--config.training.sde=vesde"], "training.sde: 'vpsde' -> 'vesde'",
     "trained"),
    ("resume under subvpsde", [TOY, *TRAINED, "--config.training.sde=subvpsde"], "training.sde", "trained"),
    ("resume on another data set", [TOY, *TRAINED, "--config.data.dataset=moons"], "data.dataset", "trained"),
    ("resume discrete", [TOY, *TRAINED, "--config.training.continuous=False"], "training.continuous", "trained"),
    ("resume with another batch size", [TOY, *TRAINED, "--config.training.batch_size=32"],
     "training.batch_size: 64 -> 32", "trained"),
    ("resume with another seed", [TOY, *TRAINED, "--config.seed=7"], "seed: 42 -> 7", "trained"),
    ("resume with another width", [TOY, *TRAINED, "--config.model.width=32"], "model.width: 16 -> 32", "trained"),
    ("resume with another embedding", [TOY, *TRAINED, "--config.model.embedding_type=fourier"],
     "model.embedding_type", "trained"),
    ("eval under another sde", [TOY, *TRAINED, "--mode=eval", "--config.training.sde=vesde"], "training.sde",
     "trained"),
    ("sample under another beta_max", [TOY, *TRAINED, "--mode=sample", "--config.model.beta_max=10.0"],
     "model.beta_max", "trained"),
]
if os.geteuid() != 0:  # root writes anywhere: the read-only folder case needs an ordinary user
    CASES.append(("workdir under a read-only folder", [TOY, "--workdir={tmp}/read_only/run"], "read_only", "none"))



def _argv(args, workdir, tmp):
    """The case's arguments plus --workdir and --mode=train where it names neither (nor omits them)."""
    argv = [arg.format(workdir=workdir, tmp=tmp) for arg in args if not arg.startswith("omit:")]
    omitted = {arg[len("omit:"):] for arg in args if arg.startswith("omit:")}
    for flag, default in (("--workdir", f"--workdir={workdir}"), ("--mode", "--mode=train")):
        if flag not in omitted and not any(arg.startswith(flag + "=") for arg in argv):
            argv.append(default)
    return argv


def _tree(folder: Path) -> dict:
    """Every file under `folder`: relative name -> (bytes, mtime_ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _drive(cases_file: str) -> None:
    """Run each case's argv through main.py in a forked child; print the results as JSON."""
    import runpy
    import tempfile
    import traceback

    import importlib

    for module in ("torch", "absl.app", "ml_collections", "sde_diffusion.app.train"):
        importlib.import_module(module)  # once here, inherited by every child

    results = []
    for argv in json.loads(Path(cases_file).read_text()):
        with tempfile.TemporaryFile() as stderr:
            pid = os.fork()
            if pid == 0:  # the child: main.py as `python main.py ARGV` would run it
                os.dup2(stderr.fileno(), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                sys.argv = ["main.py", *argv]
                try:
                    runpy.run_path("main.py", run_name="__main__")
                    code = 0
                except SystemExit as exit:  # what the interpreter does with it
                    if exit.code is None or isinstance(exit.code, int):
                        code = exit.code or 0
                    else:
                        print(exit.code, file=sys.stderr)
                        code = 1
                except BaseException:
                    traceback.print_exc()
                    code = 1
                sys.stderr.flush()
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            stderr.seek(0)
            results.append({"code": os.waitstatus_to_exitcode(status), "stderr": stderr.read().decode()})
    print(json.dumps(results))


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    command = [sys.executable, "main.py", TOY, f"--workdir={workdir}", "--mode=train",
               "--config.training.n_iters=20", "--config.training.snapshot_freq=20",
               "--config.training.snapshot_sampling=False", "--config.model.width=16",
               "--config.model.num_blocks=1", "--config.data.num_points=1000", "--config.training.batch_size=64"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, trained_workdir):
    """case id -> (exit code, stderr, workdir before, workdir after)."""
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "broken_config.py").write_text("def get_config(:\n    pass\n")
    (tmp / "raising_config.py").write_text("def get_config():\n    raise TypeError('no config here')\n")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "read_only").mkdir()
    import numpy as np
    images = np.full((4, 16, 16), 0.5, dtype=np.float32)
    np.savez(tmp / "nan_images.npz", x=np.where(np.arange(16) == 3, np.nan, images))
    np.savez(tmp / "inf_images.npz", x=np.where(np.arange(16) == 3, np.inf, images))
    np.savez(tmp / "no_images.npz", x=np.zeros((0, 16, 16), dtype=np.float32))
    mask = np.ones((16, 16), dtype=np.float32)
    mask[4, 4] = np.nan
    np.savez(tmp / "nan_mask.npz", x=mask)
    (tmp / "empty_folder").mkdir()
    (tmp / "png_folder").mkdir()
    (tmp / "png_folder" / "not_an_image.png").write_text("this is text, not a PNG")
    (tmp / "read_only").chmod(0o555)
    argvs, workdirs = [], []
    for index, (_, args, _, state) in enumerate(CASES):
        workdir = tmp / f"case{index}" / "run"
        if state == "trained":
            workdir.parent.mkdir()
            subprocess.run(["cp", "-a", str(trained_workdir), str(workdir)], check=True)
        argvs.append(_argv(args, workdir, tmp))
        workdirs.append(workdir)
    before = [_tree(w) if w.is_dir() else None for w in workdirs]
    cases_file = tmp / "cases.json"
    cases_file.write_text(json.dumps(argvs))
    driver = subprocess.run([sys.executable, __file__, str(cases_file)], cwd=ROOT, capture_output=True,
                            text=True, timeout=HANG_TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads(driver.stdout.strip().splitlines()[-1])
    after = [_tree(w) if w.is_dir() else None for w in workdirs]
    return {case[0]: (result["code"], result["stderr"], b, a)
            for case, result, b, a in zip(CASES, results, before, after)}


def test_the_table_is_large_enough():
    assert len(CASES) >= 30 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("name, args, named, state", CASES, ids=[case[0] for case in CASES])
def test_bad_input_exits_with_one_line_and_changes_nothing(outcomes, name, args, named, state):
    code, stderr, before, after = outcomes[name]
    assert code != 0, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(("error:", "FATAL Flags parsing error:")) and named in lines[0], lines[0]
    if state == "missing":
        assert before is None and after is None
    elif state == "trained":
        assert before is not None and after == before


if __name__ == "__main__":
    _drive(sys.argv[1])
