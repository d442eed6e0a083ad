"""What each dataset is: names, image shapes, splits, scales and class names, and the checks of those names."""
from __future__ import annotations

from .. import checks

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
#: The dataset names :func:`dpbook.data.load` knows.
DATASETS = tuple(STANDARD_STATS)
#: The pixel scales of :func:`dpbook.data.load`: [0, 1], [-1, 1] or per-channel z-scores.
SCALES = ("unit", "symmetric", "standard")
#: Image shape (C, H, W) of each dataset.
SHAPES = {
    "digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32),
    "tinyimagenet": (3, 64, 64),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]


def check_name(name: str, parameter: str, where: str) -> None:
    """``name`` (parameter ``parameter`` of ``where``) is one of :data:`DATASETS`."""
    checks.one_of(name, DATASETS, parameter, where)


def check_split(name: str, split: str, where: str) -> str:
    """``split`` is a split of dataset ``name``: ``"train"`` or ``"test"``, and for SVHN also ``"extra"``."""
    return checks.one_of(split, ("train", "test", "extra") if name == "svhn" else ("train", "test"), "split", where)
