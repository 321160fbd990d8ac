"""Redundancy and farthest point clustering against plain dense implementations (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lpntk._errors import ConfigError
from lpntk.analysis import (
    drop_redundant,
    farthest_point_clusters,
    redundant_samples,
    relationships,
)
from lpntk.kernel import Features, Piece, compute_features, gram

from .test_kernel_helpers import make_data, make_model


def random_features(n=60, p=6, k=3, seed=0, factored=True) -> Features:
    """Random features of a scalar kind: a dense piece plus a factored one (T = 2), with norms
    spread over an order of magnitude so that some samples are redundant and some are not."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(n, generator=g, dtype=torch.float64))
    base = torch.randn(4, p, generator=g, dtype=torch.float64)
    mix = torch.randn(n, 4, generator=g, dtype=torch.float64).abs()
    dense = mix @ base + 0.3 * torch.randn(n, p, generator=g, dtype=torch.float64)
    dense = dense * scale[:, None]
    arrays = {"0.F": dense[:, None, :].numpy()}
    pieces = [Piece("dense", "dense", {"F": (1, p)})]
    if factored:
        a = torch.randn(n, 2, 3, generator=g, dtype=torch.float64)
        b = torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64) * scale[:, None, None, None]
        arrays.update({"1.A": a.numpy(), "1.B": b.numpy()})
        pieces.append(Piece("fact", "factored", {"A": (2, 3), "B": (1, 2, 2)}))
    labels = np.arange(n) % k
    meta = {"outputs": 1, "kind": "lpntk", "dtype": "float64", "strategy": "factored"}
    return Features(pieces, arrays, labels, np.arange(100, 100 + n)[::-1].copy(), meta)


def dense_redundancy(K: np.ndarray, labels, indices, one_sided=False, within_class=False):
    n = len(K)
    witness = np.full(n, -1)
    for i in range(n):
        ok = np.arange(n) != i
        if one_sided:
            ok &= indices > indices[i]
        if within_class:
            ok &= labels == labels[i]
        if ok.any():
            row = np.where(ok, K[i], -np.inf)
            j = int(np.argmax(row))
            if row[j] > K[i, i]:
                witness[i] = j
    return witness


@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize("within_class", [False, True])
@pytest.mark.parametrize("memory", [None, 1])  # 1 byte: the smallest blocks (16 rows)
@pytest.mark.parametrize("bounded", [None, [0], [1]])  # pieces bounded by Cauchy-Schwarz first
def test_redundancy_equals_the_dense_definition(
    one_sided, within_class, memory, bounded, monkeypatch
):
    from lpntk.kernel import ops

    if bounded is not None:
        monkeypatch.setattr(ops, "bound_plan", lambda X, norms: bounded)
    for seed in range(3):
        X = random_features(n=70, seed=seed)
        K = gram(X).numpy()
        want = dense_redundancy(K, X.labels, X.indices, one_sided, within_class)
        r = redundant_samples(X, one_sided, within_class, memory=memory, progress=False)
        np.testing.assert_array_equal(r.witness, want)
        np.testing.assert_array_equal(r.redundant, want >= 0)
        assert 0 < r.fraction < 1
        has = r.redundant
        np.testing.assert_allclose(r.witness_kappa[has], K[has, want[has]], rtol=1e-12)
        # a witness is larger than its sample; the largest sample is never redundant
        assert (np.diag(K)[r.witness[has]] > np.diag(K)[has]).all()
        assert not r.redundant[np.argmax(np.diag(K))]


def test_the_bound_plan_skips_only_costly_pieces_of_small_share():
    from lpntk.kernel.ops import bound_plan

    X = random_features(n=10)  # a dense piece of 6 numbers, a factored one of 4 x (3 + 2)

    def plan(share):  # every sample with these shares of kappa(x, x)
        return bound_plan(X, torch.sqrt(torch.tensor([share, share], dtype=torch.float64)) * 3)

    assert plan([0.05, 0.95]) == []  # the dense piece is the cheap one
    assert plan([0.95, 0.05]) == [1]  # the factored piece costs 77%
    assert plan([0.6, 0.4]) == []  # it holds too much of the kernel
    assert bound_plan(random_features(n=10, factored=False), torch.ones(10, 1)) == []


