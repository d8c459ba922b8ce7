import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from sde_diffusion.data import dataset_files, datasets
from sde_diffusion.data.dataset_formats import read_idx
from sde_diffusion.data.datasets import DATASETS, TOY_DATA, BatchStream, load_dataset
from sde_diffusion.files.image_scaling import from_model_space, quantize, random_flip, to_model_space, uniform_dequantize
from sde_diffusion.data.toy_data import toy_mixture


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any test that reaches the download path without arranging it fails."""
    def fail(name, root):
        raise AssertionError(f"attempted to download {name} to {root}")
    monkeypatch.setattr(dataset_files, "fetch_with_torchvision", fail)


# -- file fixtures ---------------------------------------------------------------------------------
def write_idx(path, array, type_code=0x08, big_endian_dtype=">u1"):
    content = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    content += np.asarray(array).astype(big_endian_dtype).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(content)


def make_mnist(directory, gz=False, counts=(5, 3), seed=0):
    """Tiny MNIST in IDX files; returns {split: (images uint8 [N, 28, 28], labels [N])}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in zip(("train", "test"), counts):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        image_name, label_name = datasets.MNIST_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(directory / (image_name + suffix), images)
        write_idx(directory / (label_name + suffix), labels)
        arrays[split] = (images, labels)
    return arrays


