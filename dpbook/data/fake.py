"""Files in the real on-disk formats with random pixels, for dry runs and GPU timing; never training data.

Each writer puts files under ``root`` in the layout :func:`dpbook.data.sources.candidates` looks for (the
layout of ``$DPBOOK_DATA``), in the dataset's own format and at its real image size, filled with uniform random
bytes and random labels from a seeded generator. The real loaders (:mod:`dpbook.data.formats`) read them like
the originals, so an experiment runs through its whole code path at the real shapes; its step times and memory
depend on those shapes, not on the pixel values. Accuracies on these files are chance level and mean nothing.

* :func:`write_mnist`: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, 1x28x28 uint8, labels 0-9;
* :func:`write_cifar10`: ``cifar-10-batches-py/{data_batch_1..5,test_batch}``, 3x32x32 uint8, labels 0-9;
* :func:`write_cifar100`: ``cifar-100-python/{train,test}``, 3x32x32 uint8, fine labels 0-99 (coarse 0-19);
* :func:`write_svhn`: ``svhn/{train,test,extra}_32x32.mat``, 32x32x3 uint8, labels 1-10;
* :func:`write_tinyimagenet`: ``tiny-imagenet-200/`` (``wnids.txt``, ``train/``, ``val/``), 64x64 RGB JPEGs.

Example:
    >>> import tempfile, pathlib
    >>> from dpbook import data
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> write_mnist(root, n_train=5, n_test=3)
    >>> tuple(data.load("mnist", "test", root=root).x.shape)
    (3, 1, 28, 28)
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

#: the wnids of the fake Tiny ImageNet: 200 names in ImageNet's ``n########`` form, none of them a real class
FAKE_WNIDS = tuple(f"n{1_440_000 + 7 * i:08d}" for i in range(200))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """One uncompressed idx file (LeCun's MNIST format): magic ``0 0 0x08 ndim`` (unsigned bytes), then each
    dimension as a big-endian uint32, then the values of ``array`` as uint8 in C order."""
    path = Path(path)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: str | Path, n_train: int, n_test: int, *, seed: int = 0) -> None:
    """MNIST as torchvision stores it: ``MNIST/raw/{train,t10k}-images-idx3-ubyte`` of shape ``(n, 28, 28)``
    uint8 and ``MNIST/raw/{train,t10k}-labels-idx1-ubyte`` of shape ``(n,)`` with labels 0-9; ``n_train`` and
    ``n_test`` examples."""
    rng, raw = np.random.default_rng(seed), Path(root) / "MNIST" / "raw"
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))


def write_cifar10(root: str | Path, n_train: int, n_test: int, *, seed: int = 0) -> None:
    """CIFAR-10's python version: ``cifar-10-batches-py/{data_batch_1..5,test_batch}``, each a pickled dict
    with ``b"data"`` of shape ``(n, 3072)`` uint8 (channel-major 3x32x32 rows), ``b"labels"`` (a list of
    0-9), ``b"batch_label"`` and ``b"filenames"``; the ``n_train`` training examples spread over the five
    batches as evenly as possible, ``n_test`` in the test batch."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    for name, n in [(f"data_batch_{i + 1}", sizes[i]) for i in range(5)] + [("test_batch", n_test)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                         b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                         b"filenames": [f"{i}.png".encode() for i in range(n)]}, f)


def write_cifar100(root: str | Path, n_train: int, n_test: int, *, seed: int = 0) -> None:
    """CIFAR-100's python version: ``cifar-100-python/{train,test}``, each one pickled dict with ``b"data"`` of
    shape ``(n, 3072)`` uint8 (channel-major 3x32x32 rows), ``b"fine_labels"`` (a list of 0-99),
    ``b"coarse_labels"`` (0-19), ``b"batch_label"`` and ``b"filenames"``; ``n_train`` and ``n_test`` examples."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"fine_labels": rng.integers(0, 100, n).tolist(),
                         b"coarse_labels": rng.integers(0, 20, n).tolist(),
                         b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                         b"filenames": [f"{i}.png".encode() for i in range(n)]}, f)

def write_svhn(root: str | Path, sizes: dict[str, int], *, seed: int = 0) -> None:
    """SVHN's cropped digits: ``svhn/{split}_32x32.mat`` for each ``split -> n`` of ``sizes`` (``train``,
    ``test``, ``extra``), MATLAB files with ``X`` of shape ``(32, 32, 3, n)`` uint8 and ``y`` of shape
    ``(n, 1)`` with labels 1-10 (the digit 0 is stored as 10). Needs scipy."""
    from scipy.io import savemat

    rng, folder = np.random.default_rng(seed), Path(root) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        savemat(folder / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                                "y": rng.integers(1, 11, (n, 1), dtype=np.uint8)})


def write_tinyimagenet(root: str | Path, train_per_class: int, val_per_class: int, *, classes: int = 30,
                       seed: int = 0) -> None:
    """Tiny ImageNet's folder ``tiny-imagenet-200/``: the 200 wnids of :data:`FAKE_WNIDS` in ``wnids.txt``;
    for the first ``classes`` of them (StoBatch reads the first 30), ``train_per_class`` 64x64 RGB JPEGs under
    ``train/<wnid>/images/`` and ``val_per_class`` under ``val/images/``, listed in
    ``val/val_annotations.txt`` (tab-separated: file, wnid, box). Needs Pillow."""
    from PIL import Image

    rng, base = np.random.default_rng(seed), Path(root) / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(FAKE_WNIDS) + "\n")
    rows = []
    for c, wnid in enumerate(FAKE_WNIDS[:classes]):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(train_per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")
        for i in range(val_per_class):
            name = f"val_{c * val_per_class + i}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" / name)
            rows.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
