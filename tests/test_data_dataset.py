"""ArrayDataset, subsets, and the seeded stratified splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lpntk._errors import ConfigError, DataError
from lpntk.data import ArrayDataset, stratified_subset, train_val_split


def make(n=20, classes=4, channels=1, seed=0, labels=None, **kw) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, channels, 3, 2), dtype=np.uint8)
    if labels is None:
        labels = np.arange(n) % classes
    names = tuple(f"c{i}" for i in range(classes))
    return ArrayDataset(images, np.asarray(labels), names, name="toy", **kw)


# --------------------------------------------------------------------------- construction


def test_defaults_and_properties():
    ds = make(channels=3)
    assert len(ds) == 20 and ds.num_classes == 4 and ds.input_shape == (3, 3, 2)
    assert ds.labels.dtype == np.int64 and ds.indices.dtype == np.int64
    np.testing.assert_array_equal(ds.indices, np.arange(20))
    np.testing.assert_array_equal(ds.class_counts(), [5, 5, 5, 5])
    assert len(ds.mean) == 3 and len(ds.std) == 3
    assert isinstance(ds, torch.utils.data.Dataset)
    assert "toy" in repr(ds)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((2, 3, 3), np.uint8), [0, 1], "4-D uint8"),
        (np.zeros((2, 1, 3, 3), np.float32), [0, 1], "4-D uint8"),
        (np.zeros((2, 1, 3, 3), np.uint8), [0, 1, 1], "length 2"),
        (np.zeros((2, 1, 3, 3), np.uint8), [[0, 1]], "1-D integer"),
        (np.zeros((2, 1, 3, 3), np.uint8), [0.0, 1.0], "1-D integer"),
        (np.zeros((2, 1, 3, 3), np.uint8), [0, 3], r"label 3 is out of range; expected .*0\.\.2"),
        (np.zeros((2, 1, 3, 3), np.uint8), [-1, 0], "label -1 is out of range"),
    ],
)
def test_constructor_validation(images, labels, match):
    with pytest.raises(DataError, match=match):
        ArrayDataset(images, np.asarray(labels), ("a", "b", "c"))


def test_constructor_validation_indices_and_stats():
    images = np.zeros((2, 1, 3, 3), np.uint8)
    with pytest.raises(DataError, match="indices"):
        ArrayDataset(images, [0, 1], ("a", "b"), indices=[0])
    with pytest.raises(DataError, match="unique"):
        ArrayDataset(images, [0, 1], ("a", "b"), indices=[4, 4])
    with pytest.raises(DataError, match="one value per channel"):
        ArrayDataset(images, [0, 1], ("a", "b"), mean=(0.5, 0.5), std=(1.0, 1.0))
    with pytest.raises(DataError, match="classes is empty"):
        ArrayDataset(images, [0, 0], ())
    empty = ArrayDataset(np.zeros((0, 1, 3, 3), np.uint8), np.zeros(0, np.int64), ("a",))
    assert len(empty) == 0


def test_getitem_normalises():
    images = np.array([[[[0, 255]]], [[[51, 102]]]], dtype=np.uint8)
    ds = ArrayDataset(images, [0, 1], ("a", "b"), mean=(0.2,), std=(0.5,))
    x, y = ds[1]
    assert x.dtype == torch.float32 and x.shape == (1, 1, 2) and y == 1 and isinstance(y, int)
    torch.testing.assert_close(x, torch.tensor([[[0.0, 0.4]]]))
    x0, _ = ds[0]
    torch.testing.assert_close(x0, torch.tensor([[[-0.4, 1.6]]]))


def test_default_stats_normalise_to_zero_mean_unit_std():
    ds = make(n=200, channels=3)
    x, y = ds.tensors()
    assert x.shape == (200, 3, 3, 2) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0
    )


def test_tensors_matches_getitem_and_dtype():
    ds = make(n=6, channels=3)
    x, y = ds.tensors(dtype=torch.float64)
    assert x.dtype == torch.float64
    for i in range(len(ds)):
        xi, yi = ds[i]
        torch.testing.assert_close(x[i].float(), xi)
        assert int(y[i]) == yi


# --------------------------------------------------------------------------- subsets


def test_a_whole_batch_is_what_its_items_collate_to():
    """lpntk_batch (how feature extraction reads an ArrayDataset) against the items."""
    from torch.utils.data import default_collate

    from lpntk.kernel import compute_features

    ds = make(n=20, channels=3)
    x, y = ds.lpntk_batch(3, 17)
    cx, cy = default_collate([ds[i] for i in range(3, 17)])
    assert torch.equal(x, cx) and torch.equal(y, cy) and x.dtype == cx.dtype

    class Items(torch.utils.data.Dataset):  # the same data without the batch method
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 3 * 2, ds.num_classes))
    a = compute_features(model, ds, batch_size=6, progress=False)
    b = compute_features(model, Items(), batch_size=6, progress=False)
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        assert np.array_equal(np.asarray(a.arrays[k]), np.asarray(b.arrays[k])), k


def test_subset_keeps_original_indices_and_nests():
    ds = make()
    a = ds.subset([3, 7, 10, 11], split="part")
    np.testing.assert_array_equal(a.indices, [3, 7, 10, 11])
    assert a.split == "part" and a.classes == ds.classes and a.mean == ds.mean
    b = a.subset([1, 3])
    np.testing.assert_array_equal(b.indices, [7, 11])
    np.testing.assert_array_equal(b.images, ds.images[[7, 11]])
    np.testing.assert_array_equal(b.labels, ds.labels[[7, 11]])
    assert b.split == "part"
    mask = np.zeros(len(ds), bool)
    mask[[0, 5]] = True
    np.testing.assert_array_equal(ds.subset(mask).indices, [0, 5])
    np.testing.assert_array_equal(ds.subset(torch.tensor([4, 2])).indices, [4, 2])
    np.testing.assert_array_equal(ds.subset(range(3)).indices, [0, 1, 2])


@pytest.mark.parametrize(
    "positions, match",
    [
        ([], "empty"),
        ([0, 20], r"out of range: \[20\]"),
        ([-1], "out of range"),
        ([1, 1], "repeats"),
    ],
)
def test_subset_errors(positions, match):
    with pytest.raises(DataError, match=match):
        make().subset(positions)


def test_select_by_original_index():
    ds = make().subset([2, 4, 6, 8, 10])
    sel = ds.select([10, 4])
    np.testing.assert_array_equal(sel.indices, [10, 4])
    np.testing.assert_array_equal(ds.select(torch.tensor([6])).indices, [6])
    np.testing.assert_array_equal(sel.images, make().images[[10, 4]])
    with pytest.raises(DataError, match=r"not in this dataset, e\.g\. \[3, 99\]"):
        ds.select([4, 3, 99])
    with pytest.raises(DataError, match="empty"):
        ds.select([])


def test_filter_classes_relabel_and_names():
    ds = make(n=12, classes=4)
    f = ds.filter_classes([3, "c1"])
    assert f.classes == ("c3", "c1")
    np.testing.assert_array_equal(f.indices, [1, 3, 5, 7, 9, 11])
    np.testing.assert_array_equal(f.labels, [1, 0, 1, 0, 1, 0])
    assert ds.filter_classes("c2").classes == ("c2",)
    g = ds.filter_classes([1, 3], relabel=False)
    assert g.classes == ds.classes
    np.testing.assert_array_equal(g.labels, [1, 3, 1, 3, 1, 3])
    with pytest.raises(ConfigError, match="unknown class name 'zz'"):
        ds.filter_classes(["zz"])
    with pytest.raises(ConfigError, match="unknown class 7"):
        ds.filter_classes([7])
    with pytest.raises(DataError, match="empty"):
        ds.filter_classes([])
    only2 = make(n=4, classes=4, labels=[0, 0, 1, 1])
    with pytest.raises(DataError, match="empty"):
        only2.filter_classes([2])


# --------------------------------------------------------------------------- splits


def check_split(ds, train, val, fraction):
    assert val.split == "val" and train.split == ds.split
    assert not set(train.indices) & set(val.indices)
    assert sorted([*train.indices, *val.indices]) == sorted(ds.indices)
    assert np.all(np.diff(train.indices) > 0) and np.all(np.diff(val.indices) > 0)
    counts, vcounts = ds.class_counts(), val.class_counts()
    for c, (n, v) in enumerate(zip(counts, vcounts, strict=True)):
        if n >= 2:
            assert 1 <= v <= n - 1, c
            assert abs(v - fraction * n) <= 1, (c, v, n)
        else:
            assert v == 0
    # labels travel with their samples
    for part in (train, val):
        np.testing.assert_array_equal(part.labels, ds.labels[part.indices])


def test_train_val_split_stratified_and_seeded():
    ds = make(n=103, classes=5, labels=np.r_[[0] * 50, [1] * 30, [2] * 20, [3, 3, 4]])
    train, val = train_val_split(ds, 0.2, seed=3)
    check_split(ds, train, val, 0.2)
    train2, val2 = train_val_split(ds, 0.2, seed=3)
    np.testing.assert_array_equal(val.indices, val2.indices)
    _, val3 = train_val_split(ds, 0.2, seed=4)
    assert not np.array_equal(val.indices, val3.indices)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_train_val_split_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        train_val_split(make(), fraction)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=2, max_size=60),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_train_val_split_properties(labels, fraction, seed):
    labels = np.asarray(labels)
    if np.bincount(labels).max() < 2:
        return  # no class can give a validation sample
    ds = make(n=len(labels), classes=5, labels=labels)
    train, val = train_val_split(ds, fraction, seed=seed)
    check_split(ds, train, val, fraction)
    _, again = train_val_split(ds, fraction, seed=seed)
    np.testing.assert_array_equal(val.indices, again.indices)


def test_split_of_subset_keeps_original_indices():
    ds = make(n=40).subset(np.arange(10, 40))
    train, val = train_val_split(ds, 0.25, seed=0)
    assert set(train.indices) | set(val.indices) == set(range(10, 40))


def test_stratified_subset_proportions():
    labels = np.r_[np.zeros(60), np.ones(30), 2 * np.ones(10)].astype(int)
    ds = make(n=100, classes=3, labels=labels)
    sub = stratified_subset(ds, 10, seed=1)
    np.testing.assert_array_equal(sub.class_counts(), [6, 3, 1])
    assert np.all(np.diff(sub.indices) > 0)
    np.testing.assert_array_equal(stratified_subset(ds, 10, seed=1).indices, sub.indices)
    assert not np.array_equal(stratified_subset(ds, 10, seed=2).indices, sub.indices)
    # largest remainder: 7 * (0.6, 0.3, 0.1) = 4.2, 2.1, 0.7 -> 4, 2, 1
    np.testing.assert_array_equal(stratified_subset(ds, 7).class_counts(), [4, 2, 1])
    assert len(stratified_subset(ds, 100)) == 100


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=1, max_size=50), data=st.data())
def test_stratified_subset_properties(labels, data):
    labels = np.asarray(labels)
    ds = make(n=len(labels), classes=4, labels=labels)
    size = data.draw(st.integers(1, len(ds)))
    sub = stratified_subset(ds, size, seed=0)
    assert len(sub) == size and len(set(sub.indices)) == size
    expected = size * ds.class_counts() / len(ds)
    assert np.all(np.abs(sub.class_counts() - expected) < 1)


@pytest.mark.parametrize("size", [0, 21, -1, 2.5])
def test_stratified_subset_bad_size(size):
    with pytest.raises(DataError, match=r"1\.\.20"):
        stratified_subset(make(), size)
