"""dpbook.data through its real code paths, on tiny files written here in each dataset's own format."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from dpbook import data


def write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if compress else open)(path, "wb").write(payload)


def make_mnist_like(root, folder, n_train=12, n_test=5, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    raw = root / folder / "raw"
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte{suffix}", x, compress)
        write_idx(raw / f"{split}-labels-idx1-ubyte{suffix}", y, compress)
        arrays[split] = (x, y)
    return arrays


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("DPBOOK_DATA", str(tmp_path))
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    return tmp_path


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_files_load_with_exact_pixels(root, compress):
    arrays = make_mnist_like(root, "MNIST", compress=compress)
    train = data.load("mnist", "train")
    x, y = arrays["train"]
    assert train.x.shape == (12, 1, 28, 28) and train.x.dtype == torch.float32
    assert torch.equal(train.y, torch.from_numpy(y.astype(np.int64)))
    assert torch.allclose(train.x[:, 0], torch.from_numpy(x / 255.0).float())
    assert len(data.load("mnist", "test")) == 5


def test_fashion_mnist_falls_back_to_the_system_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("DPBOOK_DATA", str(tmp_path / "empty"))
    system = tmp_path / "usr-share"
    arrays = make_mnist_like(tmp_path / "staging", "FashionMNIST")
    (tmp_path / "staging" / "FashionMNIST" / "raw").rename(system)
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", system)
    test = data.load("fashion-mnist", "test")
    assert torch.equal(test.y, torch.from_numpy(arrays["t10k"][1].astype(np.int64)))
    assert test.classes[0] == "T-shirt/top" and data.locate("fashion-mnist") == "from the Debian package dataset-fashion-mnist"


def test_truncated_idx_file_is_rejected(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(path)
    path.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(path)


def test_cifar_pickle_batches(root):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    expected_x, expected_y = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        y = list(rng.integers(0, 10, size=3))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": name.encode()}, f)
        if name != "test_batch":
            expected_x.append(x)
            expected_y += y
    train = data.load("cifar10", "train", scale="symmetric")
    assert train.x.shape == (15, 3, 32, 32)
    assert train.y.tolist() == expected_y
    # channel-major layout: the first 1024 bytes are the red plane
    red = np.concatenate(expected_x)[:, :1024].reshape(-1, 32, 32) / 255.0 * 2 - 1
    assert torch.allclose(train.x[:, 0], torch.from_numpy(red).float(), atol=1e-6)
    assert float(train.x.min()) >= -1 and float(train.x.max()) <= 1


def test_cifar100_fine_labels(root):
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 50, 99, 7],
                         b"coarse_labels": [0, 1, 2, 3]}, f)
    ds = data.load("cifar100", "test")
    assert ds.y.tolist() == [0, 50, 99, 7] and len(ds.classes) == 100


def test_svhn_mat_files(root):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(32, 32, 3, 6), dtype=np.uint8)
    y = np.array([[10], [1], [2], [3], [10], [9]], dtype=np.uint8)  # SVHN stores digit 0 as 10
    (root / "svhn").mkdir()
    savemat(root / "svhn" / "train_32x32.mat", {"X": x, "y": y})
    ds = data.load("svhn", "train")
    assert ds.y.tolist() == [0, 1, 2, 3, 0, 9]
    assert torch.allclose(ds.x[4, 2], torch.from_numpy(x[:, :, 2, 4] / 255.0).float())
    with pytest.raises(data.DataNotFoundError, match="extra_32x32.mat"):
        data.load("svhn", "extra")


def test_tinyimagenet_folder_and_class_subset(root):
    from PIL import Image

    base = root / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # file order, not sorted order, decides the subset
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rows = []
    for c, w in enumerate(wnids):
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), 10 * c + i, np.uint8)).save(base / "train" / w / "images" / f"{w}_{i}.JPEG")
        Image.fromarray(np.full((64, 64), 100 + c, np.uint8), mode="L").save(base / "val" / "images" / f"val_{c}.JPEG")
        rows.append(f"val_{c}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")

    train = data.load("tinyimagenet", "train", classes=2)
    assert train.classes == ["n02", "n01"] and train.x.shape == (4, 3, 64, 64)
    assert train.y.tolist() == [0, 0, 1, 1]
    test = data.load("tinyimagenet", "test", classes=2)
    assert test.y.tolist() == [0, 1] and test.x.shape == (2, 3, 64, 64)  # grayscale became RGB
    assert abs(float(test.x[1].mean()) * 255 - 101) < 2  # JPEG is lossy, flat images nearly exact
    with pytest.raises(ValueError, match="classes"):
        data.load("tinyimagenet", "train", classes=4)


def test_missing_data_names_the_file_and_the_command(root):
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("mnist", "train")
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and "python -m dpbook fetch mnist" in message
    with pytest.raises(data.DataNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        data.load("fashion-mnist")
    assert data.locate("cifar10").startswith("MISSING")


def test_digits_split_is_fixed_and_disjoint():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.x.shape[1:] == (1, 8, 8) and 0 <= float(train.x.min()) and float(train.x.max()) <= 1
    rows = {tuple(r) for r in train.x.flatten(1).tolist()}
    assert sum(tuple(r) in rows for r in test.x.flatten(1).tolist()) < 5  # digits has a few duplicate images
    assert torch.equal(data.load("digits", "test").y, test.y)


def test_scales():
    unit = data.load("digits", "test")
    sym = data.load("digits", "test", scale="symmetric")
    std = data.load("digits", "test", scale="standard")
    assert torch.allclose(sym.x, unit.x * 2 - 1)
    mean, sd = data.STANDARD_STATS["digits"]
    assert torch.allclose(std.x, (unit.x - mean[0]) / sd[0])
    assert abs(float(data.load("digits", "train", scale="standard").x.mean())) < 0.05


def test_splits_are_deterministic_disjoint_and_complete():
    parts = data.splits("digits", validation=100, public=0.1, seed=3)
    again = data.splits("digits", validation=100, public=0.1, seed=3)
    other = data.splits("digits", validation=100, public=0.1, seed=4)
    assert len(parts["validation"]) == 100 and len(parts["public"]) == round(0.1 * 1438)
    assert len(parts["train"]) + 100 + len(parts["public"]) == 1438
    for name in ("train", "validation", "public"):
        assert torch.equal(parts[name].x, again[name].x)
    assert not torch.equal(parts["validation"].x, other["validation"].x)
    assert torch.equal(parts["test"].y, other["test"].y)  # the test set never depends on the seed
    assert len(data.splits("digits", max_train=50)["train"]) == 50


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"name of load\(\) must be one of 'digits'"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="scale"):
        data.load("digits", scale="zscore")
    with pytest.raises(ValueError, match="split"):
        data.load("digits", "validation")
    with pytest.raises(ValueError, match="no training examples"):
        data.split(data.load("digits"), {"validation": 2000})


def test_images_file_for_gep_auxiliary_data(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    torch.save(torch.from_numpy(pixels), tmp_path / "aux.pt")
    x = data.load_images_file(tmp_path / "aux.pt", like="cifar10", scale="unit", limit=4)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(pixels[:4]).float() / 255)
    std = data.load_images_file(tmp_path / "aux.pt", like="cifar10", scale="standard")
    torch.testing.assert_close(std, data.rescale(torch.from_numpy(pixels).float() / 255, "cifar10", "standard"))
    np.save(tmp_path / "aux.npy", pixels.astype(np.float32) / 255)
    torch.testing.assert_close(data.load_images_file(tmp_path / "aux.npy", like="svhn"), x[:0].new_tensor(pixels / 255))
    with pytest.raises(ValueError, match="cannot stand in for mnist"):
        data.load_images_file(tmp_path / "aux.pt", like="mnist")
    np.save(tmp_path / "normalised.npy", rng.normal(size=(2, 3, 32, 32)).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.load_images_file(tmp_path / "normalised.npy", like="cifar10")
    np.save(tmp_path / "flat.npy", pixels.reshape(6, -1))
    with pytest.raises(ValueError, match="expected images"):
        data.load_images_file(tmp_path / "flat.npy", like="cifar10")
    with pytest.raises(data.DataNotFoundError, match="torch.save"):
        data.load_images_file(tmp_path / "missing.pt", like="cifar10")


def test_another_dataset_as_public_images_resized_and_scaled_like_the_private_one(tmp_path):
    """load_like: test images first, then training images; the private dataset's size and scale; refusals."""
    from dpbook.data.fake import write_cifar100

    write_cifar100(tmp_path, n_train=6, n_test=4)
    test, train = (data.load("cifar100", split, root=tmp_path).x for split in ("test", "train"))
    x = data.load_like("cifar100", like="svhn", scale="standard", limit=7, root=tmp_path)
    torch.testing.assert_close(x, data.rescale(torch.cat([test, train[:3]]), "svhn", "standard"))  # same size
    big = data.load_like("cifar100", like="tinyimagenet", root=tmp_path)  # all 10, upsampled to 64x64
    assert big.shape == (10, 3, 64, 64) and 0 <= big.min() and big.max() <= 1
    # bilinear upsampling keeps each channel's mean brightness, up to the border pixels
    torch.testing.assert_close(big.mean((2, 3)), torch.cat([test, train]).mean((2, 3)), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match=r"1 channel\(s\), as mnist"):
        data.load_like("cifar100", like="mnist", root=tmp_path)
    with pytest.raises(ValueError, match="public_source='heldout'"):
        data.load_like("cifar100", like="cifar100", root=tmp_path)
    with pytest.raises(ValueError, match="at most the 10 images of cifar100"):
        data.load_like("cifar100", like="cifar10", limit=11, root=tmp_path)
