"""Where each dataset's files are: the search order, the download, and the error that names what is missing.

:func:`find` looks in this order and, if every place fails, raises :class:`DataNotFoundError` naming each
file it looked for and the command that gets it:

1. the data folder :func:`data_root` (``$DPBOOK_DATA``, default ``~/.cache/dpbook``), in torchvision's layout;
2. system copies: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` in
   ``dpbook.data.SYSTEM_FASHION_MNIST`` (``/usr/share/datasets/fashion-mnist/``, the original idx ``.gz`` files).

:func:`fetch` (``python -m dpbook fetch NAME``) downloads with torchvision into the data folder;
:func:`dpbook.data.load` calls it only when asked with ``download=True``. Tests and CI never download.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import checks
from .catalog import check_name, check_split

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: The datasets stored as idx files, and their folder in torchvision's layout.
IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
#: The datasets read from files (digits comes with scikit-learn).
FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "tinyimagenet")
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the places :func:`find` searches."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$DPBOOK_DATA``, else ``~/.cache/dpbook``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("DPBOOK_DATA", "~/.cache/dpbook")).expanduser()


def _data_root_as_written(root: str | os.PathLike | None) -> str:
    """The data folder as the reader wrote it (no home folder or machine-specific prefix)."""
    if root is not None:
        return str(root)
    return "$DPBOOK_DATA" if "DPBOOK_DATA" in os.environ else "~/.cache/dpbook"


def _system_fashion_mnist() -> Path:
    # Read from the package at call time, so that setting dpbook.data.SYSTEM_FASHION_MNIST takes effect.
    from .. import data

    return data.SYSTEM_FASHION_MNIST


def candidates(name: str, split: str, root: Path) -> list[list[Path]]:
    """Alternative sets of files that each hold ``split`` of ``name``, in search order."""
    checks.one_of(name, FILE_DATASETS, "name", "candidates()")
    if name in IDX_FOLDERS:
        sets = []
        folders = [root / IDX_FOLDERS[name] / "raw"]
        if name == "fashion-mnist":
            folders.append(_system_fashion_mnist())
        for folder in folders:
            for ext in ("", ".gz"):
                sets.append([folder / (f + ext) for f in IDX_FILES[split]])
        return sets
    if name == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return [[root / "cifar-10-batches-py" / n for n in names]]
    if name == "cifar100":
        return [[root / "cifar-100-python" / split]]
    if name == "svhn":
        return [[root / "svhn" / f"{split}_32x32.mat"]]
    return [[root / "tiny-imagenet-200" / "wnids.txt"], [root / "wnids.txt"]]


def fix_command(name: str) -> str:
    """The command that puts dataset ``name`` where :func:`find` looks."""
    if name == "fashion-mnist":
        return ("apt-get install -y dataset-fashion-mnist   (Debian/Ubuntu, offline-friendly)\n"
                "  or: python -m dpbook fetch fashion-mnist")
    if name == "tinyimagenet":
        return (f"download {TINY_IMAGENET_URL} and unzip it into $DPBOOK_DATA "
                "(or pass root= the folder that holds wnids.txt)")
    return f"python -m dpbook fetch {name}   (downloads with torchvision into $DPBOOK_DATA)"


def find(name: str, split: str = "train", *, root: str | os.PathLike | None = None) -> list[Path]:
    """The files that hold ``split`` of dataset ``name``; raises :class:`DataNotFoundError` if absent."""
    check_name(name, "name", "find()")
    if name == "digits":
        return []
    split = check_split(name, split, f"find({name!r})")
    sets = candidates(name, split, data_root(root))
    for files in sets:
        if all(f.exists() for f in files):
            return files
    looked = "\n".join("  " + ", ".join(str(f) for f in files) for files in sets)
    raise DataNotFoundError(
        f"{name} ({split}) is not on this machine. Looked for:\n{looked}\nTo get it: {fix_command(name)}"
    )


def locate(name: str, *, root: str | os.PathLike | None = None) -> str:
    """A one-line answer to 'where does ``name`` come from here?', for :func:`dpbook.describe_run`.

    A folder inside the data folder is shown as the reader wrote the data folder (``$DPBOOK_DATA/MNIST/raw``,
    ``~/.cache/dpbook/MNIST/raw``), so the line reads the same on every machine.
    """
    if name == "digits":
        return "bundled with scikit-learn"
    try:
        folder = find(name, "train", root=root)[0].parent
    except DataNotFoundError:
        return "MISSING; get it with: " + fix_command(name).splitlines()[0]
    base = data_root(root)
    if folder.is_relative_to(base):
        return f"found in {Path(_data_root_as_written(root)) / folder.relative_to(base)}"
    if folder == Path(_system_fashion_mnist()):
        return "from the Debian package dataset-fashion-mnist"
    return f"found in {folder.name}/, outside the data folder"


def fetch(name: str, *, root: str | os.PathLike | None = None) -> Path:
    """Download ``name`` with torchvision into the data folder (needs network access). Never called by tests."""
    import torchvision.datasets as tvd

    check_name(name, "name", "fetch()")
    root = data_root(root)
    root.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        return root
    if name == "tinyimagenet":
        raise DataNotFoundError("torchvision has no Tiny ImageNet loader: " + fix_command(name))
    if name == "svhn":
        for split in ("train", "test", "extra"):
            tvd.SVHN(root / "svhn", split=split, download=True)
        return root / "svhn"
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[name]
    for train in (True, False):
        cls(root, train=train, download=True)
    return root
