"""Where a data set's files are: the first of several folders that holds all of them, or, only
when asked (`download=True`), fetched with torchvision, which is imported for nothing else. A
failed download removes what it created and says what it fetched from where."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def _find_files(directories: Sequence[Path], names: Sequence[str],
                suffixes: Sequence[str]) -> Optional[list]:
    """The paths of all `names` (each with the first suffix that exists) in the first
    directory that holds all of them, or None."""
    for directory in directories:
        found = [next((directory / (name + s) for s in suffixes
                       if (directory / (name + s)).is_file()), None) for name in names]
        if all(found):
            return found
    return None


def fetch_with_torchvision(name: str, root: Path) -> None:
    """Fetch a data set's files into `root` with torchvision, imported only here. A failed
    download (offline, a mirror down) removes what it created under `root`, `root` included,
    and says what it fetched from where."""
    try:
        import torchvision.datasets
    except ImportError as error:
        raise ImportError(f"data.download=True needs torchvision to fetch {name}") from error
    dataset_class = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
                     "cifar10": torchvision.datasets.CIFAR10}[name]
    source = " or ".join(getattr(dataset_class, "mirrors", None) or [dataset_class.url])
    existed = _existing_paths(root)
    try:
        dataset_class(str(root), download=True)
    except Exception as error:  # noqa: BLE001 - urllib, HTTP, checksum and archive errors alike
        _remove_new_paths(root, existed)
        reason = " ".join(str(error).split()) or type(error).__name__
        raise OSError(f"could not download {name} from {source} into {root}: {reason}") from None


def _existing_paths(root: Path) -> Optional[set]:
    """Every path under `root` (None when `root` does not exist)."""
    return {root, *root.rglob("*")} if root.exists() else None


def _remove_new_paths(root: Path, existed: Optional[set]) -> None:
    """Remove the files and folders under `root` that are not in `existed`, deepest first."""
    import shutil

    if existed is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for path in sorted(set(root.rglob("*")) - existed, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def locate_files(name: str, root, download: bool, subdirectories: Sequence[str],
                 names: Sequence[str], suffixes: Sequence[str], url: str) -> list:
    """The paths of `names` (with one of `suffixes`) in the first of root/`subdirectories` that
    holds them all, fetched first when missing and `download`; FileNotFoundError naming the
    files, the folders and `url` otherwise."""
    if root is None:
        raise ValueError(f"{name} is read from files: data.root must be set to their directory")
    root = Path(root).expanduser().resolve()
    directories = [root / sub for sub in subdirectories]
    files = _find_files(directories, names, suffixes)
    if files is None and download:
        fetch_with_torchvision(name, root)
        files = _find_files(directories, names, suffixes)
    if files is None:
        expected = ", ".join(n + ("[.gz]" if ".gz" in suffixes else "") for n in names)
        where = " or ".join(str(d) for d in directories)
        raise FileNotFoundError(f"{name} files not found: expected {expected} in {where}; "
                                f"set data.download=True or get them from {url}")
    return files
