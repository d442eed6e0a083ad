"""Datasets for every tier of the book, loaded from files on disk into tensors.

:func:`load` looks for a dataset in this order and, if every place fails, raises
:class:`DataNotFoundError` naming each file it looked for and the command that gets it:

1. ``$DPBOOK_DATA`` (default ``~/.cache/dpbook``), in torchvision's folder layout;
2. system copies: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist/``, the original idx ``.gz`` files);
3. a torchvision download into ``$DPBOOK_DATA``, only when the caller passes ``download=True``
   (or runs ``python -m dpbook fetch NAME``). Tests and CI never download.

Every dataset comes back as an :class:`ArrayDataset`: images ``x`` of shape ``(n, C, H, W)``, float32,
scaled as asked, and integer labels ``y`` of shape ``(n,)``.

=============  =======================  ==========  =============================================
name           examples (train / test)  image       files
=============  =======================  ==========  =============================================
digits         1,438 / 359 (our split)  1x8x8       bundled with scikit-learn
mnist          60,000 / 10,000          1x28x28     ``MNIST/raw/*-idx?-ubyte[.gz]``
fashion-mnist  60,000 / 10,000          1x28x28     ``FashionMNIST/raw/*-idx?-ubyte[.gz]``
cifar10        50,000 / 10,000          3x32x32     ``cifar-10-batches-py/{data_batch_1..5,test_batch}``
cifar100       50,000 / 10,000          3x32x32     ``cifar-100-python/{train,test}``
svhn           73,257 / 26,032 (+extra) 3x32x32     ``svhn/{train,test,extra}_32x32.mat``
tinyimagenet   500 / 50 per class       3x64x64     ``tiny-imagenet-200/`` (wnids.txt, train/, val/)
=============  =======================  ==========  =============================================
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: Per-channel (mean, std) of the training images in [0, 1], used by ``scale="standard"``.
#: CIFAR-10's are the constants of the GEP code; SVHN reuses them as GEP does.
STANDARD_STATS = {
    "digits": ((0.3054,), (0.3722,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DATASETS = tuple(STANDARD_STATS)
SCALES = ("unit", "symmetric", "standard")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the places :func:`load` searches."""