def test_bounded_searches_in_float32_equal_the_plain_ones(monkeypatch):
    from lpntk.kernel import ops

    X = random_features(n=300, seed=8)
    X32 = Features(
        X.pieces,
        {k: v.astype(np.float32) for k, v in X.arrays.items()},
        X.labels,
        X.indices,
        {**X.meta, "dtype": "float32"},
    )
    results = {}
    for bounded in ([], [0], [1]):
        monkeypatch.setattr(ops, "bound_plan", lambda X, norms, b=bounded: b)
        red = redundant_samples(X32, memory=1 << 14, progress=False)
        results[str(bounded)] = red, farthest_point_clusters(X32, 40, progress=False)
    plain, clusters = results["[]"]
    assert 0 < plain.fraction < 1
    for r, c in results.values():
        np.testing.assert_array_equal(r.witness, plain.witness)
        np.testing.assert_allclose(r.witness_kappa, plain.witness_kappa, rtol=1e-5)
        np.testing.assert_array_equal(c.cluster, clusters.cluster)


def test_cover_keeps_a_witness_for_every_dropped_sample():
    X = random_features(n=80, seed=4)
    r = redundant_samples(X, progress=False)
    keep_all, keep_cover = drop_redundant(r, "all"), drop_redundant(r, "cover")
    np.testing.assert_array_equal(keep_all, ~r.redundant)
    dropped = ~keep_cover
    assert dropped.any() and (dropped <= r.redundant).all()
    assert keep_cover[r.witness[dropped]].all()
    assert keep_cover.sum() >= keep_all.sum()
    # greedy by decreasing norm: a redundant sample is kept only because its witness was dropped
    kept_redundant = keep_cover & r.redundant
    assert (~keep_cover[r.witness[kept_redundant]]).all()


def test_a_duplicate_is_not_redundant_but_a_scaled_copy_is():
    X = random_features(n=20, seed=5, factored=False)
    F = X.arrays["0.F"]
    F[1] = F[0]  # an exact duplicate: kappa(x, x') = kappa(x, x), not larger
    F[2] = 0.5 * F[3]  # half of sample 3: kappa(2, 3) = 2 kappa(2, 2)
    r = redundant_samples(X, progress=False)
    K = gram(X).numpy()
    assert K[1, 0] == K[0, 0] and r.witness[1] != 0 and r.witness[0] != 1
    assert K[2, 3] > K[2, 2] and r.redundant[2]
    np.testing.assert_array_equal(r.witness, dense_redundancy(K, X.labels, X.indices))
    np.testing.assert_array_equal(shared_pass(X).witness, r.witness)


def shared_pass(X):
    """The redundancy of :class:`Witnesses` fed by a pass with another reducer."""
    from lpntk.analysis import Witnesses
    from lpntk.kernel import RowCount, diagonal, reduce_rows

    w = Witnesses(X)
    reduce_rows(X, [RowCount(0.0), w], progress=False)
    return w.redundancy(diagonal(X))


def test_the_same_image_twice_is_a_tie_not_redundant(monkeypatch):
    """Two copies of an image with its label: kappa(x, x') = kappa(x, x), but in float32 the
    two sums round apart (by 3e-7 relative for LeNet-5); a tie is not redundancy."""
    from torch.utils.data import TensorDataset

    from lpntk.kernel import diagonal, ops
    from lpntk.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10).eval()
    x, y = torch.rand(40, 1, 28, 28), torch.arange(40) % 10
    x[20:], y[20:] = x[:20], y[:20]
    X = compute_features(model, TensorDataset(x, y), "lpntk", progress=False)
    K, d = gram(X).numpy(), diagonal(X).numpy()
    pairs = np.arange(20)
    rounded = (K[pairs, pairs + 20] > d[pairs]) | (K[pairs + 20, pairs] > d[pairs + 20])
    assert rounded.any()  # without the tolerance these would be called redundant
    assert not redundant_samples(X, progress=False).redundant.any()
    assert not shared_pass(X).redundant.any()
    monkeypatch.setattr(ops, "tie_tolerance", lambda X: 0.0)
    assert redundant_samples(X, progress=False).redundant.any()
    assert shared_pass(X).redundant.any()


