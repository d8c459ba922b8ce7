"""Every command the README and docs/ show runs, so the docs cannot rot: each `python main.py` (and
`torchrun ... main.py`, run here as one process) line of a ```bash block, with its placeholders
(runs/, ~/pictures, the published files) pointed at generated or fixture files and small
overrides appended (a few steps, a few samples, networks shrunk). A command that reads a trained
workdir nobody trained before it in the same file gets a tiny training run of its own config
first, as a user would have. Lines that are not commands of the package (the install, the test
suite, the benchmarks, which are run by hand and recorded with machine and date) are listed in
NOT_RUN; any other kind of line fails the test, so a new command cannot go unchecked."""
import json
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fixtures"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = ("pip install", "python -m pytest", "python benchmarks/")
SMALL = ["--config.sampling.steps=4", "--config.sampling.num_samples=8", "--config.sampling.batch_size=8",
         "--config.eval.num_samples=16", "--config.eval.batch_size=8", "--config.eval.bpd_num_images=4",
         "--config.study.nfe=(4,)", "--config.study.num_samples=16", "--config.study.samplers=('ddim',)",
         "--config.controllable.num_images=2", "--config.training.n_iters=4", "--config.training.snapshot_freq=4",
         "--config.training.batch_size=8", "--config.training.eval_freq=4", "--config.training.log_freq=2",
         "--config.training.snapshot_sampling=False"]
READING = ("--config.sampling.", "--config.eval.", "--config.study.", "--config.controllable.")
SHRUNK = ["--config.model.nf=32", "--config.model.ch_mult=(1,1)", "--config.model.num_res_blocks=1",
          "--config.model.attn_resolutions=(16,)"]  # the 32x32 networks, cut to seconds per step


def doc_commands(path: Path):
    """The command lines of the ```bash blocks of `path`, continuations joined, comments cut."""
    commands, inside, pending = [], False, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if not inside:
            continue
        line = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if pending.strip():
                commands.append(pending.strip())
            pending = ""
    return commands


def write_cifar(folder: Path, per_batch: int = 8):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as file:
            pickle.dump({b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}, file)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """The files a user's commands name, made small."""
    tmp = tmp_path_factory.mktemp("docs")
    write_cifar(tmp / "cifar" / "cifar-10-batches-py")
    pictures = tmp / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(pictures / f"p{i}.png")
    np.savez(tmp / "gray_or_rgb.npz", x=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    return tmp


def prepared(command: str, places: Path, runs: Path):
    """(argv, workdir, mode) of a doc command, pointed at small files with small settings."""
    words = shlex.split(command)
    if words[0] == "torchrun":  # one process here; tests/test_distributed.py runs torchrun itself
        words = ["python"] + words[next(i for i, w in enumerate(words) if w.endswith("main.py")):]
    assert words[:2] == ["python", "main.py"], command
    flags, rest = [], words[2:]
    while rest:  # "--flag value" as "--flag=value"
        word = rest.pop(0)
        if word in ("--config", "--workdir", "--mode") and rest:
            word = f"{word}={rest.pop(0)}"
        flags.append(word)
    values = dict(flag.split("=", 1) for flag in flags if flag.startswith(("--config=", "--workdir=", "--mode=")))
    config, workdir, mode = values.get("--config", ""), runs / values["--workdir"], values["--mode"]
    # without --config the workdir's stored config is the base, and only reading fields may change
    extra = list(SMALL) if config else [flag for flag in SMALL if flag.startswith(READING)]
    argv = []
    for flag in flags:
        if flag.startswith("--workdir="):
            flag = f"--workdir={workdir}"
        elif flag == "--config.data.root=~/pictures":
            flag = f"--config.data.root={places / 'pictures'}"
        elif flag.startswith("--config.controllable.images="):
            flag = f"--config.controllable.images={places / 'gray_or_rgb.npz'}"
        elif flag.startswith("--config.eval.reference_checkpoint="):
            flag, more = _published_file(flag.split("=", 1)[1])
            extra += more
        argv.append(flag)
    if ("cifar10" in config or "folder" in config) and "published" not in config:
        extra += SHRUNK + ([f"--config.data.root={places / 'cifar'}"] if "cifar10" in config else [])
    if "toy" in config:
        extra += ["--config.data.num_points=500"]
    return [sys.executable, "main.py", *argv, *extra], workdir, mode


def _published_file(name: str):
    """A fixture in place of a published file, with the fields that shrank it."""
    if name.endswith(".pkl"):
        fixture = "edm_edm_adm_cond.pkl" if "-cond-" in name else "edm_edm_ddpmpp.pkl"
        return f"--config.eval.reference_checkpoint={SHARED / 'edm' / fixture}", ["--config.data.image_size=16"]
    if not Path(name).suffix:  # a folder: a diffusers pipeline
        return f"--config.eval.reference_checkpoint={SHARED / 'diffusers' / 'ddpm_eps_linear'}", [
            "--config.data.image_size=16"]
    fixture = SHARED / "reference" / "ddpmpp_vp_cifar10_continuous"
    model = json.loads(fixture.with_suffix(".json").read_text())["model"]
    fields = ["--config.data.image_size=16"] + [
        f"--config.model.{field}={tuple(model[field]) if isinstance(model[field], list) else model[field]}"
        for field in ("nf", "ch_mult", "num_res_blocks", "attn_resolutions")]
    return f"--config.eval.reference_checkpoint={fixture.with_suffix('.pth')}", fields


def run(argv):
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the published files' stand-ins come from {SHARED}")
@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_documented_command_runs(doc, places, tmp_path):
    ran = 0
    for command in doc_commands(doc):
        if command.startswith(NOT_RUN):
            continue
        argv, workdir, mode = prepared(command, places, tmp_path / "runs")
        needs_training = mode != "train" and "reference_checkpoint" not in " ".join(argv)
        if needs_training and not (workdir / "checkpoints").is_dir():
            trained = run([word if not word.startswith("--mode=") else "--mode=train" for word in argv])
            assert trained.returncode == 0, f"{doc.name}: training for `{command}`:\n{trained.stderr[-1500:]}"
        result = run(argv)
        assert result.returncode == 0, f"{doc.name}: `{command}` failed:\n{result.stderr[-1500:]}"
        ran += 1
    assert ran or not any(c for c in doc_commands(doc) if not c.startswith(NOT_RUN))


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_local_link_and_picture_of_the_docs_exists(doc):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    missing = [link for link in local if not (doc.parent / link).exists()]
    assert local or doc.name != "README.md"  # the README does link its pictures and docs
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"
