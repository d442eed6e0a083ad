"""Datasets in memory: :func:`load` one official split, :func:`split` and :func:`splits` into named parts,
:func:`load_images_file` for unlabelled images of your own, :func:`load_like` for another dataset's images in a
dataset's shape, and the :class:`ArrayDataset` they return."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .. import checks
from .catalog import FASHION_CLASSES, SCALES, SHAPES, STANDARD_STATS, check_name, check_split
from .formats import read_cifar_batches, read_idx, read_svhn, read_tinyimagenet
from .sources import IDX_FOLDERS, DataNotFoundError, fetch, find


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


def load(name: str, split: str = "train", *, scale: str = "unit", root: str | os.PathLike | None = None,
         download: bool = False, classes: int | None = None) -> ArrayDataset:
    """Load one official split of a dataset into memory.

    Args:
        name: one of :data:`~dpbook.data.DATASETS`.
        split: ``"train"`` or ``"test"``; SVHN also has ``"extra"``. Tiny ImageNet's ``"test"`` is its
            official labelled validation set; digits' test split is a fixed 20% (seed 0) of the 1,797 images.
        scale: ``"unit"`` (pixels in [0, 1]), ``"symmetric"`` ([-1, 1], StoBatch) or ``"standard"``
            (per-channel z-scores with :data:`~dpbook.data.STANDARD_STATS`, GEP).
        root: data folder; default ``$DPBOOK_DATA`` or ``~/.cache/dpbook``.
        download: allow a torchvision download into ``root`` if the files are missing.
        classes: Tiny ImageNet only: keep the first ``classes`` wnids (StoBatch uses 30); default all 200.

    Returns:
        ArrayDataset with ``x`` float32 ``(n, C, H, W)`` and ``y`` int64 ``(n,)``.

    Raises:
        DataNotFoundError: the files are missing (the message names them and the command that gets them).
        ValueError: unknown name, split or scale.
    """
    check_name(name, "name", "load()")
    checks.one_of(scale, SCALES, "scale", "load()")
    checks.check(classes is None or name == "tinyimagenet", "classes", f"load({name!r})",
                 f"None: classes= selects Tiny ImageNet classes and {name} has a fixed label set", classes)
    split = check_split(name, split, f"load({name!r})")
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
        if name in IDX_FOLDERS:
            x, y = read_idx(files[0])[:, None], read_idx(files[1]).astype(np.int64)
            class_names = [str(i) for i in range(10)] if name == "mnist" else FASHION_CLASSES
        elif name in ("cifar10", "cifar100"):
            x, y = read_cifar_batches(files, b"labels" if name == "cifar10" else b"fine_labels")
            class_names = [str(i) for i in range(10 if name == "cifar10" else 100)]
        elif name == "svhn":
            x, y = read_svhn(files[0])
            class_names = [str(i) for i in range(10)]
        else:
            x, y, class_names = read_tinyimagenet(files[0].parent, split, classes)
    if len(x) != len(y):
        raise ValueError(f"{name} ({split}): {len(x)} images but {len(y)} labels")
    x_t = torch.from_numpy(np.asarray(x, dtype=np.float32) / peak)
    return ArrayDataset(rescale(x_t, name, scale), torch.from_numpy(np.asarray(y, dtype=np.int64)),
                        name=name, split=split, classes=class_names)


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (pixels 0..16); the test split is a fixed 20% of the 1,797 images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.images.astype(np.float32)[:, None], bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # fixed forever: the book's digits test set
    n_test = len(y) // 5
    index = order[:n_test] if split == "test" else order[n_test:]
    return x[index], y[index]


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
        like: the private dataset; its channels and size must match, and its
            :data:`~dpbook.data.STANDARD_STATS` are used when ``scale="standard"``.
        limit: keep the first ``limit`` images (0: all).

    Returns:
        float32 tensor ``(n, C, H, W)``.
    """
    check_name(like, "like", "load_images_file()")
    checks.one_of(scale, SCALES, "scale", "load_images_file()")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"no images file {path}: save a (n, C, H, W) uint8 or [0, 1] float tensor there "
                                f"with torch.save (.pt) or numpy.save (.npy)")
    raw = np.load(path) if path.suffix == ".npy" else torch.load(path, map_location="cpu", weights_only=True)
    x = torch.as_tensor(raw)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim != 4:
        raise ValueError(f"{path}: expected images (n, C, H, W); got shape {tuple(x.shape)}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{path}: float pixels must lie in [0, 1] (got [{x.min():.3g}, {x.max():.3g}]); "
                         f"save unnormalised images")
    expected = SHAPES[like]
    if tuple(x.shape[1:]) != expected:
        raise ValueError(f"{path}: images of shape {tuple(x.shape[1:])} cannot stand in for {like} {expected}")
    return rescale(x[:limit] if limit else x, like, scale)


