"""CIFAR-10: pickles, image zips and trees, the decoded-array cache, and the download."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpntk._errors import DataError
from lpntk.data import cifar, dataset_info, fetch, load_dataset

REPO = Path(__file__).resolve().parents[1]


def make_pickles(folder: Path, per_batch=3, n_test=4, seed=0) -> dict[str, np.ndarray]:
    """A tiny ``cifar-10-batches-py``; returns the expected images (N, 3, 32, 32) per split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [c.encode() for c in cifar.CLASSES]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    out: dict[str, list] = {"train": [], "test": []}
    offset = 0
    for split, batches in cifar.BATCHES.items():
        for batch in batches:
            n = per_batch if split == "train" else n_test
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = [(offset + i) % 10 for i in range(n)]
            offset += n
            with open(folder / batch, "wb") as f:
                pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f, protocol=2)
            out[split].append(data.reshape(-1, 3, 32, 32))
    return {k: np.concatenate(v) for k, v in out.items()}


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.transpose(1, 2, 0)).save(buf, format=fmt, quality=75)
    return buf.getvalue()


def image_files(classes=("dog", "ant", "cat"), per_split=None, fmt="PNG", seed=0):
    """``{member name: bytes}`` for train/<class>/NNNN.ext and test/<class>/NNNN.ext, and the
    expected ``{split: (images, labels)}`` in (sorted class, file name) order."""
    per_split = per_split or {"train": 3, "test": 2}
    rng = np.random.default_rng(seed)
    ext = "png" if fmt == "PNG" else "jpg"
    files, expected = {}, {}
    for split, n in per_split.items():
        imgs, labels = [], []
        for label, cls in enumerate(sorted(classes)):
            for i in range(n):
                arr = rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
                data = encode(arr, fmt)
                files[f"{split}/{cls}/{i:04d}.{ext}"] = data
                decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                imgs.append(decoded.transpose(2, 0, 1))
                labels.append(label)
        expected[split] = (np.stack(imgs), np.array(labels))
    return files, expected


def write_zip(path: Path, files: dict[str, bytes], prefix="") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(files)
    random.Random(0).shuffle(names)  # the archive order must not matter
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in names:
            zf.writestr(prefix + name, files[name])
        zf.writestr(prefix + "train/.DS_Store", b"junk")
    return path


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# --------------------------------------------------------------------------- pickles


def test_pickles(data_env, tmp_path):
    expected = make_pickles(tmp_path / "root" / "cifar10" / "cifar-10-batches-py")
    for given in (
        tmp_path / "root",
        tmp_path / "root" / "cifar10",
        tmp_path / "root" / "cifar10" / "cifar-10-batches-py",
    ):
        train = load_dataset("cifar10", "train", data_dir=given, download=False)
        assert train.images.shape == (15, 3, 32, 32)
        np.testing.assert_array_equal(train.images, expected["train"])
        np.testing.assert_array_equal(train.labels, np.arange(15) % 10)
        np.testing.assert_array_equal(train.indices, np.arange(15))
    assert train.classes == cifar.CLASSES and train.name == "cifar10"
    assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2470, 0.2435, 0.2616)
    assert "lossless" in train.source
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "root")
    np.testing.assert_array_equal(test.images, expected["test"])
    np.testing.assert_array_equal(test.labels, (15 + np.arange(4)) % 10)
    info = dataset_info("cifar10", tmp_path / "root")
    assert info["layout"] == "pickles" and info["splits"]["train"]["size"] == 15
    assert sum(info["splits"]["test"]["class_counts"]) == 4
    assert not data_env.exists()  # pickles need no cache