# -- farthest point clustering ----------------------------------------------------------------
def dense_fpc(K: np.ndarray, m: int, measure: str):
    """Alg. 3 written out on a dense matrix."""
    d = np.diag(K)
    if measure == "metric":
        S = -(d[:, None] + d[None, :] - 2 * K)
    elif measure == "cosine":
        S = K / np.sqrt(np.outer(d, d))
    else:
        S = K
    n = len(K)
    centroids = [int(np.argmax(d))]
    cluster = np.zeros(n, dtype=int)
    while len(centroids) < m:
        best, new = np.inf, -1
        for j, c in enumerate(centroids):
            members = [i for i in range(n) if cluster[i] == j and i not in centroids]
            if members:
                i = members[int(np.argmin(S[c, members]))]
                if S[c, i] < best:
                    best, new = S[c, i], i
        centroids.append(new)
        for i in range(n):
            if i not in centroids[:-1] and (i == new or S[i, centroids[cluster[i]]] < S[i, new]):
                cluster[i] = len(centroids) - 1
    return cluster, centroids


@pytest.mark.parametrize("measure", ["lpntk", "metric", "cosine"])
@pytest.mark.parametrize("bounded", [None, [0], [1]])  # pieces bounded by Cauchy-Schwarz first
def test_fpc_equals_a_plain_dense_alg3(measure, bounded, monkeypatch):
    from lpntk.kernel import ops

    if bounded is not None:
        monkeypatch.setattr(ops, "bound_plan", lambda X, norms: bounded)
    X = random_features(n=50, seed=6)
    K = gram(X).numpy()
    for m in (1, 2, 7, 20):
        c = farthest_point_clusters(X, m, measure, progress=False)
        want_cluster, want_centroids = dense_fpc(K, m, measure)
        np.testing.assert_array_equal(c.centroids, want_centroids)
        np.testing.assert_array_equal(c.cluster, want_cluster)
        assert len(c.centroids) == m and len(set(c.centroids.tolist())) == m
        assert (c.cluster[c.centroids] == np.arange(m)).all()  # each centroid in its cluster
        assert c.sizes.sum() == X.n and (c.sizes >= 1).all()


def test_fpc_per_class_and_fractions():
    X = random_features(n=60, seed=7)
    c = farthest_point_clusters(X, 0.2, per_class=True, progress=False)
    assert len(c.centroids) == 12
    for cl in range(len(c.centroids)):  # every cluster holds one class only
        assert len(np.unique(X.labels[c.cluster == cl])) == 1
    again = farthest_point_clusters(X, 0.2, per_class=True, progress=False)
    np.testing.assert_array_equal(c.cluster, again.cluster)  # deterministic
    with pytest.raises(ValueError, match="m"):
        farthest_point_clusters(X, 0, progress=False)
    with pytest.raises(ValueError, match="one per class"):
        farthest_point_clusters(X, 2, per_class=True, progress=False)


def test_on_features_of_a_real_model():
    model, data = make_model("cnn"), make_data("cnn", n=40)
    X = compute_features(model, data, "lpntk", dtype="float64", progress=False)
    K = gram(X).numpy()
    r = redundant_samples(X, progress=False)
    np.testing.assert_array_equal(r.witness, dense_redundancy(K, X.labels, X.indices))
    c = farthest_point_clusters(X, 8, progress=False)
    np.testing.assert_array_equal(c.cluster, dense_fpc(K, 8, "lpntk")[0])


# -- relationships ----------------------------------------------------------------------------
def dense_relationships(K: np.ndarray, labels, t, eps):
    d = np.diag(K)
    ru, ro = K / d[:, None], K / d[None, :]
    off = ~np.eye(len(K), dtype=bool)
    same = labels[:, None] == labels[None, :]
    masks = {
        "interchangeable": (ru >= t) & (ro >= t) & off,
        "contradictory": (ru <= -t) & (ro <= -t) & off,
        "unrelated": (np.abs(ru) <= eps) & (np.abs(ro) <= eps) & off,
    }
    return masks, same