def load_like(name: str, *, like: str, scale: str = "unit", limit: int = 0,
              root: str | os.PathLike | None = None) -> torch.Tensor:
    """Unlabelled images of dataset ``name`` standing in for dataset ``like``: public data from another
    distribution (GEP's auxiliary data), resized to ``like``'s height and width and scaled like ``like``.

    The images are ``name``'s test split followed by its training split, the first ``limit`` of them: with
    ``name="cifar100"`` and ``limit=2000`` that is what the GEP code's ``--aux_dataset cifar100`` takes (the
    first 2,000 CIFAR-100 test images). Resizing is bilinear with antialiasing, on pixels in [0, 1].

    Args:
        name: one of :data:`~dpbook.data.DATASETS`, not ``like``.
        like: the private dataset; its channels must match ``name``'s, and its
            :data:`~dpbook.data.STANDARD_STATS` are used when ``scale="standard"`` (the map the private images
            get).
        scale: as in :func:`load`.
        limit: keep the first ``limit`` images (0: all of both splits).
        root: data folder, as in :func:`load`.

    Returns:
        float32 tensor ``(n, C, H, W)`` with ``like``'s shape.

    Raises:
        ValueError: ``name == like``, a different number of channels, or fewer than ``limit`` images.

    Example:
        >>> tuple(load_like("digits", like="fashion-mnist", limit=400).shape)
        (400, 1, 28, 28)
    """
    check_name(name, "name", "load_like()")
    check_name(like, "like", "load_like()")
    checks.one_of(scale, SCALES, "scale", "load_like()")
    checks.check(name != like, "name", "load_like()", f"another dataset than like={like!r}", name,
                 "Its test split is the private task's test set: hold public examples out of the training split "
                 "instead (GEP's public_source='heldout').")
    (channels, *_), (like_channels, *size) = SHAPES[name], SHAPES[like]
    checks.check(channels == like_channels, "name", "load_like()",
                 f"a dataset with {like_channels} channel(s), as {like}", f"{name} ({channels} channels)",
                 "Pick a dataset with as many channels, or save images of your own (load_images_file).")
    x = load(name, "test", root=root).x
    if not limit or limit > len(x):
        x = torch.cat([x, load(name, "train", root=root).x])
    checks.check(limit <= len(x), "limit", "load_like()", f"at most the {len(x)} images of {name}", limit)
    x = x[:limit] if limit else x
    if list(x.shape[-2:]) != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True,
                                            align_corners=False).clamp(0.0, 1.0)
    return rescale(x, like, scale)

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
        checks.check(count >= 0 and (not isinstance(size, float) or 0 <= size < 1), f"sizes[{part!r}]", "split()",
                     "a count >= 0 or a fraction in [0, 1)", size)
        counts[part] = count
    checks.check("train" not in counts, "sizes", "split()", "without 'train', the remainder of split()", sizes,
                 "Do not give 'train' a size.")
    checks.check(sum(counts.values()) < n, "sizes", "split()", f"smaller in total than the {n} examples", counts,
                 f"These parts leave no training examples out of {n}.")
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
