"""The feature store (Zarr): round trip, metadata, resume after an interruption, mismatches, and
reading a store of the first format (.npy files and meta.json)."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from lpntk import ConfigError, DataError, LpntkError, MissingFileError
from lpntk.kernel import Features, compute_features, gram, row_max

from .test_kernel_helpers import make_data, make_model

features_module = importlib.import_module("lpntk.kernel.features")
N = 11
FORMAT1 = Path(__file__).parent / "data" / "store_format1"  # written by lpntk 0da8a10


def meta_of(path) -> dict:
    """The store's metadata as written (the Zarr group's attributes)."""
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]["lpntk"]


def done_flags(path) -> list:
    return zarr.open_group(str(path), mode="r")["done"][:].tolist()


class Flaky(Dataset):
    """Wraps a dataset; raises at item ``fail_at`` (if set) and counts the items it served."""

    def __init__(self, base, fail_at=None):
        self.base, self.fail_at, self.served = base, fail_at, []

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"simulated crash at item {i}")
        self.served.append(i)
        return self.base[i]


def run(model, data, out_dir=None, kind="lpntk", strategy="factored", **kw):
    kw = {"dtype": "float64", "batch_size": 2, "progress": False, **kw}
    return compute_features(model, data, kind, strategy, out_dir=out_dir, **kw)


@pytest.mark.parametrize(
    ("name", "kind", "strategy", "extra"),
    [
        ("seq", "lpntk", "factored", {}),
        ("cnn_generic", "entk", "factored", {}),
        ("mlp", "loss", "materialised", {}),
        ("mlp", "pntk", "projected", {"proj_dim": 16}),
    ],
)
def test_round_trip(tmp_path, name, kind, strategy, extra):
    model, data = make_model(name), make_data(name, n=N)
    mem = run(model, data, kind=kind, strategy=strategy, **extra)
    disk = run(model, data, tmp_path / "f", kind=kind, strategy=strategy, **extra)
    torch.testing.assert_close(gram(disk), gram(mem), rtol=0, atol=0)
    loaded = Features.load(tmp_path / "f")
    torch.testing.assert_close(gram(loaded), gram(mem), rtol=0, atol=0)
    assert loaded.pieces == mem.pieces
    np.testing.assert_array_equal(loaded.labels, mem.labels)
    np.testing.assert_array_equal(loaded.indices, mem.indices)
    assert loaded.n == N and loaded.m == mem.m and loaded.kind == kind
    for k, a in loaded.arrays.items():
        assert isinstance(a, zarr.Array) and a.chunks[0] == N  # one chunk of N < 1,024 rows
        np.testing.assert_array_equal(a, mem.arrays[k])
    # a second call with the same settings reuses the finished store
    again = run(
        model, Flaky(data, fail_at=0), tmp_path / "f", kind=kind, strategy=strategy, **extra
    )
    torch.testing.assert_close(gram(again), gram(mem), rtol=0, atol=0)


def test_metadata(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    run(model, data, tmp_path, description={"dataset": "toy"})
    meta = meta_of(tmp_path)
    assert meta == Features.load(tmp_path).meta
    for key in ("kind", "strategy", "dtype", "model_hash", "n", "pieces", "complete", "created"):
        assert key in meta, key
    assert meta["kind"] == "lpntk" and meta["strategy"] == "factored"
    assert meta["dtype"] == "float64" and meta["n"] == N and meta["complete"] is True
    assert meta["model_hash"] == features_module.model_hash(model)
    assert len(meta["model_hash"]) == 64
    assert meta["description"] == {"dataset": "toy"}
    assert meta["pieces"] == [p.to_dict() for p in Features.load(tmp_path).pieces]
    assert meta["format"] == 2 and meta["chunk_rows"] == N
    group = zarr.open_group(str(tmp_path), mode="r")
    assert sorted(group.array_keys()) == [
        "0.A",
        "0.B",
        "1.A",
        "1.B",
        "2.A",
        "2.B",
        "done",
        "indices",
        "labels",
    ]


def test_resume_after_interruption(tmp_path):
    model, data = make_model("cnn"), make_data("cnn", n=N)
    full = run(model, data)
    crashing = Flaky(data, fail_at=7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(model, crashing, tmp_path, chunk_rows=3)
    meta = meta_of(tmp_path)
    assert meta["complete"] is False and meta["chunk_rows"] == 3
    assert done_flags(tmp_path) == [True, True, False, False]  # samples 0-5 of 11
    with pytest.raises(DataError, match="unfinished .6 of 11"):
        Features.load(tmp_path)

    resumed_data = Flaky(data)
    resumed = run(model, resumed_data, tmp_path, chunk_rows=5)  # the store keeps its chunks
    # the first batch checks the model; then only the missing ranges are computed
    assert resumed_data.served == [0, 1, *range(6, N)]
    torch.testing.assert_close(gram(resumed), gram(full), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(resumed.labels, full.labels)
    assert meta_of(tmp_path)["complete"] is True and meta_of(tmp_path)["chunk_rows"] == 3
    v1, p1 = row_max(resumed, progress=False)
    v2, p2 = row_max(full, progress=False)
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    np.testing.assert_array_equal(p1, p2)


def test_resume_with_another_batch_size_and_a_dataloader(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    with pytest.raises(RuntimeError):
        run(model, Flaky(data, fail_at=5), tmp_path, batch_size=2, chunk_rows=4)
    assert done_flags(tmp_path) == [True, False, False]
    resumed = run(model, DataLoader(data, batch_size=3), tmp_path)
    torch.testing.assert_close(gram(resumed), gram(run(model, data)), rtol=1e-12, atol=1e-12)


def test_resume_twice_with_dataloader(tmp_path):
    model, data = make_model("seq"), make_data("seq", n=N)
    for fail_at in (3, 8):
        with pytest.raises(RuntimeError):
            run(
                model,
                DataLoader(Flaky(data, fail_at=fail_at), batch_size=2),
                tmp_path,
                chunk_rows=2,
            )
    assert done_flags(tmp_path) == [True, True, True, True, False, False]
    resumed = run(model, DataLoader(data, batch_size=2), tmp_path)
    torch.testing.assert_close(gram(resumed), gram(run(model, data)), rtol=1e-12, atol=1e-12)


def test_interruption_in_the_first_range_starts_again(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    with pytest.raises(RuntimeError):
        run(model, Flaky(data, fail_at=5), tmp_path)
    with pytest.raises(DataError, match="unfinished .0 of 11"):
        Features.load(tmp_path)
    again = Flaky(data)
    feats = run(model, again, tmp_path)
    assert again.served == [0, 1, *range(N)]
    torch.testing.assert_close(gram(feats), gram(run(model, data)), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change",
    [
        {"model_seed": 1},
        {"kind": "pntk"},
        {"strategy": "materialised"},
        {"dtype": "float32"},
        {"n": N - 1},
        {"strategy": "projected", "proj_dim": 8},
    ],
)
def test_store_of_other_settings_is_refused(tmp_path, change):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    run(model, data, tmp_path)
    before = (tmp_path / "zarr.json").read_text()
    change = dict(change)
    other_model = make_model("mlp", seed=change.pop("model_seed", 0))
    other_data = make_data("mlp", n=change.pop("n", N))
    with pytest.raises(ConfigError, match="another model, dataset or setting"):
        run(other_model, other_data, tmp_path, **change)
    assert (tmp_path / "zarr.json").read_text() == before  # left as it was


def test_unfinished_store_of_another_model_is_refused(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    with pytest.raises(RuntimeError):
        run(model, Flaky(data, fail_at=5), tmp_path, chunk_rows=2)
    with pytest.raises(ConfigError):
        run(make_model("mlp", seed=3), data, tmp_path)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature store"):
        Features.load(tmp_path / "missing")
    with pytest.raises(MissingFileError, match="no feature store"):
        Features.load(tmp_path)


def test_identical_rerun_with_tuple_in_description(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    run(model, data, tmp_path, description={"classes": (0, 1)})
    run(model, data, tmp_path, description={"classes": (0, 1)})


def test_description_with_a_path(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    try:
        run(model, data, tmp_path / "f", description={"checkpoint": tmp_path / "model.pt"})
    except LpntkError:
        return  # a clear error is fine
    meta = meta_of(tmp_path / "f")
    assert meta["description"]["checkpoint"] == str(tmp_path / "model.pt")


def test_store_pairs_with_in_memory_features(tmp_path):
    model = make_model("seq")
    a, b = make_data("seq", n=N, seed=1), make_data("seq", n=5, seed=2)
    disk = run(model, a, tmp_path)
    mem_a, mem_b = run(model, a), run(model, b)
    from lpntk.kernel import kernel_block

    torch.testing.assert_close(
        kernel_block(disk, None, mem_b, None), kernel_block(mem_a, None, mem_b, None)
    )
    torch.testing.assert_close(
        kernel_block(mem_b, None, disk, None), kernel_block(mem_b, None, mem_a, None)
    )


class Labelled(Dataset):
    """Inputs of ``base`` with ``labels``, exposed as ``.labels`` (as lpntk's datasets do)."""

    def __init__(self, base, labels):
        self.base, self.labels = base, labels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], int(self.labels[i])


