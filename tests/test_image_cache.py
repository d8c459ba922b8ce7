"""The image folder's uint8 cache (`image_cache`, `image_folder.cached_image_folder`): checked when
opened and rebuilt with one warning when damaged, written with plain writes (a full disk is one
error, nothing left), and its temporaries removed once their writer is gone."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG_TIMEOUT_S
from sde_diffusion.data.datasets import load_dataset
from test_image_folder import write_images

def _folder_with_cache(tmp_path, monkeypatch, count=6):
    monkeypatch.setenv("SDE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "pictures" / "train", count, (9, 7))
    write_images(tmp_path / "pictures" / "test", 2, (9, 7), seed=1)
    dataset = load_dataset("folder", "train", root=tmp_path / "pictures", image_size=4, num_channels=3)
    (images_path,) = [p for p in (tmp_path / "cache" / "image_folders").glob("*.npy") if ".labels" not in p.name]
    return dataset, images_path


def _damage_zero_data(path: Path) -> None:
    """What the issue did: the data bytes zeroed, the .npy header kept."""
    content = bytearray(path.read_bytes())
    header = 10 + int.from_bytes(content[8:10], "little")
    content[header:] = bytes(len(content) - header)
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("damage", ["zeroed data", "truncated", "labels overwritten", "sums missing"])
def test_a_damaged_cache_is_rebuilt_with_one_warning_naming_it(tmp_path, monkeypatch, caplog, damage):
    dataset, images_path = _folder_with_cache(tmp_path, monkeypatch)
    good = np.array(dataset.images)
    labels_path = images_path.with_name(images_path.name.replace(".npy", ".labels.npy"))
    if damage == "zeroed data":
        _damage_zero_data(images_path)
    elif damage == "truncated":
        images_path.write_bytes(images_path.read_bytes()[:-10])
    elif damage == "labels overwritten":
        labels_path.write_bytes(labels_path.read_bytes()[:-8] + np.int64(3).tobytes())
    else:
        images_path.with_name(images_path.name.replace(".npy", ".sums.json")).unlink()
    with caplog.at_level(logging.WARNING):
        again = load_dataset("folder", "train", root=tmp_path / "pictures", image_size=4, num_channels=3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rebuilding the image cache" in warnings[0] and str(images_path) in warnings[0]
    assert (np.array(again.images) == good).all() and again.fingerprint == dataset.fingerprint
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # rebuilt once: read quietly from then on
        load_dataset("folder", "train", root=tmp_path / "pictures", image_size=4, num_channels=3)
    assert not caplog.records


def test_the_sampled_check_finds_one_damaged_chunk_the_full_check_always(tmp_path, monkeypatch):
    from sde_diffusion.data import image_cache

    monkeypatch.setattr(image_cache, "CHUNK_BYTES", 64)  # 48-byte images: many chunks
    dataset, images_path = _folder_with_cache(tmp_path, monkeypatch, count=60)
    content = bytearray(images_path.read_bytes())
    content[image_cache.HEADER_BYTES + 64 * 20 + 5] ^= 0xFF  # one byte of chunk 20 of ~45
    images_path.write_bytes(bytes(content))
    with pytest.raises(image_cache.CacheCheckError, match="do not match their checksum"):
        image_cache.open_cache(images_path, full=True)
    monkeypatch.setenv(image_cache.VERIFY_ENV, "full")
    with pytest.raises(image_cache.CacheCheckError):
        image_cache.open_cache(images_path)
    monkeypatch.delenv(image_cache.VERIFY_ENV)
    found = 0
    for _ in range(40):  # 8 of ~43 inner chunks a time: found about every fifth open
        try:
            image_cache.open_cache(images_path)
        except image_cache.CacheCheckError:
            found += 1
    assert 0 < found < 40


def test_stale_cache_temporaries_are_removed_live_ones_kept(tmp_path, monkeypatch, caplog):
    import fcntl
    import os

    dataset, images_path = _folder_with_cache(tmp_path, monkeypatch)
    folder = images_path.parent
    stale = folder / f".{images_path.name}.abc123.tmp"  # what a SIGKILLed build leaves
    stale.write_bytes(b"\x93NUMPY half")
    live = folder / ".other.npy.def456.tmp"
    live.write_bytes(b"being written")
    handle = os.open(live, os.O_RDONLY)
    fcntl.flock(handle, fcntl.LOCK_EX)  # another process building its cache now
    try:
        with caplog.at_level(logging.WARNING):
            load_dataset("folder", "train", root=tmp_path / "pictures", image_size=4, num_channels=3)
    finally:
        os.close(handle)
    assert not stale.exists() and live.exists()
    assert f"removed {stale}, left by an image cache build that was cut short" in caplog.text


def test_a_full_disk_is_one_error_naming_the_cache_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    from sde_diffusion.files.output_files import WriteError

    monkeypatch.setenv("SDE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "pictures", 20, (9, 7))

    class FullDisk:
        """A file whose writes fail with ENOSPC after 300 bytes, as a full disk's do."""

        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 300:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

    from sde_diffusion.data import image_cache

    opened = image_cache._open_locked_temporary

    def full_disk(path):
        file, name = opened(path)
        return FullDisk(file), name

    monkeypatch.setattr(image_cache, "_open_locked_temporary", full_disk)
    with pytest.raises(WriteError, match=r"^no space left on device writing .*image_folders/[0-9a-f]+\.npy$"):
        load_dataset("folder", "train", root=tmp_path / "pictures", image_size=4, num_channels=3)
    assert not list((tmp_path / "cache" / "image_folders").iterdir())  # the real disk: test_bad_input_data


# -- what a pixel is: every mode's whole range ---------------------------------------------------

def test_a_build_killed_by_sigkill_leaves_a_temporary_the_next_start_removes(tmp_path):
    """A real writer: its temporary file is kept while it runs and removed once SIGKILL ended it
    (the kernel drops its lock with the process)."""
    import signal
    from sde_diffusion.data.image_cache import remove_stale_temporaries

    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from sde_diffusion.data import image_cache; "
        f"file, name = image_cache._open_locked_temporary(Path({str(tmp_path / 'key.npy')!r})); "
        "file.write(b'half an image'); file.flush(); print(name, flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    try:
        temporary = Path(writer.stdout.readline().strip())
        assert temporary.name.startswith(".key.npy.") and temporary.is_file()
        assert remove_stale_temporaries(tmp_path) == [] and temporary.is_file()  # still being written
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=HANG_TIMEOUT_S)
    assert remove_stale_temporaries(tmp_path) == [temporary] and not temporary.exists()
