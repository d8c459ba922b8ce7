"""The user's own images (`data.dataset="folder"` and `"npz"`): files written here in every format
and mode a user has, read at one size with exact pixels where no resampling happens; splits,
class subfolders, unreadable and empty folders; training and sampling on a folder end to end."""
import json
import os
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import HANG_TIMEOUT_S
from sde_diffusion.data.datasets import load_dataset
from sde_diffusion.data.image_folder import TEST_FRACTION, class_names, image_paths, read_image, read_image_folder

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int, size=(10, 10), mode="RGB", suffix=".png", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    for i in range(count):
        shape = (size[1], size[0]) + ((channels,) if channels else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"img{i:03d}{suffix}")


def test_centre_crop_keeps_the_middle_pixels_exactly(tmp_path):
    columns = np.tile(np.arange(12, dtype=np.uint8) * 20, (6, 1))  # 12 wide, 6 high, each column its value
    Image.fromarray(columns, "L").save(tmp_path / "wide.png")
    gray = read_image(tmp_path / "wide.png", 6, 1)  # shorter side already 6: no resampling
    assert gray.shape == (1, 6, 6) and (gray[0] == columns[:, 3:9]).all()
    rgb = read_image(tmp_path / "wide.png", 6, 3)
    assert rgb.shape == (3, 6, 6) and all((rgb[c] == columns[:, 3:9]).all() for c in range(3))
    small = read_image(tmp_path / "wide.png", 3, 1)  # halved: 6x3, then the middle 3 columns
    assert small.shape == (1, 3, 3) and small.dtype == np.uint8
    assert small[0, 0, 0] < small[0, 0, 1] < small[0, 0, 2]  # the left-to-right ramp survives


def test_every_format_and_mode_reads_at_one_size(tmp_path):
    write_images(tmp_path / "a", 3, (10, 14), "RGB", ".png")
    write_images(tmp_path / "a" / "deeper", 3, (20, 12), "RGBA", ".png", seed=1)
    write_images(tmp_path / "b", 3, (9, 9), "L", ".jpg", seed=2)
    write_images(tmp_path / "b", 3, (16, 16), "RGB", ".webp", seed=3)
    everything = image_paths(tmp_path, "train") + image_paths(tmp_path, "test")
    assert len(everything) == 12 and len(set(everything)) == 12
    for split in ("train", "test"):
        if image_paths(tmp_path, split):
            images, labels, names = read_image_folder(tmp_path, split, 8, 3)
            assert images.shape[1:] == (3, 8, 8) and images.dtype == np.uint8 and (labels == 0).all() and not names


def test_split_is_stable_disjoint_and_about_the_stated_fraction(tmp_path):
    write_images(tmp_path, 400, (4, 4))
    test, train = image_paths(tmp_path, "test"), image_paths(tmp_path, "train")
    assert not set(test) & set(train) and len(test) + len(train) == 400
    assert abs(len(test) / 400 - TEST_FRACTION) < 0.05
    write_images(tmp_path / "more", 50, (4, 4), seed=5)  # adding images moves none of the old ones
    assert set(test) <= set(image_paths(tmp_path, "test"))


def test_a_small_folder_still_has_a_test_image(tmp_path):
    write_images(tmp_path, 3, (4, 4))
    test, train = image_paths(tmp_path, "test"), image_paths(tmp_path, "train")
    assert len(test) == 1 and len(train) == 2 and not set(test) & set(train)


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    write_images(tmp_path / "train", 5, (4, 4))
    write_images(tmp_path / "test", 2, (4, 4), seed=1)
    assert len(image_paths(tmp_path, "train")) == 5 and len(image_paths(tmp_path, "test")) == 2


def test_class_subfolders_are_labels_in_sorted_order(tmp_path):
    for name, count in (("zebra", 30), ("ant", 30), ("moth", 30)):
        write_images(tmp_path / name, count, (4, 4), seed=len(name))
    assert class_names(tmp_path) == ["ant", "moth", "zebra"]
    images, labels, names = read_image_folder(tmp_path, "train", 4, 1, labels_from="subfolders")
    assert names == ["ant", "moth", "zebra"] and set(labels) == {0, 1, 2} and images.shape[1] == 1
    paths = image_paths(tmp_path, "train")
    assert [names[label] for label in labels] == [p.relative_to(tmp_path).parts[0] for p in paths]
    write_images(tmp_path, 1, (4, 4), seed=9)  # an image outside every class folder
    with pytest.raises(ValueError, match="not inside a class subfolder"):
        for split in ("train", "test"):
            read_image_folder(tmp_path, split, 4, 1, labels_from="subfolders")


