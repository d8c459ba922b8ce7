"""Bad data through `main.py` (issue 26, the data side): each case of the table exits non-zero
with one line on stderr naming the file or the change, and leaves the workdir as it was (absent,
or a trained copy with the same bytes). Run as `test_bad_input`'s cases are: forked children of
one driver process.

Beside the table, what must go right rather than stop: a damaged image cache is rebuilt with one
warning and trains on the right pixels; a full disk while building it is one line and leaves no
file behind; 16-bit PNGs keep their gray levels; unreadable symlinks and odd names are warned on
one line each; npz labels train a class-conditional model; data changed under a resume trains on
with `training.resume_despite_changes=True`.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import test_bad_input
from conftest import HANG_TIMEOUT_S
from test_bad_input import _argv, _tree

ROOT = Path(__file__).resolve().parents[1]
BUDGET_GIB = "0.002"  # the .npz budget of these runs ($SDE_DIFFUSION_NPZ_BUDGET_GIB): 2 MiB
# A U-Net small enough to train a few steps on 8x8 images in seconds.
FOLDER = ["--config=configs/vp_folder.py", "--config.data.image_size=8", "--config.model.nf=32",
          "--config.model.ch_mult=(1,1)", "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=(4,)",
          "--config.training.batch_size=8", "--config.training.snapshot_sampling=False",
          "--config.training.snapshot_freq=4", "--config.training.log_freq=1"]
NPZ = [*FOLDER, "--config.data.dataset=npz"]
RESUME = [*FOLDER, "--config.training.n_iters=8"]
DIGITS = "--config=configs/vp_digits.py"

# (case id, argv after main.py ({tmp} placeholders), what the error line must say, the workdir:
#  "missing" (must stay absent) or "trained" (a copy of a run trained on {tmp}/pictures, unchanged))
CASES = [
    ("npz claiming terabytes", [*NPZ, "--config.data.root={tmp}/huge.npz"],
     "huge.npz: array 'x' claims shape (1000000, 3, 512, 512) float32 (2.86 TiB) but holds", "missing"),
    ("npz over the budget", [*NPZ, "--config.data.root={tmp}/zeros.npz"],
     "zeros.npz: array 'x' of shape (64, 3, 64, 64) float32 is 3 MiB as float32, over the 2.05 MiB budget",
     "missing"),
    ("npz of 16x3 strips", [*NPZ, "--config.data.root={tmp}/strips.npz"],
     "must be square: shape (40, 3, 16, 3) reads as 3 channels of 16x3 pixels", "missing"),
    ("npz of text", [*NPZ, "--config.data.root={tmp}/text.npz"], "text.npz: array 'x' must hold numbers",
     "missing"),
    ("npy named npz", [*NPZ, "--config.data.root={tmp}/bare.npz"], "bare.npz cannot be read as npz", "missing"),
    ("npz labels of another count", [*NPZ, "--config.data.root={tmp}/labelled.npz", "--config.model.num_classes=3"],
     "must equal the 4 classes of data.dataset 'npz'", "missing"),
    ("npz negative labels", [*NPZ, "--config.data.root={tmp}/negative_labels.npz", "--config.model.num_classes=4"],
     "negative_labels.npz must be integers >= 0", "missing"),
    ("npz fractional labels", [*NPZ, "--config.data.root={tmp}/fractional_labels.npz",
                               "--config.model.num_classes=4"], "fractional_labels.npz must be integers >= 0", "missing"),
    ("npz fewer labels than images", [*NPZ, "--config.data.root={tmp}/few_labels.npz", "--config.model.num_classes=4"],
     "few_labels.npz holds 40 images but 10 labels", "missing"),
    ("npz labels claiming terabytes", [*NPZ, "--config.data.root={tmp}/huge_labels.npz",
                                       "--config.model.num_classes=4"], "huge_labels.npz: array 'labels' claims",
     "missing"),
    ("npz without labels, conditional", [*NPZ, "--config.data.root={tmp}/zeros_small.npz",
                                         "--config.model.num_classes=4"], "has no class labels", "missing"),
    ("inpaint images claiming terabytes", [DIGITS, "--mode=inpaint", "--config.controllable.images={tmp}/huge.npz"],
     "huge.npz: array 'x' claims shape", "missing"),
    ("inpaint mask claiming terabytes", [DIGITS, "--mode=inpaint", "--config.controllable.mask={tmp}/huge.npz"],
     "huge.npz: array 'x' claims shape", "missing"),
    ("inpaint images of 16x3 strips", [DIGITS, "--mode=inpaint", "--config.controllable.images={tmp}/strips.npz"],
     "must be square", "missing"),
    ("ddpm width GroupNorm cannot split, on a folder", [*FOLDER, "--config.model.nf=16", "--config.data.root={tmp}/pictures"],
     "config.model.nf: times every model.ch_mult must be a multiple of 32 (ddpm's GroupNorm has 32 groups), "
     "got nf=16, ch_mult=(1, 1)", "missing"),
    ("resume on a folder with images added", [*RESUME, "--config.data.root={tmp}/grown"],
     "data.root's train split: ", "trained"),
    ("resume on a folder with images removed", [*RESUME, "--config.data.root={tmp}/shrunk"],
     "data.root's train split: ", "trained"),
    ("resume on a folder with an image altered", [*RESUME, "--config.data.root={tmp}/altered"],
     "data.root's train split: ", "trained"),
]


def write_pngs(folder: Path, count: int, seed: int = 0, size=(12, 10)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{seed}_{i:03d}.png")


def run_main(argv, env=None, prefix=()):
    return subprocess.run([*prefix, sys.executable, "main.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S, env={**os.environ, **(env or {})})


def write_npz_claiming(path: Path, name: str, shape, others=None) -> None:
    """An .npz whose `name`.npy header claims `shape` (float32) and holds no data."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", header.getvalue())
        for other, array in (others or {}).items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{other}.npy", buffer.getvalue())


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "pictures"
    write_pngs(folder, 40)
    return folder