class ArrayDataset(torch.utils.data.TensorDataset):
    """Images and labels held in memory.

    Attributes:
        x: float32 tensor ``(n, C, H, W)``.
        y: int64 tensor ``(n,)``.
        name, split: where it came from.
        classes: the class names, ``len(classes)`` = number of classes.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, name: str, split: str, classes: list[str]):
        super().__init__(x, y)
        self.name, self.split, self.classes = name, split, list(classes)

    @property
    def x(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def y(self) -> torch.Tensor:
        return self.tensors[1]

    def subset(self, index: torch.Tensor, split: str) -> "ArrayDataset":
        """The examples at ``index`` (a 1-D integer tensor) as a new dataset named ``split``."""
        return ArrayDataset(self.x[index], self.y[index], name=self.name, split=split, classes=self.classes)

    def __repr__(self) -> str:
        return (f"ArrayDataset({self.name}/{self.split}: x {tuple(self.x.shape)} {self.x.dtype}, "
                f"{len(self.classes)} classes)")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$DPBOOK_DATA``, else ``~/.cache/dpbook``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("DPBOOK_DATA", "~/.cache/dpbook")).expanduser()


# ---------------------------------------------------------------------------------------------------
# Readers of the original file formats
# ---------------------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not, as a uint8 array of the stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def _read_cifar_batches(files: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        with open(f, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    mat = loadmat(path)
    x = np.transpose(mat["X"], (3, 2, 0, 1))  # stored (H, W, C, n) -> (n, C, H, W)
    y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
    return np.ascontiguousarray(x, dtype=np.uint8), y


def tinyimagenet_classes(folder: Path, n_classes: int | None) -> list[str]:
    """The first ``n_classes`` wnids of ``wnids.txt`` in file order (StoBatch uses the first 30)."""
    wnids = [w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()]
    if n_classes is not None:
        if not 1 <= n_classes <= len(wnids):
            raise ValueError(f"classes of load('tinyimagenet') must be in [1, {len(wnids)}]; got {n_classes}")
        wnids = wnids[:n_classes]
    return wnids


def _read_tinyimagenet(folder: Path, split: str, n_classes: int | None) -> tuple[np.ndarray, np.ndarray, list]:
    from PIL import Image

    wnids = tinyimagenet_classes(folder, n_classes)
    label = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        items = [(p, label[w]) for w in wnids for p in sorted((folder / "train" / w / "images").glob("*.JPEG"))]
    else:  # the official validation set serves as test set (50 labelled images per class)
        rows = (folder / "val" / "val_annotations.txt").read_text().splitlines()
        items = [(folder / "val" / "images" / r.split("\t")[0], label[r.split("\t")[1]])
                 for r in rows if r.strip() and r.split("\t")[1] in label]
    if not items:
        raise DataNotFoundError(f"no {split} images of the selected classes under {folder}")
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p, _ in items])
    y = np.array([c for _, c in items], dtype=np.int64)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y, wnids


# ---------------------------------------------------------------------------------------------------
# Where each dataset lives
# ---------------------------------------------------------------------------------------------------
def _candidates(name: str, split: str, root: Path) -> list[list[Path]]:
    """Alternative sets of files that each hold ``split`` of ``name``, in search order."""
    if name in _FOLDER:
        sets = []
        folders = [root / _FOLDER[name] / "raw"]
        if name == "fashion-mnist":
            folders.append(SYSTEM_FASHION_MNIST)
        for folder in folders:
            for ext in ("", ".gz"):
                sets.append([folder / (f + ext) for f in _IDX_FILES[split]])
        return sets
    if name == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return [[root / "cifar-10-batches-py" / n for n in names]]
    if name == "cifar100":
        return [[root / "cifar-100-python" / split]]
    if name == "svhn":
        return [[root / "svhn" / f"{split}_32x32.mat"]]
    if name == "tinyimagenet":
        return [[root / "tiny-imagenet-200" / "wnids.txt"], [root / "wnids.txt"]]
    raise ValueError(f"unknown dataset {name!r}")


def _fix_command(name: str) -> str:
    if name == "fashion-mnist":
        return ("apt-get install -y dataset-fashion-mnist   (Debian/Ubuntu, offline-friendly)\n"
                "  or: python -m dpbook fetch fashion-mnist")
    if name == "tinyimagenet":
        return (f"download {_TINY_URL} and unzip it into $DPBOOK_DATA "
                "(or pass root= the folder that holds wnids.txt)")
    return f"python -m dpbook fetch {name}   (downloads with torchvision into $DPBOOK_DATA)"


def find(name: str, split: str = "train", *, root: str | os.PathLike | None = None) -> list[Path]:
    """The files that hold ``split`` of dataset ``name``; raises :class:`DataNotFoundError` if absent."""
    _check_name(name)
    if name == "digits":
        return []
    split = _check_split(name, split)
    sets = _candidates(name, split, data_root(root))
    for files in sets:
        if all(f.exists() for f in files):
            return files
    looked = "\n".join("  " + ", ".join(str(f) for f in files) for files in sets)
    raise DataNotFoundError(
        f"{name} ({split}) is not on this machine. Looked for:\n{looked}\nTo get it: {_fix_command(name)}"
    )


def locate(name: str, *, root: str | os.PathLike | None = None) -> str:
    """A one-line answer to 'where does ``name`` come from here?', for :func:`dpbook.describe_run`."""
    if name == "digits":
        return "bundled with scikit-learn"
    try:
        return f"found in {find(name, 'train', root=root)[0].parent}"
    except DataNotFoundError:
        return "MISSING; get it with: " + _fix_command(name).splitlines()[0]


def fetch(name: str, *, root: str | os.PathLike | None = None) -> Path:
    """Download ``name`` with torchvision into the data folder (needs network access). Never called by tests."""
    import torchvision.datasets as tvd

    _check_name(name)
    root = data_root(root)
    root.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        return root
    if name == "tinyimagenet":
        raise DataNotFoundError("torchvision has no Tiny ImageNet loader: " + _fix_command(name))
    if name == "svhn":
        for split in ("train", "test", "extra"):
            tvd.SVHN(root / "svhn", split=split, download=True)
        return root / "svhn"
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[name]
    for train in (True, False):
        cls(root, train=train, download=True)
    return root


# ---------------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------------
def load(name: str, split: str = "train", *, scale: str = "unit", root: str | os.PathLike | None = None,
         download: bool = False, classes: int | None = None) -> ArrayDataset:
    """Load one official split of a dataset into memory.

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``; SVHN also has ``"extra"``. Tiny ImageNet's ``"test"`` is its
            official labelled validation set; digits' test split is a fixed 20% (seed 0) of the 1,797 images.
        scale: ``"unit"`` (pixels in [0, 1]), ``"symmetric"`` ([-1, 1], StoBatch) or ``"standard"``
            (per-channel z-scores with :data:`STANDARD_STATS`, GEP).
        root: data folder; default ``$DPBOOK_DATA`` or ``~/.cache/dpbook``.
        download: allow a torchvision download into ``root`` if the files are missing.
        classes: Tiny ImageNet only: keep the first ``classes`` wnids (StoBatch uses 30); default all 200.

    Returns:
        ArrayDataset with ``x`` float32 ``(n, C, H, W)`` and ``y`` int64 ``(n,)``.

    Raises:
        DataNotFoundError: the files are missing (the message names them and the command that gets them).
        ValueError: unknown name, split or scale.
    """
    _check_name(name)
    if scale not in SCALES:
        raise ValueError(f"scale of load() must be one of {', '.join(SCALES)}; got {scale!r}")
    if classes is not None and name != "tinyimagenet":
        raise ValueError(f"classes= selects Tiny ImageNet classes; {name} has a fixed label set")
    split = _check_split(name, split)
    class_names: list[str]
    if name == "digits":
        x, y, peak = *_digits(split), 16.0
        class_names = [str(i) for i in range(10)]
    else:
        try:
            files = find(name, split, root=root)
        except DataNotFoundError:
            if not download:
                raise
            fetch(name, root=root)
            files = find(name, split, root=root)
        peak = 255.0
        if name in _FOLDER:
            x, y = read_idx(files[0])[:, None], read_idx(files[1]).astype(np.int64)
            class_names = [str(i) for i in range(10)] if name == "mnist" else FASHION_CLASSES
        elif name in ("cifar10", "cifar100"):
            x, y = _read_cifar_batches(files, b"labels" if name == "cifar10" else b"fine_labels")
            class_names = [str(i) for i in range(10 if name == "cifar10" else 100)]
        elif name == "svhn":
            x, y = _read_svhn(files[0])
            class_names = [str(i) for i in range(10)]
        else:
            x, y, class_names = _read_tinyimagenet(files[0].parent, split, classes)
    if len(x) != len(y):
        raise ValueError(f"{name} ({split}): {len(x)} images but {len(y)} labels")
    x_t = torch.from_numpy(np.asarray(x, dtype=np.float32) / peak)
    return ArrayDataset(rescale(x_t, name, scale), torch.from_numpy(np.asarray(y, dtype=np.int64)),
                        name=name, split=split, classes=class_names)


def rescale(x: torch.Tensor, name: str, scale: str) -> torch.Tensor:
    """Map images with pixels in [0, 1] to the requested ``scale`` (see :func:`load`)."""
    if scale == "unit":
        return x
    if scale == "symmetric":
        return x * 2.0 - 1.0
    mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in STANDARD_STATS[name])
    return (x - mean) / std


def load_images_file(path: str | os.PathLike, *, like: str, scale: str = "unit", limit: int = 0) -> torch.Tensor:
    """Unlabelled images from a file of your own, scaled like dataset ``like`` (GEP's auxiliary data).

    The GEP code reads ``imagenet_examples_2000``, 2000 downsampled ImageNet images in one tensor; that file
    is not distributed, so make your own (e.g. from the 32x32 downsampled ImageNet) and pass its path.

    Args:
        path: ``.pt`` (``torch.save`` of a tensor) or ``.npy`` file of shape ``(n, C, H, W)``: uint8 in
            [0, 255] or float in [0, 1].
        like: the private dataset; its channels and size must match, and its :data:`STANDARD_STATS` are used
            when ``scale="standard"``.
        limit: keep the first ``limit`` images (0: all).

    Returns:
        float32 tensor ``(n, C, H, W)``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"no images file {path}: save a (n, C, H, W) uint8 or [0, 1] float tensor there "
                                f"with torch.save (.pt) or numpy.save (.npy)")
    raw = np.load(path) if path.suffix == ".npy" else torch.load(path, map_location="cpu", weights_only=True)
    x = torch.as_tensor(np.asarray(raw) if isinstance(raw, np.ndarray) else raw)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim != 4:
        raise ValueError(f"{path}: expected images (n, C, H, W); got shape {tuple(x.shape)}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{path}: float pixels must lie in [0, 1] (got [{x.min():.3g}, {x.max():.3g}]); "
                         f"save unnormalised images")
    _check_name(like)
    expected = _SHAPES[like]
    if tuple(x.shape[1:]) != expected:
        raise ValueError(f"{path}: images of shape {tuple(x.shape[1:])} cannot stand in for {like} {expected}")
    return rescale(x[:limit] if limit else x, like, scale)