def make_cifar(directory, per_batch=2, seed=0, protocol=pickle.HIGHEST_PROTOCOL):
    """Tiny CIFAR-10 batches; returns {file name: (data uint8 [N, 3072], labels list)}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in datasets.CIFAR10_FILES["train"] + datasets.CIFAR10_FILES["test"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(directory / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=protocol)
        batches[name] = (data, labels)
    return batches


def unit(images_uint8):
    return torch.from_numpy(images_uint8).float() / 255


# -- MNIST -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz, layout", [(False, "."), (True, "."), (True, "MNIST/raw"), (False, "MNIST/raw")])
def test_mnist_exact_pixels_labels_and_splits(tmp_path, gz, layout):
    arrays = make_mnist(tmp_path / layout, gz=gz)
    for split, (images, labels) in arrays.items():
        dataset = load_dataset("mnist", split, root=tmp_path)
        assert dataset.data.dtype == torch.float32 and dataset.labels.dtype == torch.int64
        assert dataset.data.shape == (len(labels), 1, 28, 28)
        assert torch.equal(dataset.data, unit(images)[:, None])
        assert torch.equal(dataset.labels, torch.from_numpy(labels.astype(np.int64)))
        image, label = dataset[1]
        assert torch.equal(image, dataset.data[1]) and label == int(labels[1])
        assert len(dataset) == len(labels)


def test_mnist_pads_to_32_and_resizes(tmp_path):
    images, _ = make_mnist(tmp_path)["train"]
    padded = load_dataset("mnist", "train", root=tmp_path, image_size=32).data
    assert padded.shape == (5, 1, 32, 32)
    assert torch.equal(padded[:, 0, 2:30, 2:30], unit(images))
    border = padded.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.abs().sum() == 0
    resized = load_dataset("mnist", "train", root=tmp_path, image_size=14).data
    assert resized.shape == (5, 1, 14, 14) and resized.min() >= 0 and resized.max() <= 1


@pytest.mark.parametrize("layout", [".", "FashionMNIST/raw"])
def test_fashion_mnist_reads_the_same_files(tmp_path, layout):
    arrays = make_mnist(tmp_path / layout, gz=layout == ".", counts=(300, 60), seed=3)
    for split, (images, labels) in arrays.items():
        dataset = load_dataset("fashion_mnist", split, root=tmp_path)
        assert torch.equal(dataset.data, unit(images)[:, None])
        assert torch.equal(dataset.labels, torch.from_numpy(labels.astype(np.int64)))
    padded = load_dataset("fashion_mnist", "test", root=tmp_path, image_size=32).data
    assert padded.shape == (60, 1, 32, 32) and torch.equal(padded[:, 0, 2:30, 2:30], unit(arrays["test"][0]))


def test_fashion_mnist_defaults_to_the_system_package_folder(tmp_path, monkeypatch):
    arrays = make_mnist(tmp_path / "system", counts=(4, 2))
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_ROOT", tmp_path / "system")
    assert torch.equal(load_dataset("fashion_mnist", "test").data, unit(arrays["test"][0])[:, None])
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_ROOT", tmp_path / "absent")
    with pytest.raises(ValueError, match="data.root must be set"):
        load_dataset("fashion_mnist", "test")


def test_read_idx_types_and_errors(tmp_path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 100000
    write_idx(tmp_path / "ints", values, type_code=0x0C, big_endian_dtype=">i4")
    assert np.array_equal(read_idx(tmp_path / "ints"), values)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\0" * 9)
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short")


def test_missing_files_name_the_path_and_do_not_download(tmp_path):
    for name in ("mnist", "cifar10"):
        with pytest.raises(FileNotFoundError) as error:
            load_dataset(name, "train", root=tmp_path / "nowhere")
        message = str(error.value)
        assert str((tmp_path / "nowhere").resolve()) in message and "data.download=True" in message
        assert "\n" not in message
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", "test", root=tmp_path)
    assert not os.listdir(tmp_path)


def test_root_must_be_set():
    for name in ("mnist", "cifar10"):
        with pytest.raises(ValueError, match="data.root"):
            load_dataset(name, "train")


def test_download_is_opt_in_and_then_read_with_our_parser(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, root):
        calls.append((name, root))
        make_mnist(root / "MNIST" / "raw", gz=True)

    monkeypatch.setattr(dataset_files, "fetch_with_torchvision", fake_download)
    dataset = load_dataset("mnist", "test", root=tmp_path, download=True)
    assert calls == [("mnist", tmp_path.resolve())] and dataset.data.shape == (3, 1, 28, 28)
    load_dataset("mnist", "train", root=tmp_path, download=True)  # files present: no new fetch
    assert len(calls) == 1


# -- CIFAR-10 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout, protocol", [("cifar-10-batches-py", 2), (".", pickle.HIGHEST_PROTOCOL)])
def test_cifar10_exact_pixels_labels_and_splits(tmp_path, layout, protocol):
    batches = make_cifar(tmp_path / layout, protocol=protocol)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    expected = np.concatenate([batches[n][0] for n in train_names]).reshape(-1, 3, 32, 32)
    assert train.data.shape == (10, 3, 32, 32) and test.data.shape == (2, 3, 32, 32)
    assert torch.equal(train.data, unit(expected))
    assert train.labels.tolist() == sum((batches[n][1] for n in train_names), [])
    assert torch.equal(test.data, unit(batches["test_batch"][0].reshape(-1, 3, 32, 32)))
    assert test.labels.tolist() == batches["test_batch"][1]
    # row-major planes: the first 1024 values of a row are the red channel
    assert torch.equal(test.data[0, 0].flatten(), unit(batches["test_batch"][0][0, :1024]))
    assert load_dataset("cifar10", "test", root=tmp_path, image_size=16).data.shape == (2, 3, 16, 16)


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    make_cifar(tmp_path)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Exploit(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", "test", root=tmp_path)


# -- digits ----------------------------------------------------------------------------------------
def test_digits_split_is_stratified_and_disjoint():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert train.data.shape[1:] == (1, 8, 8) and 0.1 < len(test) / 1797 < 0.2
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))
    for data in (train.data, test.data):
        assert data.min() >= 0 and data.max() <= 1
        assert torch.equal(data * 16, torch.round(data * 16))  # the 17 grey levels, exactly
    # disjoint and together the whole set: compare the multisets of images
    from sklearn.datasets import load_digits
    full = sorted(map(bytes, (load_digits().images.astype(np.float32) / 16).reshape(1797, -1)))
    ours = sorted(map(bytes, torch.cat([train.data, test.data]).reshape(1797, -1).numpy()))
    assert ours == full
    big = load_dataset("digits", "test", image_size=16).data
    assert big.shape == (len(test), 1, 16, 16) and big.min() >= 0 and big.max() <= 1
    with pytest.raises(ValueError, match="8 or 16"):
        load_dataset("digits", "train", image_size=32)


# -- toy data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TOY_DATA))
def test_toy_data_deterministic_shapes_and_scale(name):
    train = load_dataset(name, "train", num_points=5000, seed=3)
    assert train.data.shape == (5000, 2) and train.data.dtype == torch.float32
    if name != "gmm":  # gmm is labelled by component (test below); the other sets have no classes
        assert torch.equal(train.labels, torch.zeros(5000, dtype=torch.int64))
    assert torch.equal(train.data, load_dataset(name, "train", num_points=5000, seed=3).data)
    assert not torch.equal(train.data, load_dataset(name, "train", num_points=5000, seed=4).data)
    test = load_dataset(name, "test", num_points=5000, seed=3)
    assert test.data.shape == (1000, 2) and not torch.equal(test.data, train.data[:1000])
    assert train.data.abs().max() < 4 and 0.5 < train.data.std() < 2.5


def test_gmm_data_follow_the_exposed_mixture():
    mixture = toy_mixture()
    data = load_dataset("gmm", "train", num_points=20000).data.double()
    mixture_mean = mixture.weights @ mixture.means
    assert torch.allclose(data.mean(0), mixture_mean, atol=0.06)
    errors = mixture.sample_errors(data)
    assert errors["weight"] < 0.01 and errors["mean"] < 0.1 and errors["std"] < 0.05


def test_gmm_labels_are_the_components():
    """Each point's label is the component it was drawn from: the components are 7 stds
    apart, so the exact Bayes classifier agrees on all but a handful, and the label
    frequencies are the mixture weights (20000 points: standard error <= 0.0035)."""
    mixture = toy_mixture()
    train = load_dataset("gmm", "train", num_points=20000, seed=0)
    assert (mixture.responsibilities(train.data.double()).argmax(1) == train.labels).double().mean() > 0.999
    frequencies = torch.bincount(train.labels, minlength=8).double() / 20000
    assert (frequencies - mixture.weights).abs().max() < 4 * 0.0035


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="moons") as error:
        load_dataset("imagenet", "train")
    assert all(name in str(error.value) for name in ("mnist", "cifar10", "digits", "gmm"))
    with pytest.raises(ValueError, match="split"):
        load_dataset("moons", "validation")
    assert {"moons", "swiss_roll", "checkerboard", "rings", "gmm", "digits", "mnist", "cifar10"} <= set(DATASETS)


# -- scaling and augmentation ----------------------------------------------------------------------
def grid(levels=256):
    return torch.arange(levels, dtype=torch.float32) / (levels - 1)


def test_model_space_round_trip():
    x = grid().reshape(1, 1, 16, 16)
    assert torch.equal(to_model_space(x, centered=False), x)
    centered = to_model_space(x, centered=True)
    assert centered.min() == -1 and centered.max() == 1
    back = from_model_space(centered, centered=True)
    assert torch.allclose(back, x, atol=1e-7) and torch.equal(quantize(back), x)
    assert torch.equal(from_model_space(torch.tensor([-1.5, 0.0, 1.5]), centered=True), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("levels", [256, 32])
def test_dequantization_stays_in_its_bin_and_round_trips(levels):
    x = grid(levels).repeat(2000)
    generator = torch.Generator().manual_seed(0)
    y = uniform_dequantize(x, generator, levels=levels)
    k = torch.round(x * (levels - 1))
    assert (y >= k / levels).all() and (y < (k + 1) / levels).all()
    assert torch.equal(quantize(y, levels), x)
    # uniform within the bin: the offset y * levels - k has mean 1/2 and variance 1/12
    offset = (y.double() * levels - k)
    assert abs(offset.mean() - 0.5) < 0.01 and abs(offset.var() - 1 / 12) < 0.005


def test_dequantization_handles_noise_that_rounds_to_the_upper_edge(monkeypatch):
    x = grid()
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full(x.shape, 1 - 2.0 ** -24))
    y = uniform_dequantize(x)
    assert (y < (torch.arange(256) + 1) / 256).all() and torch.equal(quantize(y), x)


def test_random_flip_mirrors_about_half():
    x = torch.rand(4000, 2, 3, 5, generator=torch.Generator().manual_seed(0))
    flipped = random_flip(x, torch.Generator().manual_seed(1))
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()  # every image is either untouched or its exact mirror
    assert abs(mirrored.float().mean() - 0.5) < 0.04
    assert torch.equal(random_flip(x, torch.Generator().manual_seed(1)), flipped)


# -- batches ---------------------------------------------------------------------------------------
def take(stream, n):
    return [next(stream) for _ in range(n)]


def test_batch_stream_epochs_are_permutations():
    stream = BatchStream(10, 3, seed=0)
    assert stream.batches_per_epoch == 3
    epochs = [torch.cat(take(stream, 3)) for _ in range(3)]
    for epoch in epochs:
        assert len(set(epoch.tolist())) == 9 and epoch.max() < 10
    assert not torch.equal(epochs[0], epochs[1])

    stream = BatchStream(10, 3, seed=0, drop_last=False)
    batches = take(stream, 4)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert torch.equal(torch.cat(take(BatchStream(10, 5, shuffle=False), 2)), torch.arange(10))
    assert not torch.equal(torch.cat(take(BatchStream(10, 5, seed=1), 2)), torch.cat(take(BatchStream(10, 5, seed=0), 2)))


@pytest.mark.parametrize("drop_last", [True, False])
def test_batch_stream_resumes_exactly(drop_last):
    stream = BatchStream(11, 4, seed=7, drop_last=drop_last)
    take(stream, 5)
    state = stream.state_dict()
    expected = take(stream, 12)
    resumed = BatchStream(11, 4, seed=7, drop_last=drop_last)
    resumed.load_state_dict(dict(state))
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, 12), expected))
    assert set(state) == {"epoch", "position"}


def test_a_saved_position_past_the_data_says_the_data_changed():
    stream = BatchStream(20, 4)
    with pytest.raises(ValueError, match=r"the saved data position \(epoch 0, sample 40\) lies outside the 20 "
                                         r"samples of the training data: the data changed since it was saved"):
        stream.load_state_dict({"epoch": 0, "position": 40})


def test_batch_stream_rejects_impossible_batches():
    with pytest.raises(ValueError, match="drop_last"):
        BatchStream(5, 8)
    assert len(next(BatchStream(5, 8, drop_last=False))) == 5