@pytest.fixture(scope="module")
def trained_on_pictures(tmp_path_factory, pictures):
    workdir = tmp_path_factory.mktemp("trained_folder") / "run"
    result = run_main([*FOLDER, f"--config.data.root={pictures}", f"--workdir={workdir}", "--mode=train",
                       "--config.training.n_iters=4"])
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def _data_files(tmp: Path, pictures: Path) -> None:
    from sde_diffusion.data.datasets import load_dataset
    from sde_diffusion.data.image_folder import image_paths

    write_npz_claiming(tmp / "huge.npz", "x", (1_000_000, 3, 512, 512))
    write_npz_claiming(tmp / "huge_labels.npz", "labels", (10 ** 12,),
                       others={"x": np.zeros((40, 8, 8, 3), np.uint8)})
    np.savez_compressed(tmp / "zeros.npz", x=np.zeros((64, 3, 64, 64), np.float32))
    np.savez(tmp / "zeros_small.npz", x=np.zeros((40, 8, 8), np.uint8))
    np.savez(tmp / "strips.npz", x=np.zeros((40, 3, 16, 3), np.uint8))
    np.savez(tmp / "text.npz", x=np.array(["a", "b"]))
    np.save(tmp / "bare.npy", np.zeros((4, 8, 8)))
    (tmp / "bare.npy").rename(tmp / "bare.npz")
    images = np.zeros((40, 8, 8, 3), np.uint8)
    np.savez(tmp / "labelled.npz", x=images, labels=np.arange(40) % 4)
    np.savez(tmp / "negative_labels.npz", x=images, labels=np.arange(40) % 4 - 1)
    np.savez(tmp / "fractional_labels.npz", x=images, labels=np.arange(40) % 4 / 2)
    np.savez(tmp / "few_labels.npz", x=images, labels=np.arange(10) % 4)
    shutil.copytree(pictures, tmp / "grown")
    write_pngs(tmp / "grown", 8, seed=1)
    shutil.copytree(pictures, tmp / "shrunk")
    for path in sorted((tmp / "shrunk").iterdir())[:20]:
        path.unlink()
    shutil.copytree(pictures, tmp / "altered")
    first_train = image_paths(tmp / "altered", "train")[0]
    Image.fromarray(np.full((10, 12, 3), 7, np.uint8)).save(first_train)
    for name in ("grown", "shrunk", "altered"):  # cached now: the runs' only line is then their refusal
        for split in ("train", "test"):
            load_dataset("folder", split, root=tmp / name, image_size=8, num_channels=3)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, pictures, trained_on_pictures):
    """case id -> (exit code, stderr, workdir before, workdir after)."""
    tmp = tmp_path_factory.mktemp("bad_data")
    _data_files(tmp, pictures)
    argvs, workdirs = [], []
    for index, (_, args, _, state) in enumerate(CASES):
        workdir = tmp / f"case{index}" / "run"
        if state == "trained":
            workdir.parent.mkdir()
            shutil.copytree(trained_on_pictures, workdir, symlinks=True)
        argvs.append(_argv(args, workdir, tmp))
        workdirs.append(workdir)
    before = [_tree(w) if w.is_dir() else None for w in workdirs]
    cases_file = tmp / "cases.json"
    cases_file.write_text(json.dumps(argvs))
    driver = subprocess.run([sys.executable, test_bad_input.__file__, str(cases_file)], cwd=ROOT,
                            capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "SDE_DIFFUSION_NPZ_BUDGET_GIB": BUDGET_GIB})
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads(driver.stdout.strip().splitlines()[-1])
    after = [_tree(w) if w.is_dir() else None for w in workdirs]
    return {case[0]: (result["code"], result["stderr"], b, a)
            for case, result, b, a in zip(CASES, results, before, after)}


