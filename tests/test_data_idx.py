"""The IDX reader and MNIST-format directories, on tiny generated files."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from lpntk._errors import DataError
from lpntk.data import load_idx_dataset, read_idx
from lpntk.data.idx import idx_bytes, write_idx

DTYPES = ["u1", "i1", ">i2", ">i4", ">f4", ">f8"]


def sample(dtype: str, shape=(3, 4, 5)) -> np.ndarray:
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(size=shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gz", [False, True])
def test_roundtrip_every_dtype(tmp_path, dtype, gz):
    arr = sample(dtype)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), arr)
    out = read_idx(path)
    assert out.shape == arr.shape
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_header_layout_by_hand(tmp_path):
    # 00 00 0B 02 | dims 2, 3 | six big-endian int16 values
    raw = bytes([0, 0, 0x0B, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    raw += b"".join(v.to_bytes(2, "big", signed=True) for v in [1, -2, 3, -4, 500, -600])
    path = tmp_path / "h"
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_idx(path), [[1, -2, 3], [-4, 500, -600]])
    assert idx_bytes(read_idx(path)) == raw


def test_gzip_detected_by_magic_not_name(tmp_path):
    arr = sample("u1", (2, 3))
    hidden_gz = tmp_path / "plain-name"
    hidden_gz.write_bytes(gzip.compress(idx_bytes(arr)))
    raw_named_gz = tmp_path / "raw.gz"
    raw_named_gz.write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(hidden_gz), arr)
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)


def test_truncated_file_names_file_and_byte_counts(tmp_path):
    raw = idx_bytes(np.zeros((4, 5), np.uint8))
    path = tmp_path / "cut-idx1-ubyte"
    path.write_bytes(raw[:-3])
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(path)
    assert "cut-idx1-ubyte" in str(e.value)
    assert str(len(raw)) in str(e.value) and str(len(raw) - 3) in str(e.value)


def test_truncated_gzip_content(tmp_path):
    raw = idx_bytes(np.zeros((4, 5), np.int32))
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(raw[:-4]))
    with pytest.raises(DataError, match=r"cut\.gz.*truncated"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="short.*header"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros((2, 2), np.uint8)) + b"xyz")
    with pytest.raises(DataError, match="long: 3 trailing bytes"):
        read_idx(path)


@pytest.mark.parametrize("head", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"PK\x03\x04"])
def test_bad_magic(tmp_path, head):
    path = tmp_path / "bad"
    path.write_bytes(head + b"\x00\x00\x00\x01" + b"\x00")
    with pytest.raises(DataError, match="bad: not an IDX file"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))
    path = tmp_path / "corrupt.gz"
    path.write_bytes(good[:12] + b"\xff" * 20 + good[32:])
    with pytest.raises(DataError, match=r"corrupt\.gz.*corrupt gzip"):
        read_idx(path)
    path.write_bytes(good[: len(good) // 2])  # stream cut short
    with pytest.raises(DataError, match=r"corrupt\.gz"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")


def write_split(folder, prefix, n, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
    labels = (np.arange(n) % 3).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


def test_load_idx_dataset_train_and_test_names(tmp_path):
    images, labels = write_split(tmp_path, "train", 7, gz=True)
    timages, tlabels = write_split(tmp_path, "test", 4, seed=1)  # "test-" instead of "t10k-"
    ds = load_idx_dataset(tmp_path, "train", name="tiny")
    assert ds.images.shape == (7, 1, 5, 4) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:, 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.labels.dtype == np.int64
    assert ds.classes == ("0", "1", "2") and ds.name == "tiny" and ds.split == "train"
    test = load_idx_dataset(tmp_path, "test", classes=["a", "b", "c", "d"])
    np.testing.assert_array_equal(test.images[:, 0], timages)
    assert test.classes == ("a", "b", "c", "d")
    np.testing.assert_array_equal(test.indices, np.arange(4))


def test_load_idx_dataset_prefers_raw_and_t10k(tmp_path):
    write_split(tmp_path, "t10k", 3, gz=True, seed=5)
    images, _ = write_split(tmp_path, "t10k", 3, gz=False, seed=5)
    ds = load_idx_dataset(tmp_path, "test")
    assert "t10k-images-idx3-ubyte," in ds.source  # the raw file, not the .gz
    np.testing.assert_array_equal(ds.images[:, 0], images)


def test_load_idx_dataset_checksums(tmp_path):
    images, labels = write_split(tmp_path, "train", 5)
    good = {
        "train-images-idx3-ubyte": hashlib.sha256(idx_bytes(images)).hexdigest(),
        "train-labels-idx1-ubyte": hashlib.sha256(idx_bytes(labels)).hexdigest(),
    }
    assert len(load_idx_dataset(tmp_path, checksums=good)) == 5
    bad = dict(good, **{"train-labels-idx1-ubyte": "0" * 64})
    with pytest.raises(DataError) as e:
        load_idx_dataset(tmp_path, checksums=bad)
    msg = str(e.value)
    assert (
        "train-labels-idx1-ubyte" in msg
        and "0" * 64 in msg
        and good["train-labels-idx1-ubyte"] in msg
    )
    assert "delete it" in msg


def test_load_idx_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="no train images IDX file"):
        load_idx_dataset(tmp_path, "train")
    write_split(tmp_path, "train", 5)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        load_idx_dataset(tmp_path, "train")
    write_idx(tmp_path / "other-train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="several train labels files"):
        load_idx_dataset(tmp_path, "train")


def test_class_names_from_classes_txt(tmp_path):
    write_split(tmp_path, "train", 9)  # labels 0, 1, 2
    assert load_idx_dataset(tmp_path, "train").classes == ("0", "1", "2")
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n")
    assert load_idx_dataset(tmp_path, "train").classes == ("cat", "dog", "bird")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match="classes.txt names 2 classes, but the labels go up to 2"):
        load_idx_dataset(tmp_path, "train")
