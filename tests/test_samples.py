"""The front object on a model and data that are not MNIST: a small MLP on random data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lpntk
from lpntk.analysis import (
    Witnesses,
    farthest_point_clusters,
    redundant_samples,
    relationships,
)
from lpntk.kernel import compute_features


def mlp_and_data(n=48, d=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 10), nn.ReLU(), nn.Linear(10, k)).double()
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    return model, TensorDataset(x, y)


def test_sample_kernel_on_a_small_mlp():
    model, data = mlp_and_data()
    sk = lpntk.SampleKernel(model, data, dtype="float64", progress=False)
    X = compute_features(model, data, "lpntk", dtype="float64", progress=False)
    red = sk.redundant()
    np.testing.assert_array_equal(red.witness, redundant_samples(X, progress=False).witness)
    assert sk.redundant() is red  # computed once
    shared = lpntk.SampleKernel(features=X, progress=False)
    w = Witnesses(X, within_class=True)
    shared.relationships(also=[w])  # the search inside the counting pass
    found = shared.redundant(within_class=True, found=w)
    want = redundant_samples(X, within_class=True, progress=False)
    np.testing.assert_array_equal(found.witness, want.witness)
    assert shared.redundant(within_class=True) is found
    with pytest.raises(ValueError, match="another variant"):
        shared.redundant(found=w)
    c = sk.clusters(6)
    np.testing.assert_array_equal(c.cluster, farthest_point_clusters(X, 6, progress=False).cluster)
    rel = sk.relationships(t=0.6, eps=0.1)
    want = relationships(X, 0.6, 0.1, progress=False)
    np.testing.assert_array_equal(rel.counts["unrelated"], want.counts["unrelated"])
    pruned = sk.prune("redundant", rule="cover")
    assert pruned.manifest["strategy"] == "redundant" and len(pruned.kept) <= 48
    assert len(sk.prune("random", size=10, seed=0).kept) == 10
    with pytest.raises(ValueError, match="unknown strategy"):
        sk.prune("magic")
    with pytest.raises(ValueError, match="strategy 'random'"):
        sk.prune("random", bogus=1)
    table = sk.table()
    assert list(table["index"]) == list(range(48))
    for col in (
        "label",
        "norm",
        "redundant",
        "witness",
        "cluster[6,lpntk,False]",
        "interchangeable_same[0.6,0.1]",
    ):
        assert col in table.columns, col
    np.testing.assert_allclose(table["norm"] ** 2, table["self_kernel"])
    assert (table.loc[table["redundant"], "witness"] >= 0).all()
    assert (table.loc[~table["redundant"], "witness"] == -1).all()


def test_sample_kernel_needs_inputs_and_a_scalar_kind():
    with pytest.raises(ValueError, match="model and a dataset"):
        lpntk.SampleKernel()
    model, data = mlp_and_data()
    with pytest.raises(ValueError, match="scalar kind"):
        lpntk.SampleKernel(model, data, "entk", progress=False)


def test_every_result_frame_is_indexed_by_original_index(monkeypatch):
    """With a Subset, the result arrays are in store order and every to_frame() and table() in
    original order, row for row the same samples."""
    from torch.utils.data import Subset

    import lpntk.samples as samples

    model, data = mlp_and_data(n=60)
    order = np.random.default_rng(0).permutation(60)[:40]  # a shuffled subset
    sub = Subset(data, order.tolist())
    sk = lpntk.SampleKernel(model, sub, dtype="float64", progress=False)
    np.testing.assert_array_equal(sk.indices, order)
    red, cl, rel = sk.redundant(), sk.clusters(5), sk.relationships(t=0.6)
    score = sk.redundancy_score()
    for result in (red, cl, rel):
        frame = result.to_frame()
        assert frame.index.name == "index" and list(frame.index) == sorted(order)
    frame = red.to_frame()
    at = {int(i): p for p, i in enumerate(order)}  # original index -> store position
    for i in frame.index[:10]:
        assert frame.loc[i, "redundant"] == red.redundant[at[i]]
        w = red.witness[at[i]]
        assert frame.loc[i, "witness"] == (order[w] if w >= 0 else -1)
        assert cl.to_frame().loc[i, "cluster"] == cl.cluster[at[i]]
    assert np.array_equal(score > 1, red.redundant)  # the continuous score, thresholded
    table = sk.table()
    assert list(table["index"]) == sorted(order)
    np.testing.assert_allclose(
        table["redundancy_score"], score[[at[i] for i in table["index"]]], rtol=1e-12
    )
    assert (table["nearest"].isin(order)).all() and "witness_kappa" not in table
    # sk.prune reuses the redundancy search already done
    monkeypatch.setattr(samples, "redundant_samples", None)  # would fail if called again
    assert len(sk.prune("redundant", rule="cover").kept) <= 40
