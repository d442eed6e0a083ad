"""Datasets for every tier of the book, loaded from files on disk into tensors.

:func:`load` looks for a dataset in this order and, if every place fails, raises
:class:`DataNotFoundError` naming each file it looked for and the command that gets it:

1. ``$DPBOOK_DATA`` (default ``~/.cache/dpbook``), in torchvision's folder layout;
2. system copies: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
   (:data:`SYSTEM_FASHION_MNIST`, the original idx ``.gz`` files);
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

The package has one module per concept:

* :mod:`dpbook.data.catalog`: the names, shapes, scales and class names of the datasets;
* :mod:`dpbook.data.formats`: readers of the original file formats;
* :mod:`dpbook.data.sources`: where the files are (the search order, the download, the missing-data error);
* :mod:`dpbook.data.datasets`: loading, rescaling and splitting into :class:`ArrayDataset`.

Example:
    >>> from dpbook import data
    >>> data.SHAPES["cifar10"], "svhn" in data.DATASETS
    ((3, 32, 32), True)
"""
from __future__ import annotations

from pathlib import Path

from .catalog import DATASETS, FASHION_CLASSES, SCALES, SHAPES, STANDARD_STATS
from .datasets import ArrayDataset, load, load_images_file, load_like, rescale, split, splits
from .formats import read_idx, tinyimagenet_classes
from .sources import DataNotFoundError, data_root, fetch, find, locate

#: Where the Debian package ``dataset-fashion-mnist`` puts Fashion-MNIST. :func:`find` reads it from here
#: at every call, so setting ``dpbook.data.SYSTEM_FASHION_MNIST`` points the search elsewhere.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

__all__ = ["ArrayDataset", "DATASETS", "DataNotFoundError", "FASHION_CLASSES", "SCALES", "SHAPES", "STANDARD_STATS",
           "SYSTEM_FASHION_MNIST", "data_root", "fetch", "find", "load", "load_images_file", "load_like", "locate",
           "read_idx", "rescale", "split", "splits", "tinyimagenet_classes"]