def test_unreadable_files_are_skipped_and_counted_empty_folders_refused(tmp_path, caplog):
    write_images(tmp_path / "train", 4, (4, 4))
    (tmp_path / "train" / "broken.png").write_text("text, not a PNG")
    (tmp_path / "test").mkdir()
    with caplog.at_level(logging.WARNING):
        images, _, _ = read_image_folder(tmp_path, "train", 4, 3)
    assert len(images) == 4
    assert "broken.png" in caplog.text and "1 of the 5 image files of the train split" in caplog.text
    with pytest.raises(ValueError, match="no PNG, JPG, JPEG, WEBP images for the test split"):
        read_image_folder(tmp_path, "test", 4, 3)
    (tmp_path / "test" / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ValueError, match="none of the 1 image files for the test split"):
        read_image_folder(tmp_path, "test", 4, 3)


def test_folder_is_cached_memory_mapped_and_rebuilt_when_it_changes(tmp_path, monkeypatch, caplog):
    from sde_diffusion.data.datasets import MappedImageDataset
    import torch

    monkeypatch.setenv("SDE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "pictures" / "train", 6, (9, 7))
    write_images(tmp_path / "pictures" / "test", 2, (9, 7), seed=1)
    (tmp_path / "pictures" / "train" / "broken.png").write_text("not a png")
    dataset = load_dataset("folder", "train", root=tmp_path / "pictures", image_size=4, num_channels=3)
    assert isinstance(dataset, MappedImageDataset) and isinstance(dataset.images, np.memmap)
    assert dataset.images.dtype == np.uint8 and dataset.images.shape == (6, 3, 4, 4)  # the broken file skipped
    in_memory, _, _ = read_image_folder(tmp_path / "pictures", "train", 4, 3)
    assert (np.asarray(dataset.images) == in_memory).all()
    batch = dataset.batch(torch.tensor([4, 0, 4]))  # any order, repeats: what BatchStream draws
    assert batch.dtype == torch.float32 and torch.equal(batch[1], torch.from_numpy(in_memory[0]).float() / 255)
    assert torch.equal(batch[0], batch[2]) and torch.equal(dataset.data, torch.from_numpy(in_memory).float() / 255)
    cached = sorted((tmp_path / "cache" / "image_folders").glob("*.npy"))
    assert len(cached) == 2  # images and labels
    with caplog.at_level(logging.INFO):
        load_dataset("folder", "train", root=tmp_path / "pictures", image_size=4, num_channels=3)
    assert "cached the" not in caplog.text  # read from the cache
    write_images(tmp_path / "pictures" / "train" / "new", 1, (9, 7), seed=4)  # the folder changed
    grown = load_dataset("folder", "train", root=tmp_path / "pictures", image_size=4, num_channels=3)
    assert len(grown) == 7 and len(sorted((tmp_path / "cache" / "image_folders").glob("*.npy"))) == 4


def test_npz_data_set_splits_and_keeps_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)  # NHWC
    labels = np.arange(200) % 4
    np.savez(tmp_path / "set.npz", x=images, labels=labels)
    train, test = (load_dataset("npz", split, root=tmp_path / "set.npz", image_size=8) for split in ("train", "test"))
    assert len(train) + len(test) == 200 and train.data.shape[1:] == (3, 8, 8)
    first = int(train.labels[0])
    assert np.allclose(train.data[0].numpy(), images[0].transpose(2, 0, 1) / 255) and first == 0
    np.savez(tmp_path / "mismatch.npz", x=images, labels=labels[:10])
    with pytest.raises(ValueError, match="200 images but 10 labels"):
        load_dataset("npz", "train", root=tmp_path / "mismatch.npz")