@pytest.mark.parametrize("name, args, named, state", CASES, ids=[case[0] for case in CASES])
def test_bad_data_exits_with_one_line_and_changes_nothing(outcomes, name, args, named, state):
    code, stderr, before, after = outcomes[name]
    assert code != 0, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:") and named in lines[0], lines[0]
    if state == "missing":
        assert before is None and after is None
    else:
        assert before is not None and after == before


def test_data_changes_name_both_sides_and_the_way_out(outcomes):
    import re

    for case, fewer in (("resume on a folder with images removed", True),
                        ("resume on a folder with images added", False)):
        stderr = outcomes[case][1]
        found = re.search(r"data.root's train split: (\d+) items, contents [0-9a-f]{12} -> (\d+) items, "
                          r"contents [0-9a-f]{12}", stderr)
        assert found and (int(found.group(2)) < int(found.group(1))) == fewer, stderr
        assert "training.resume_despite_changes=True" in stderr


# -- what must go right ------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_damaged_cache_is_rebuilt_and_its_stale_temporaries_removed(tmp_path, pictures):
    cache = tmp_path / "cache"
    env = {"SDE_DIFFUSION_CACHE": str(cache)}
    args = [*FOLDER, f"--config.data.root={pictures}", "--mode=train", "--config.training.n_iters=1"]
    first = run_main([*args, f"--workdir={tmp_path / 'a'}"], env)
    assert first.returncode == 0, first.stderr[-2000:]
    folder = cache / "image_folders"
    train_cache = max((p for p in folder.glob("*.npy") if ".labels" not in p.name), key=_rows)  # not the test split
    good = _sha(train_cache)
    content = bytearray(train_cache.read_bytes())
    content[128:] = bytes(len(content) - 128)  # the attack: data zeroed, header kept
    train_cache.write_bytes(bytes(content))
    stale = folder / f".{train_cache.name}.killed.tmp"  # a build SIGKILLed half way
    stale.write_bytes(b"\x93NUMPY half")
    second = run_main([*args, f"--workdir={tmp_path / 'b'}"], env)
    assert second.returncode == 0, second.stderr[-2000:]
    rebuilt = [line for line in second.stderr.splitlines() if "rebuilding the image cache" in line]
    assert len(rebuilt) == 1 and str(train_cache) in rebuilt[0] and "do not match their checksum" in rebuilt[0]
    assert f"removed {stale}" in second.stderr and not stale.exists() and _sha(train_cache) == good
    train_cache.write_bytes(train_cache.read_bytes()[:-100])  # truncated: "mmap length ..." before
    third = run_main([*args, f"--workdir={tmp_path / 'c'}"], env)
    assert third.returncode == 0 and "holds" in third.stderr and _sha(train_cache) == good, third.stderr[-2000:]


def _rows(path: Path) -> int:
    return np.load(path, mmap_mode="r").shape[0]