_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
           "svhn": (3, 32, 32), "tinyimagenet": (3, 64, 64)}


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.images.astype(np.float32)[:, None], bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # fixed forever: the book's digits test set
    n_test = len(y) // 5
    index = order[:n_test] if split == "test" else order[n_test:]
    return x[index], y[index]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def _check_split(name: str, split: str) -> str:
    allowed = ("train", "test", "extra") if name == "svhn" else ("train", "test")
    if split not in allowed:
        raise ValueError(f"split of {name} must be one of {', '.join(allowed)}; got {split!r}")
    return split


# ---------------------------------------------------------------------------------------------------
# Deterministic splits
# ---------------------------------------------------------------------------------------------------
def split(dataset: ArrayDataset, sizes: dict[str, int | float], *, seed: int = 0) -> dict[str, ArrayDataset]:
    """Cut ``dataset`` into disjoint named parts, reproducibly.

    Args:
        dataset: the dataset to cut.
        sizes: part name -> size, as a count (int >= 0) or a fraction of ``len(dataset)`` (float in [0, 1)).
            The examples left over form the part ``"train"``.
        seed: seed of the permutation; the same seed gives the same parts on every machine.

    Returns:
        dict mapping each name of ``sizes`` and ``"train"`` to an :class:`ArrayDataset`.
    """
    n = len(dataset)
    counts = {}
    for part, size in sizes.items():
        count = int(round(size * n)) if isinstance(size, float) else int(size)
        if count < 0 or (isinstance(size, float) and not 0 <= size < 1):
            raise ValueError(f"size of part {part!r} must be a count >= 0 or a fraction in [0, 1); got {size}")
        counts[part] = count
    if "train" in counts:
        raise ValueError("'train' is the remainder of split(); do not give it a size")
    if sum(counts.values()) >= n:
        raise ValueError(f"parts {counts} leave no training examples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for part, count in counts.items():
        parts[part] = dataset.subset(order[start:start + count], part)
        start += count
    parts["train"] = dataset.subset(order[start:], "train")
    return parts


def splits(name: str, *, validation: int | float = 0, public: int | float = 0, max_train: int = 0,
           seed: int = 0, scale: str = "unit", root: str | os.PathLike | None = None,
           download: bool = False, classes: int | None = None) -> dict[str, ArrayDataset]:
    """Train, validation, public and test sets of ``name``, deterministic given ``seed``.

    ``validation`` and ``public`` (auxiliary data treated as non-private, as GEP's anchor data) are cut
    from the official training split; ``test`` is the official test split, never touched by ``seed``.
    ``max_train`` > 0 keeps only that many training examples (for quick profiles).
    """
    train = load(name, "train", scale=scale, root=root, download=download, classes=classes)
    parts = split(train, {"validation": validation, "public": public}, seed=seed)
    if max_train:
        parts["train"] = parts["train"].subset(torch.arange(min(max_train, len(parts["train"]))), "train")
    parts["test"] = load(name, "test", scale=scale, root=root, download=download, classes=classes)
    return parts