def test_store_of_other_labels_is_refused(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    y = data.tensors[1].numpy()
    run(model, Labelled(data, y), tmp_path)
    with pytest.raises(ConfigError, match="labels_hash differ"):
        run(model, Labelled(data, (y + 1) % 3), tmp_path)


def test_reads_a_store_of_the_first_format(tmp_path):
    """The fixture was written by the previous store (.npy + meta.json) from the same seeded
    model and data; it loads, pairs, and is reused by compute_features, never rewritten."""
    store = tmp_path / "old"
    shutil.copytree(FORMAT1, store)
    model, data = make_model("seq"), make_data("seq", n=N)
    old = Features.load(store)
    assert old.meta["format"] == 1 and old.source == str(store)
    assert all(isinstance(a, np.memmap) for a in old.arrays.values())
    new = run(model, data, tmp_path / "new", batch_size=4)
    # written on another machine: the same numbers up to the last bits of its float sums
    torch.testing.assert_close(gram(old), gram(new), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(old.labels, new.labels)
    again = run(model, Flaky(data, fail_at=0), store, batch_size=4)  # found, not recomputed
    assert again.meta == old.meta and not (store / "zarr.json").exists()
    with pytest.raises(ConfigError, match="another model"):
        run(make_model("seq", seed=1), data, store)
    (store / "1.A.npy").write_bytes(b"truncated")
    with pytest.raises(DataError, match="1.A.npy is truncated or corrupt"):
        Features.load(store)


def test_store_at_a_url(tmp_path):
    """A store given as a URL goes through fsspec (here its in-memory file system)."""
    model, data = make_model("mlp"), make_data("mlp", n=N)
    url = "memory://lpntk-test/features"
    feats = run(model, data, url, chunk_rows=4)
    assert feats.source == url and Features.load(url).n == N
    torch.testing.assert_close(gram(feats), gram(run(model, data)), rtol=0, atol=0)


def test_never_writes_into_a_folder_of_other_files(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=N)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files and no feature store"):
        run(model, data, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    other = zarr.open_group(str(tmp_path / "z"), mode="w")
    other.create_array("x", shape=(3,), dtype="int8")
    with pytest.raises(ConfigError, match="not an lpntk feature store"):
        run(model, data, tmp_path / "z")
    assert list(zarr.open_group(str(tmp_path / "z"), mode="r").array_keys()) == ["x"]