@pytest.mark.parametrize("memory", [None, 1])
def test_relationship_counts_equal_the_dense_definition(memory):
    X = random_features(n=70, seed=8)
    K = gram(X).numpy()
    for t, eps in ((0.51, 0.3), (0.75, 0.1), (1.0, 0.0)):
        rel = relationships(X, t, eps, memory=memory, progress=False)
        masks, same = dense_relationships(K, X.labels, t, eps)
        for kind, mask in masks.items():
            np.testing.assert_array_equal(rel.counts[kind][:, 0], (mask & same).sum(1))
            np.testing.assert_array_equal(rel.counts[kind][:, 1], (mask & ~same).sum(1))
            want = np.zeros((3, 3), dtype=int)
            np.add.at(
                want,
                (X.labels[:, None].repeat(70, 1)[mask], X.labels[None, :].repeat(70, 0)[mask]),
                1,
            )
            np.testing.assert_array_equal(rel.classes[kind], want)
        assert rel.table()["unrelated_other"].shape == (70,)
    assert relationships(X, 0.51, 0.3, progress=False).counts["interchangeable"].sum() > 0


def test_constructed_cases_of_appendix_d1():
    """A duplicate is interchangeable with its copy; the same input with the other label
    (binary) is contradictory; orthogonal features are unrelated."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    model = model.double()
    x = torch.randn(4, dtype=torch.float64)
    data = [(x, 0), (x, 0), (x, 1)]
    X = compute_features(model, data, "lpntk", dtype="float64", progress=False)
    rel = relationships(X, t=1.0, eps=0.0, progress=False)
    assert rel.counts["interchangeable"][0].tolist() == [1, 0]  # its copy, same class
    assert rel.counts["contradictory"][0].tolist() == [0, 1]  # the other label
    assert rel.counts["contradictory"][2].tolist() == [0, 2]
    # orthogonal feature vectors (a dense piece) are unrelated
    F = np.zeros((3, 1, 3))
    F[0, 0, 0], F[1, 0, 1], F[2, 0, 2] = 1.0, 2.0, 3.0
    meta = {"outputs": 1, "kind": "lpntk", "dtype": "float64", "strategy": "factored"}
    Y = Features([Piece("d", "dense", {"F": (1, 3)})], {"0.F": F}, [0, 0, 1], [0, 1, 2], meta)
    rel = relationships(Y, eps=0.0, progress=False)
    assert rel.counts["unrelated"].sum(1).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="1/2, 1"):
        relationships(Y, t=0.4, progress=False)


@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize("within_class", [False, True])
@pytest.mark.parametrize("memory", [None, 1])
def test_witnesses_in_a_shared_pass_equal_the_search(one_sided, within_class, memory):
    from lpntk.analysis import Witnesses
    from lpntk.kernel import RowTopK, diagonal, reduce_rows

    for seed in range(3):
        X = random_features(n=70, seed=seed)
        K = gram(X).numpy()
        want = dense_redundancy(K, X.labels, X.indices, one_sided, within_class)
        w, most = Witnesses(X, one_sided, within_class), RowTopK(2)
        reduce_rows(X, [most, w], memory=memory, progress=False)
        r = w.redundancy(diagonal(X))
        search = redundant_samples(X, one_sided, within_class, progress=False)
        np.testing.assert_array_equal(r.witness, want)
        for name in ("redundant", "witness", "self_kappa", "indices"):
            np.testing.assert_array_equal(getattr(r, name), getattr(search, name))
        np.testing.assert_allclose(r.witness_kappa, search.witness_kappa, rtol=1e-12)
        assert (r.one_sided, r.within_class) == (one_sided, within_class)
        assert 0 < r.fraction < 1
        if not (one_sided or within_class):  # the plain variant: each row's largest other
            np.testing.assert_array_equal(w.argmax_position, most.positions[:, 0])
    with pytest.raises(ConfigError, match="expected 70 values"):
        w.redundancy(diagonal(X)[:5])
    with pytest.raises(ConfigError, match="no pass has fed"):
        Witnesses(X).redundancy(diagonal(X))
    with pytest.raises(ConfigError, match="of 70 samples; got a pass over 20"):
        reduce_rows(random_features(n=20), [Witnesses(X)], progress=False)
