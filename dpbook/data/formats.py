"""Readers of the datasets' original file formats, each returning uint8 images ``(n, C, H, W)`` and labels.

* :func:`read_idx`: the idx files of MNIST and Fashion-MNIST, gzipped or not;
* :func:`read_cifar_batches`: the pickled batches of CIFAR-10 and CIFAR-100 (python version);
* :func:`read_svhn`: SVHN's MATLAB ``.mat`` files (cropped digits, 32x32);
* :func:`read_tinyimagenet`: the ``tiny-imagenet-200/`` folder of JPEG images.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from .. import checks
from .sources import DataNotFoundError


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


def read_cifar_batches(files: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of CIFAR's pickled batches, concatenated in the order of ``files``.

    ``label_key`` is ``b"labels"`` for CIFAR-10 and ``b"fine_labels"`` for CIFAR-100's 100 classes.
    """
    xs, ys = [], []
    for f in files:
        with open(f, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one SVHN ``.mat`` file; the digit 0, stored as label 10, becomes 0."""
    from scipy.io import loadmat

    mat = loadmat(path)
    x = np.transpose(mat["X"], (3, 2, 0, 1))  # stored (H, W, C, n) -> (n, C, H, W)
    y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
    return np.ascontiguousarray(x, dtype=np.uint8), y


def tinyimagenet_classes(folder: Path, n_classes: int | None) -> list[str]:
    """The first ``n_classes`` wnids of ``wnids.txt`` in file order (StoBatch uses the first 30)."""
    wnids = [w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()]
    if n_classes is not None:
        checks.check(1 <= n_classes <= len(wnids), "classes", "load('tinyimagenet')", f"in [1, {len(wnids)}]",
                     n_classes)
        wnids = wnids[:n_classes]
    return wnids


def read_tinyimagenet(folder: Path, split: str, n_classes: int | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Images, labels and class wnids of the first ``n_classes`` classes of the Tiny ImageNet ``folder``.

    ``"train"`` reads ``train/<wnid>/images/*.JPEG``; any other split reads the official validation set
    (``val/``, 50 labelled images per class), which serves as test set. Grayscale images become RGB.
    """
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