def test_corrupt_pickle(data_env, tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    make_pickles(folder)
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------- zips and trees


@pytest.mark.parametrize("prefix", ["", "cifar10/"])
def test_png_zip_exact_and_ordered(data_env, tmp_path, prefix):
    files, expected = image_files()
    write_zip(tmp_path / "cifar10" / "images.zip", files, prefix)
    for split in ("train", "test"):
        ds = load_dataset("cifar10", split, data_dir=tmp_path, download=False)
        assert ds.classes == ("ant", "cat", "dog")
        np.testing.assert_array_equal(ds.images, expected[split][0])
        np.testing.assert_array_equal(ds.labels, expected[split][1])
        np.testing.assert_array_equal(ds.indices, np.arange(len(ds)))
        assert "JPEG" not in ds.source


def test_class_only_in_train_keeps_labels_consistent(data_env, tmp_path):
    files, _ = image_files(classes=("a", "b"), per_split={"train": 1, "test": 1})
    files = {k: v for k, v in files.items() if not k.startswith("test/a/")}
    write_zip(tmp_path / "cifar10" / "x.zip", files)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert test.classes == ("a", "b") and test.labels.tolist() == [1]


def test_jpeg_zip_caveat_and_checksum(data_env, tmp_path, monkeypatch):
    files, expected = image_files(fmt="JPEG")
    path = write_zip(tmp_path / "cifar10" / "cifar10-jpeg75.zip", files)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = {"cifar10-jpeg75.zip": {"sha256": "f" * 64, "caveat": cifar.JPEG_CAVEAT}}
    monkeypatch.setattr(cifar, "KNOWN_ARCHIVES", wrong)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(path) in str(e.value) and "f" * 64 in str(e.value) and digest in str(e.value)
    assert not (data_env / "arrays").exists() or not list((data_env / "arrays").iterdir())
    info = dataset_info("cifar10", tmp_path)
    assert info["checksums_ok"] is False and "MISMATCH" in info["checksums"]

    monkeypatch.setattr(cifar, "KNOWN_ARCHIVES", {"cifar10-jpeg75.zip": dict(wrong[
        "cifar10-jpeg75.zip"], sha256=digest)})  # fmt: skip
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert "JPEG q75 re-encoding of CIFAR-10" in ds.source
    np.testing.assert_array_equal(ds.images, expected["train"][0])
    assert dataset_info("cifar10", tmp_path)["checksums_ok"] is True
    assert fetch("cifar10", tmp_path) == tmp_path / "cifar10"


def test_other_jpeg_zip_says_lossy(data_env, tmp_path):
    files, _ = image_files(fmt="JPEG", per_split={"train": 1, "test": 1})
    write_zip(tmp_path / "cifar10" / "mine.zip", files)
    assert "lossy JPEG" in load_dataset("cifar10", data_dir=tmp_path).source


def test_zip_cache_is_used_and_invalidated(data_env, tmp_path, monkeypatch):
    files, expected = image_files()
    path = write_zip(tmp_path / "data" / "cifar10" / "images.zip", files)
    before = sorted(p.name for p in path.parent.iterdir())
    first = load_dataset("cifar10", data_dir=tmp_path / "data")
    cached = sorted(p.name for p in (data_env / "arrays").iterdir())
    assert len(cached) == 4 and all(n.startswith("cifar10-zip-") for n in cached)
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing beside the data

    def no_decoding(data, name):
        raise AssertionError(f"decoded {name} although the cache should be used")

    monkeypatch.setattr(cifar, "decode_image", no_decoding)
    second = load_dataset("cifar10", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, expected["train"][1])
    assert second.classes == first.classes and second.source == first.source

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the source changed
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset("cifar10", data_dir=tmp_path / "data")


def test_unwritable_cache_only_warns(data_env, tmp_path, monkeypatch):
    files, _ = image_files(per_split={"train": 1, "test": 1})
    write_zip(tmp_path / "cifar10" / "x.zip", files)
    data_env.parent.mkdir(parents=True, exist_ok=True)
    data_env.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the array cache"):
        ds = load_dataset("cifar10", data_dir=tmp_path)
    assert len(ds) == 3


def test_tree_layout_and_cache(data_env, tmp_path, monkeypatch):
    files, expected = image_files()
    write_tree(tmp_path / "cifar10", files)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(test.images, expected["test"][0])
    monkeypatch.setattr(cifar, "decode_image", None)  # any decoding now fails
    again = load_dataset("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(again.labels, expected["test"][1])
    info = dataset_info("cifar10", tmp_path)
    assert info["layout"] == "tree" and info["splits"]["train"]["class_counts"] == [3, 3, 3]


def test_layout_preference(data_env, tmp_path):
    folder = tmp_path / "cifar10"
    files, _ = image_files(per_split={"train": 1, "test": 1})
    write_tree(folder, files)
    assert cifar.find_source(folder)[0] == "tree"
    write_zip(folder / "a.zip", files)
    assert cifar.find_source(folder) == ("zip", folder / "a.zip")
    make_pickles(folder / "cifar-10-batches-py")
    assert cifar.find_source(folder) == ("pickles", folder / "cifar-10-batches-py")
    assert len(load_dataset("cifar10", data_dir=tmp_path)) == 15


def test_bad_images_name_the_file(data_env, tmp_path):
    files, _ = image_files(per_split={"train": 2, "test": 1})
    files["train/cat/0001.png"] = encode(np.zeros((3, 32, 30), np.uint8), "PNG")
    write_zip(tmp_path / "a" / "cifar10" / "x.zip", files)
    with pytest.raises(DataError, match=r"train/cat/0001\.png: image is 30x32, expected 32x32"):
        load_dataset("cifar10", data_dir=tmp_path / "a")
    files["train/cat/0001.png"] = b"not an image"
    write_zip(tmp_path / "b" / "cifar10" / "x.zip", files)
    with pytest.raises(DataError, match=r"train/cat/0001\.png: cannot decode image"):
        load_dataset("cifar10", data_dir=tmp_path / "b")


def test_not_a_zip(data_env, tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "broken.zip").write_bytes(b"PK\x03\x04 but no more")
    with pytest.raises(DataError, match="broken.zip"):
        load_dataset("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------- download


def make_tarball(path: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    expected = make_pickles(tmp_path / "src" / "cifar-10-batches-py")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return expected


def test_download(data_env, tmp_path, monkeypatch):
    tgz = tmp_path / "server" / "cifar-10-python.tar.gz"
    tgz.parent.mkdir()
    expected = make_tarball(tgz, tmp_path)
    monkeypatch.setattr(cifar, "URL", tgz.as_uri())
    monkeypatch.setattr(cifar, "MD5", "0" * 32)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10")
    msg = str(e.value)
    assert tgz.as_uri() in msg and "MD5" in msg and "0" * 32 in msg and "LPNTK_DATA_DIR=" in msg
    assert not list((data_env / "cifar10").iterdir())  # the rejected download is gone

    monkeypatch.setattr(cifar, "MD5", hashlib.md5(tgz.read_bytes()).hexdigest())
    ds = load_dataset("cifar10", "test")
    np.testing.assert_array_equal(ds.images, expected["test"])
    folder = data_env / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py"]  # tarball removed
    assert fetch("cifar10") == folder
    # fetch into an explicit directory
    assert fetch("cifar10", tmp_path / "mine") == folder  # already in the cache: found there
    monkeypatch.setenv("LPNTK_CACHE_DIR", str(tmp_path / "cache2"))
    assert fetch("cifar10", tmp_path / "mine") == tmp_path / "mine" / "cifar10"


# --------------------------------------------------------------------------- the real zip


def real_cifar_zip() -> Path | None:
    root = Path(os.environ.get("LPNTK_DATA_DIR") or REPO.parent / "shared" / "data")
    path = root / "cifar10" / "cifar10-jpeg75.zip"
    return path if path.is_file() else None


@pytest.mark.skipif(real_cifar_zip() is None, reason="cifar10-jpeg75.zip not available")
def test_real_cifar_zip_info(data_env):
    info = dataset_info("cifar10", real_cifar_zip().parent)
    assert info["layout"] == "zip" and info["checksums_ok"] is True
    assert info["classes"] == list(cifar.CLASSES)
    assert info["splits"]["train"] == {"size": 50000, "class_counts": [5000] * 10}
    assert info["splits"]["test"] == {"size": 10000, "class_counts": [1000] * 10}
    assert "JPEG q75 re-encoding of CIFAR-10" in info["source"]
