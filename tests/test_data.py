"""IDX reading/writing, Fashion-MNIST loading (local files and shipped subset), torch datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import adntn_models as am
from adntn_models.datasets import idx_file_names, read_idx, write_idx
from adntn_models.datasets.make_subset import DEFAULT_OUT, make_subset

MEAN, STD = am.FASHION_MNIST_MEAN, am.FASHION_MNIST_STD


needs_debian = pytest.mark.needs("fashion-mnist")


def write_fake_split(root: Path, split: str, n: int, *, gz: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    pick = 0 if gz else 1  # "...-ubyte.gz" or "...-ubyte"
    write_idx(root / idx_file_names(split, "images")[pick], images)
    write_idx(root / idx_file_names(split, "labels")[pick], labels)


# --- IDX ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # writable


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write_idx(tmp_path / "plain-name", array, compress=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(path), array)
    # And an uncompressed file with a .gz name still reads.
    path = write_idx(tmp_path / "lying.gz", array, compress=False)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_header_layout(tmp_path):
    path = write_idx(tmp_path / "labels", np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"


def test_idx_gzip_is_reproducible(tmp_path):
    array = np.arange(100, dtype=np.int32)
    a = write_idx(tmp_path / "a.gz", array).read_bytes()
    b = write_idx(tmp_path / "b.gz", array).read_bytes()
    assert a == b


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x01\x02\x08\x01\x00\x00\x00\x01\x00", "bad IDX magic number 0x01020801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX element type 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02", "truncated payload.*needs 4 bytes, found 2"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing bytes"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_corrupt(tmp_path, content, match, gz):
    path = tmp_path / "bad-idx-ubyte"
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_truncated_gzip(tmp_path):
    good = write_idx(tmp_path / "good.gz", np.arange(1000, dtype=np.int32)).read_bytes()
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_write_rejects_unsupported(tmp_path):
    with pytest.raises(ValueError, match="cannot store dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        write_idx(tmp_path / "x", np.uint8(3))


# --- Fashion-MNIST loading ---------------------------------------------------------------


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        am.load_fashion_mnist(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "root=" in message
    assert "subset=True" in message


def test_missing_file(tmp_path):
    write_fake_split(tmp_path, "train", 10, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train labels not found in .*apt-get install"):
        am.load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_directory(tmp_path, gz):
    write_fake_split(tmp_path, "test", 25, gz=gz)
    images, labels = am.load_fashion_mnist(str(tmp_path), split="test")
    assert images.shape == (25, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.arange(25) % 10)
    images5, labels5 = am.load_fashion_mnist(tmp_path, "test", limit=5)
    np.testing.assert_array_equal(images5, images[:5])
    np.testing.assert_array_equal(labels5, labels[:5])


def test_load_rejects_inconsistent_files(tmp_path):
    write_fake_split(tmp_path, "train", 10, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8))
    with pytest.raises(ValueError, match="10 images but 9 labels"):
        am.load_fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(10, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match="label 10 out of range"):
        am.load_fashion_mnist(tmp_path)


def test_load_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'val'; valid splits: train, test"):
        am.load_fashion_mnist(split="val", subset=True)
    with pytest.raises(ValueError, match="not both"):
        am.load_fashion_mnist(tmp_path, subset=True)
    with pytest.raises(ValueError, match="limit"):
        am.load_fashion_mnist(subset=True, limit=-1)


@pytest.mark.parametrize(("split", "n"), [("train", 3000), ("test", 1000)])
def test_shipped_subset(split, n):
    images, labels = am.load_fashion_mnist(split=split, subset=True)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
    assert 0.2 < images.mean() / 255 < 0.4  # real images, not noise (mean ~0.286)
    # A prefix is mixed across classes, since the subset is stored shuffled.
    head_images, head_labels = am.load_shipped_subset(split, limit=100)
    assert len(np.unique(head_labels)) == 10
    np.testing.assert_array_equal(head_images, images[:100])


def test_shipped_subset_size_on_disk():
    total = sum(p.stat().st_size for p in DEFAULT_OUT.iterdir())
    assert total < 2.5e6
    assert {"README.md", "LICENSE"} <= {p.name for p in DEFAULT_OUT.iterdir()}


@needs_debian
def test_debian_files_load():
    train_x, train_y = am.load_fashion_mnist(split="train")
    test_x, test_y = am.load_fashion_mnist(split="test")
    assert train_x.shape == (60000, 28, 28) and train_y.shape == (60000,)
    assert test_x.shape == (10000, 28, 28) and test_y.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(test_y), np.full(10, 1000))
    assert abs(train_x.mean() / 255 - MEAN) < 1e-3
    assert abs(train_x.std() / 255 - STD) < 1e-3


@needs_debian
def test_shipped_subset_is_reproducible(tmp_path):
    for path in make_subset(out=tmp_path):
        assert path.read_bytes() == (DEFAULT_OUT / path.name).read_bytes(), path.name


# --- torch datasets ----------------------------------------------------------------------


def test_as_tensor_dataset_default():
    images, labels = am.load_shipped_subset("test", limit=16)
    ds = am.as_tensor_dataset(images, labels)
    x, y = ds.tensors
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    torch.testing.assert_close(x, (torch.from_numpy(images).float()[:, None] / 255 - MEAN) / STD)
    raw = am.as_tensor_dataset(images, labels, normalize=False).tensors[0]
    assert raw.min() >= 0 and raw.max() <= 1


def test_as_tensor_dataset_padded_rgb():
    images, labels = am.load_shipped_subset("train", limit=8)
    ds = am.as_tensor_dataset(images, labels, image_size=32, channels=3)
    x, y = ds.tensors
    assert x.shape == (8, 3, 32, 32)
    assert len(ds) == 8 and ds[0][0].shape == (3, 32, 32)
    torch.testing.assert_close(x[:, 0], x[:, 2])
    border = torch.cat([x[:, :, :2].flatten(), x[:, :, -2:].flatten(), x[..., :2].flatten()])
    torch.testing.assert_close(border, torch.full_like(border, -MEAN / STD))
    inner = am.as_tensor_dataset(images, labels).tensors[0]
    torch.testing.assert_close(x[:, :1, 2:30, 2:30], inner)
    model = am.alexnet32().eval()
    with torch.no_grad():
        assert model(x[:2]).shape == (2, 10)


def test_as_tensor_dataset_errors():
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    labels = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match="cannot pad 28x28 images to 31x31"):
        am.as_tensor_dataset(images, labels, image_size=31)
    with pytest.raises(ValueError, match="cannot pad"):
        am.as_tensor_dataset(images, labels, image_size=24)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        am.as_tensor_dataset(images, labels, channels=2)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        am.as_tensor_dataset(images, labels[:3])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        am.as_tensor_dataset(images[0], labels)
