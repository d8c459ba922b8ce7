"""What the user's own data files hold, read before anything is trained on them: the class count
of an image folder with class subfolders, or of an .npz file's `labels` (`DatasetFacts.read_classes`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def folder_classes(data) -> Optional[int]:
    """The classes of an image folder (`data.root`) read with labels (its class subfolders), else None."""
    from .image_folder import class_names

    if data.get("labels_from", "") != "subfolders" or not data.root or not Path(data.root).expanduser().is_dir():
        return None
    return len(class_names(data.root)) or None


def folder_class_names(data) -> Optional[list]:
    """An image folder's class names (its subfolders, in label order) when read with labels, else None."""
    from .image_folder import class_names

    return class_names(data.root) if data.get("labels_from", "") == "subfolders" else None


def npz_classes(data) -> Optional[int]:
    """The classes of an .npz data set's `labels` (largest label + 1), else None."""
    from ..files.image_files import check_npz_images, npz_header, read_npz_labels

    path = Path(data.root).expanduser() if data.root else None
    if path is None or not path.is_file():
        return None
    count = check_npz_images(path, "data.root")[0]
    if npz_header(path, "labels", "labels") is None:
        return None
    labels = read_npz_labels(path, count)
    return int(labels.max()) + 1 if labels.size else None


def check_npz_root(path: Path, field: str) -> None:
    """An .npz file's header: its size and layout, before the workdir is touched."""
    from ..files.image_files import check_npz_images

    check_npz_images(path, field)
