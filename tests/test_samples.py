"""The front object on a model and data that are not MNIST: a small MLP on random data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lpntk
from lpntk.analysis import farthest_point_clusters, redundant_samples, relationships
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