def test_train_and_sample_on_a_folder_end_to_end(tmp_path):
    for name in ("cats", "dogs"):
        write_images(tmp_path / "pictures" / name, 24, (12, 10), seed=len(name))
    workdir = tmp_path / "run"
    small = ["--config=configs/vp_folder.py", f"--workdir={workdir}", f"--config.data.root={tmp_path / 'pictures'}",
             "--config.data.image_size=8", "--config.data.labels_from=subfolders", "--config.model.num_classes=2",
             "--config.model.nf=32", "--config.model.ch_mult=(1,1)", "--config.model.num_res_blocks=1",
             "--config.model.attn_resolutions=(4,)", "--config.training.batch_size=8", "--config.training.n_iters=4",
             "--config.training.snapshot_freq=4", "--config.training.snapshot_sampling=False",
             "--config.sampling.num_samples=4", "--config.sampling.steps=4"]
    trained = subprocess.run([sys.executable, "main.py", *small, "--mode=train"], cwd=ROOT, capture_output=True,
                             text=True, timeout=HANG_TIMEOUT_S)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((workdir / "classes.json").read_text()) == ["cats", "dogs"]
    assert "the model is unconditional" not in trained.stderr
    sampled = subprocess.run([sys.executable, "main.py", *small, "--mode=sample", "--config.sampling.labels=dogs"],
                             cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)  # a class by its name
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    written = np.load(json.loads(sampled.stdout.strip().splitlines()[-1])["npz"])
    samples = written["samples"]
    assert samples.shape == (4, 3, 8, 8) and np.isfinite(samples).all() and written["labels"].tolist() == [1] * 4
    unknown = subprocess.run([sys.executable, "main.py", *small, "--mode=sample", "--config.sampling.labels=birds"],
                             cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert unknown.returncode == 1 and unknown.stderr.strip().splitlines()[-1] == (
        "error: config.sampling.labels: unknown class 'birds': the classes are cats, dogs (or their indices)")
    scored = subprocess.run([sys.executable, "main.py", *small, "--mode=likelihood", "--config.eval.bpd_num_images=3",
                             "--config.eval.bpd_rtol=1e-3", "--config.eval.bpd_atol=1e-3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert scored.returncode == 0, scored.stderr[-2000:]
    report = json.loads((workdir / "eval" / "likelihood_4_hutchinson_rtol0.001_atol0.001_3items.json").read_text())
    # dequantized 8-bit data: a bound on -log2 P(k) / D, positive; an untrained network is far from 0
    assert report["metric"] == "bits_per_dim" and report["num"] == 3 and report["mean"] > 1
    assert report["dequantization"].startswith("uniform")
    # offline: no Inception file anywhere, the labelled folder is judged by a classifier of its own
    offline = {**os.environ, "SDE_DIFFUSION_CACHE": str(tmp_path / "empty_cache")}
    evaluated = subprocess.run([sys.executable, "main.py", *small, "--mode=eval", "--config.eval.num_samples=6"],
                               cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S, env=offline)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert report["fd_classifier"] > 0 and report["fd_classifier_floor_samples"] == 6 and "fid" not in report
    wrong = subprocess.run([sys.executable, "main.py", *small, "--mode=train", "--config.model.num_classes=3",
                            f"--workdir={tmp_path / 'other'}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=HANG_TIMEOUT_S)
    assert wrong.returncode == 1 and "must equal the 2 classes" in wrong.stderr.strip().splitlines()[-1]
    # the pictures moved away: the workdir alone samples by class name (its classes.json)
    (tmp_path / "pictures").rename(tmp_path / "moved")
    alone = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", "--mode=sample",
                            "--config.sampling.labels=cats", "--config.sampling.num_samples=2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert np.load(json.loads(alone.stdout.strip().splitlines()[-1])["npz"])["labels"].tolist() == [0, 0]


# -- the cache: checked when opened, rebuilt when damaged -----------------------------------------
def test_an_unlabelled_folder_without_inception_says_how_to_score_it_offline(tmp_path, monkeypatch):
    from sde_diffusion.app.metrics import quality_metric_for
    from sde_diffusion.app.plan import make_plan
    from sde_diffusion.app.workdir_config import config_from_stored
    from configs.vp_folder import get_config

    write_images(tmp_path / "pictures", 12, (8, 8))
    monkeypatch.setenv("SDE_DIFFUSION_CACHE", str(tmp_path / "empty_cache"))
    config = get_config()
    config.data.update(root=str(tmp_path / "pictures"), image_size=8)
    plan = make_plan(config)
    with pytest.raises(FileNotFoundError) as missing:
        quality_metric_for(plan, plan.dataset("test").data)
    assert "Inception weights are needed" in str(missing.value) and "data.labels_from=subfolders" in str(missing.value)
    assert "\n" not in str(missing.value)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")
    gray = read_image(tmp_path / "deep.png", 4, 1)[0, 0]
    assert gray.tolist() == [0, 1, 128, 255]  # mid-gray stays mid-gray (it read 255 before)
    assert read_image(tmp_path / "deep.png", 4, 3)[:, 0, 2].tolist() == [128, 128, 128]
    from sde_diffusion.data.image_folder import _eight_bit  # older Pillows read 16-bit PNGs as mode I

    as_int = _eight_bit(Image.fromarray(values.astype(np.int32), "I"))
    assert as_int.mode == "L" and np.asarray(as_int)[0].tolist() == [0, 1, 128, 255]


def test_every_eight_bit_mode_keeps_its_pixels(tmp_path):
    gray = np.array([[0, 64, 128, 255]] * 4, dtype=np.uint8)
    for mode in ("L", "LA", "P", "RGB", "RGBA", "CMYK"):
        Image.fromarray(gray, "L").convert(mode).save(tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}",
                                                    **({"quality": 100} if mode == "CMYK" else {}))
    for path in tmp_path.iterdir():
        read = read_image(path, 4, 1)[0, 0].astype(int)
        assert np.abs(read - gray[0]).max() <= 3, (path.name, read)


def test_modes_without_a_known_range_are_refused_naming_the_mode(tmp_path):
    from sde_diffusion.data.image_folder import _eight_bit

    with pytest.raises(ValueError, match="image mode F is not supported"):
        _eight_bit(Image.fromarray(np.zeros((2, 2), np.float32)))
    with pytest.raises(ValueError, match="image mode LAB is not supported"):  # PIL cannot make it RGB
        _eight_bit(Image.new("LAB", (2, 2)))
    with pytest.raises(ValueError, match="outside 16-bit gray's"):
        _eight_bit(Image.fromarray(np.full((2, 2), 70000, np.int32), "I"))


# -- files that do not read are said, one line each ------------------------------------------------
def test_broken_symlinks_and_odd_names_are_warned_on_one_line(tmp_path, caplog):
    write_images(tmp_path / "train", 3, (4, 4))
    (tmp_path / "test").mkdir()
    write_images(tmp_path / "test", 1, (4, 4))
    (tmp_path / "train" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "train" / "loop.png").symlink_to(tmp_path / "train" / "loop.png")
    (tmp_path / "train" / "two\nlines.png").write_text("not a png")
    with caplog.at_level(logging.WARNING):
        images, _, _ = read_image_folder(tmp_path, "train", 4, 3)
    assert len(images) == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert all("\n" not in w for w in warnings), warnings
    assert any("dangling.png" in w for w in warnings) and any("loop.png" in w for w in warnings)
    assert any("two\\nlines.png" in w for w in warnings)
    assert "3 of the 6 image files of the train split" in caplog.text


# -- .npz inputs: headers checked before anything is read --------------------------------------------
def write_npz_claiming(path: Path, shape, dtype="<f4", data: bytes = b"") -> None:
    """An .npz whose x.npy header claims `shape` but holds only `data`: what a crafted file is."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + data)


def test_npz_claiming_terabytes_is_refused_from_its_header(tmp_path):
    from sde_diffusion.files.image_files import read_array

    write_npz_claiming(tmp_path / "huge.npz", (1_000_000, 3, 512, 512))
    assert (tmp_path / "huge.npz").stat().st_size < 400
    with pytest.raises(ValueError, match=r"huge.npz: array 'x' claims shape \(1000000, 3, 512, 512\) float32 "
                                         r"\(2.86 TiB\) but holds 128 bytes"):
        read_array(tmp_path / "huge.npz", "images")
    with pytest.raises(ValueError, match="claims shape"):
        load_dataset("npz", "train", root=tmp_path / "huge.npz", image_size=8)


def test_npz_over_the_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    from sde_diffusion.files.image_files import BUDGET_ENV, npz_budget_bytes, read_array

    assert npz_budget_bytes() == 4 * 2 ** 30  # 6 GiB of float32 zeros (a few MiB zipped) is over it
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((64, 3, 64, 64), np.float32))  # 3 MiB, a few KiB zipped
    assert read_array(tmp_path / "zeros.npz", "images").shape == (64, 3, 64, 64)
    monkeypatch.setenv(BUDGET_ENV, "0.001")
    with pytest.raises(ValueError, match=r"zeros.npz: array 'x' of shape \(64, 3, 64, 64\) float32 is 3 MiB as "
                                         r"float32, over the 1.02 MiB budget"):
        read_array(tmp_path / "zeros.npz", "images")


def test_npz_of_text_or_a_bare_npy_is_one_error(tmp_path):
    from sde_diffusion.files.image_files import read_array

    np.savez(tmp_path / "text.npz", x=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="must hold numbers"):
        read_array(tmp_path / "text.npz", "images")
    np.save(tmp_path / "bare.npy", np.zeros((2, 4, 4)))
    (tmp_path / "bare.npy").rename(tmp_path / "bare.npz")
    with pytest.raises(ValueError, match="bare.npz cannot be read as npz"):
        read_array(tmp_path / "bare.npz", "images")


def test_npz_images_that_are_not_square_are_refused_not_stretched(tmp_path):
    np.savez(tmp_path / "strips.npz", x=np.zeros((20, 3, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"must be square: shape \(20, 3, 16, 3\) reads as 3 channels of 16x3"):
        load_dataset("npz", "train", root=tmp_path / "strips.npz", image_size=16)


@pytest.mark.parametrize("labels, message", [
    (np.arange(200) - 1, "must be integers >= 0"),
    (np.arange(200) / 3, "must be integers >= 0"),
    (np.zeros((200, 2), np.int64), "one index per image"),
])
def test_npz_labels_must_be_class_indices(tmp_path, labels, message):
    np.savez(tmp_path / "set.npz", x=np.zeros((200, 8, 8), np.uint8), labels=labels)
    with pytest.raises(ValueError, match=message):
        load_dataset("npz", "train", root=tmp_path / "set.npz", image_size=8)


def test_npz_data_sets_carry_a_fingerprint_of_their_contents(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=images)
    np.savez_compressed(tmp_path / "b.npz", x=images)  # other bytes, the same data
    images[3, 0, 0] ^= 1
    np.savez(tmp_path / "c.npz", x=images)
    a, b, c = (load_dataset("npz", "train", root=tmp_path / f"{n}.npz").fingerprint for n in "abc")
    assert a == b and a != c


def test_a_labelled_folder_under_an_unconditional_model_says_so(tmp_path):
    """labels_from=subfolders with model.num_classes=0: the classes serve eval's classifier, the
    model is unconditional, and the run says so instead of leaving it to be guessed."""
    for name in ("cats", "dogs"):
        write_images(tmp_path / "pictures" / name, 12, (12, 10), seed=len(name))
    argv = [sys.executable, "main.py", "--config=configs/vp_folder.py", f"--workdir={tmp_path / 'run'}", "--mode=train",
            f"--config.data.root={tmp_path / 'pictures'}", "--config.data.image_size=8",
            "--config.data.labels_from=subfolders", "--config.model.nf=32", "--config.model.ch_mult=(1,1)",
            "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=(4,)",
            "--config.training.batch_size=8", "--config.training.n_iters=1", "--config.training.snapshot_sampling=False"]
    trained = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert ("the folder's 2 classes are saved for eval's classifier; the model is unconditional "
            "(model.num_classes=0; set it to 2 for a class-conditional one)") in trained.stderr
    assert json.loads((tmp_path / "run" / "classes.json").read_text()) == ["cats", "dogs"]