def test_a_full_disk_while_caching_is_one_line_and_leaves_nothing(tmp_path):
    """A real full disk: a 256 KiB tmpfs as the cache folder (in a user and mount namespace), and
    a folder whose cache needs more. Before: SIGBUS (exit 135) and a .tmp file left there."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -rm (a user and mount namespace) to mount a small tmpfs")
    big, cache, workdir = tmp_path / "big", tmp_path / "cache", tmp_path / "run"
    write_pngs(big, 60, size=(64, 64))  # about 54 train images of 12 KiB: 650 KiB
    cache.mkdir()
    argv = [arg for arg in FOLDER if "attn_resolutions" not in arg and "image_size" not in arg]
    argv += ["--config.data.image_size=64", "--config.model.attn_resolutions=(32,)", f"--config.data.root={big}",
             f"--workdir={workdir}", "--mode=train", "--config.training.n_iters=1"]
    script = (f"mount -t tmpfs -o size=256k tmpfs {cache} || exit 99; {sys.executable} main.py "
              + " ".join(f"'{arg}'" for arg in argv) + f" 2>{tmp_path / 'stderr'}; echo exit=$?; "
              f"ls -A {cache}/image_folders")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=HANG_TIMEOUT_S, env={**os.environ, "SDE_DIFFUSION_CACHE": str(cache)})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (tmp_path / "stderr").read_text().strip().splitlines()
    status, *left = result.stdout.split()
    assert status == "exit=1" and not left, result.stdout  # nothing left in the cache folder
    logged, errors = [line for line in lines if line[:1] == "I"], [line for line in lines if line[:1] != "I"]
    assert len(errors) == 1 and errors[0].startswith(f"error: no space left on device writing {cache}/image_folders/")
    assert errors[0].endswith(".npy") and all("caching the train split" in line for line in logged)  # its start line


def test_sixteen_bit_pngs_symlinks_and_odd_names_through_main(tmp_path):
    folder = tmp_path / "gray"
    folder.mkdir()
    for i in range(12):  # mid-gray in 16 bits: cached as 128, not clipped to 255
        Image.fromarray(np.full((8, 8), 32768 + i, np.uint16)).save(folder / f"deep{i:02d}.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "two\nlines.png").write_text("not a png")
    cache = tmp_path / "cache"
    result = run_main([*FOLDER, "--config.data.num_channels=1", f"--config.data.root={folder}",
                       f"--workdir={tmp_path / 'run'}", "--mode=train", "--config.training.n_iters=1"],
                      {"SDE_DIFFUSION_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = [line for line in result.stderr.splitlines() if "skipping unreadable image" in line]
    names = ("dangling.png", "loop.png", "two\\nlines.png")
    assert all(any(name in line for line in skipped) for name in names), result.stderr[-2000:]
    assert not any(line.rstrip().endswith("two") for line in result.stderr.splitlines())
    values = np.concatenate([np.load(p) for p in (cache / "image_folders").glob("*.npy") if ".labels" not in p.name])
    assert values.size and (values == 128).all()


def test_npz_labels_train_a_class_conditional_model(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "set.npz", x=rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8), labels=np.arange(60) % 4)
    args = [*NPZ, f"--config.data.root={tmp_path / 'set.npz'}", f"--workdir={tmp_path / 'run'}",
            "--config.model.num_classes=4", "--config.training.n_iters=2", "--config.sampling.num_samples=2",
            "--config.sampling.steps=2"]
    trained = run_main([*args, "--mode=train"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    sampled = run_main([*args, "--mode=sample", "--config.sampling.labels=3"])
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    samples = np.load(json.loads(sampled.stdout.strip().splitlines()[-1])["npz"])
    assert samples["samples"].shape == (2, 3, 8, 8) and (samples["labels"] == 3).all()


def test_changed_data_resumes_when_asked_and_unchanged_data_when_touched(tmp_path, pictures, trained_on_pictures):
    touched = tmp_path / "touched"
    shutil.copytree(pictures, touched)
    for path in touched.iterdir():
        os.utime(path, (1, 1))  # other mtimes: another cache key, the same contents
    workdir = tmp_path / "run"
    shutil.copytree(trained_on_pictures, workdir)
    same = run_main([*RESUME, f"--config.data.root={touched}", f"--workdir={workdir}", "--mode=train"])
    assert same.returncode == 0 and "resuming from step 4" in same.stderr + same.stdout, same.stderr[-2000:]
    shrunk = tmp_path / "shrunk"
    shutil.copytree(pictures, shrunk)
    for path in sorted(shrunk.iterdir())[:20]:
        path.unlink()
    forced = run_main([*RESUME, "--config.training.n_iters=12", f"--config.data.root={shrunk}",
                       f"--workdir={workdir}", "--mode=train", "--config.training.resume_despite_changes=True"])
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "despite a changed data.root's train split: " in forced.stderr
    assert "trained to step 12" in forced.stderr + forced.stdout
