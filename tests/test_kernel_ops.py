"""Gram invariants and streaming row reductions against the dense matrix (float64)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from lpntk import ConfigError
from lpntk.kernel import (
    RowCount,
    RowMax,
    RowTopK,
    block_size,
    compute_features,
    diagonal,
    gram,
    kernel_block,
    reduce_rows,
    row_max,
)

from .test_kernel_helpers import make_data, make_model

SCALAR_KINDS = ["lpntk", "pntk", "loss"]


def feats_for(name, kind, n, seed, strategy="factored"):
    model = make_model(name, seed=seed % 3)
    data = make_data(name, n=n, seed=seed)
    return compute_features(model, data, kind, strategy, dtype="float64", progress=False)


def squared_norms(X) -> np.ndarray:
    """Sum over pieces of each sample's squared feature norm, straight from the arrays."""
    out = np.zeros((X.n, X.m, X.m))
    for i, p in enumerate(X.pieces):
        if p.form == "dense":
            f = np.asarray(X.arrays[f"{i}.F"])
            out += np.einsum("nkp,nlp->nkl", f, f)
        else:
            a, b = np.asarray(X.arrays[f"{i}.A"]), np.asarray(X.arrays[f"{i}.B"])
            g = np.einsum("ntp,nkto->nkop", a, b)  # the layer's per-sample gradient rows
            out += np.einsum("nkop,nlop->nkl", g, g)
    return out[:, 0, 0] if X.m == 1 else out


# -- gram invariants -----------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(
    name=st.sampled_from(["mlp", "cnn_generic", "seq", "custom"]),
    kind=st.sampled_from(["lpntk", "pntk", "loss", "entk"]),
    n=st.integers(1, 10),
    seed=st.integers(0, 1000),
    strategy=st.sampled_from(["factored", "materialised"]),
)
def test_gram_invariants(name, kind, n, seed, strategy):
    X = feats_for(name, kind, n, seed, strategy)
    g = gram(X)
    if kind == "entk":  # the (N K) x (N K) matrix of all blocks
        k = X.m
        assert g.shape == (n, n, k, k)
        g = g.permute(0, 2, 1, 3).reshape(n * k, n * k)
    torch.testing.assert_close(g, g.T, rtol=1e-12, atol=1e-12 * float(g.abs().max()))
    eig = torch.linalg.eigvalsh((g + g.T) / 2)
    assert float(eig.min()) >= -1e-8 * float(torch.trace(g))
    d = diagonal(X)
    np.testing.assert_allclose(d.numpy(), squared_norms(X), rtol=1e-10, atol=1e-12)
    gd = gram(X)
    gd = gd[torch.arange(n), torch.arange(n)]
    np.testing.assert_allclose(d.numpy(), gd.numpy(), rtol=1e-10, atol=1e-12)


def test_diagonal_of_dense_piece_is_squared_norm():
    X = feats_for("mlp", "lpntk", 6, 0, "materialised")
    f = X.arrays["0.F"][:, 0]
    np.testing.assert_allclose(diagonal(X).numpy(), (f**2).sum(1), rtol=1e-12)


# -- streaming reductions ------------------------------------------------------------------------
N, N2 = 50, 37


@functools.cache
def stream_setup(kind):
    model = make_model("seq", seed=2)
    X = compute_features(
        model, make_data("seq", n=N, seed=5), kind, dtype="float64", progress=False
    )
    Y = compute_features(
        model, make_data("seq", n=N2, seed=6), kind, dtype="float64", progress=False
    )
    return X, Y


def memories(X):
    """``memory`` values giving block sizes 16, one in (16, N) and one >= N."""
    found = {}
    for e in range(0, 48):
        b = block_size(X, 2**e)
        found.setdefault(b, 2**e)
    sizes = sorted(found)
    assert sizes[0] == 16
    mid = [b for b in sizes if 16 < b < N and N % b]
    big = [b for b in sizes if b >= N]
    assert mid and big
    return [1, found[mid[len(mid) // 2]], found[big[0]]]


def midpoint_threshold(values: np.ndarray, q: float) -> float:
    """A threshold half way between two neighbouring values near quantile ``q``, with a gap
    between them far above rounding (kappa(i, j) and kappa(j, i), summed in other orders, may
    differ in their last bits: a threshold between those would test rounding, not counting)."""
    v = np.unique(values[np.isfinite(values)])
    gap = np.diff(v) > 1e-9 * np.abs(v).max()
    i = min(max(int(q * len(v)), 1), len(v) - 1)
    while not gap[i - 1]:  # the next clear gap above
        i = i + 1 if i < len(v) - 1 else 1
    return float((v[i - 1] + v[i]) / 2)


def dense_reductions(k: np.ndarray, reducers, exclude_diag: bool):
    """The same reductions on the full dense matrix (diagonal left out if asked)."""
    k = k.copy()
    if exclude_diag:
        np.fill_diagonal(k, np.nan)
    out = []
    for r in reducers:
        if isinstance(r, RowMax):
            v = np.where(np.isnan(k), -np.inf, k)
            out.append((v.max(1), v.argmax(1)))
        elif isinstance(r, RowCount):
            thr = np.asarray(r.threshold, dtype=np.float64)
            thr = thr[:, None] if thr.ndim == 1 else thr
            with np.errstate(invalid="ignore"):
                hit = k > thr if r.above else k < thr
            out.append(hit.sum(1))
        else:
            fill = -np.inf if r.largest else np.inf
            v = np.where(np.isnan(k), fill, k)
            order = np.argsort(-v if r.largest else v, axis=1, kind="stable")[:, : r.k]
            out.append((np.take_along_axis(v, order, 1), order))
    return out


def make_reducers(k: np.ndarray, exclude_diag: bool):
    off = k.copy()
    if exclude_diag:
        np.fill_diagonal(off, np.nan)
    per_row_hi = np.array([midpoint_threshold(row, 0.7) for row in off])
    per_row_lo = np.array([midpoint_threshold(row, 0.2) for row in off])
    return [
        RowMax(),
        RowCount(midpoint_threshold(off.ravel(), 0.5), above=True),
        RowCount(midpoint_threshold(off.ravel(), 0.3), above=False),
        RowCount(torch.from_numpy(per_row_hi), above=True),
        RowCount(per_row_lo, above=False),
        RowTopK(5, largest=True),
        RowTopK(3, largest=False),
    ]


def check_reductions(got, want):
    for r, w in zip(got, want, strict=True):
        if isinstance(r, RowMax):
            np.testing.assert_allclose(r.values.numpy(), w[0], rtol=1e-12)
            np.testing.assert_array_equal(r.argmax_position.numpy(), w[1])
        elif isinstance(r, RowCount):
            np.testing.assert_array_equal(r.counts.numpy(), w)
        else:
            np.testing.assert_allclose(r.values.numpy(), w[0], rtol=1e-12)
            np.testing.assert_array_equal(r.positions.numpy(), w[1])


@pytest.fixture(params=[None, 1, 2, 3])
def panels(request, monkeypatch):
    """Row panels of the default size, and of 1, 2 and 3 blocks (several panels a pass)."""
    from lpntk.kernel import ops

    if request.param is not None:
        monkeypatch.setattr(ops, "panel_rows", lambda X, b, *a, f=request.param: f * b)
    return request.param


@pytest.mark.parametrize("kind", SCALAR_KINDS)
def test_symmetric_reductions_match_dense(kind, panels):
    X, _ = stream_setup(kind)
    k = gram(X).numpy()
    for memory in memories(X):
        reducers = make_reducers(k, exclude_diag=True)
        want = dense_reductions(k, reducers, exclude_diag=True)
        got = reduce_rows(X, reducers, memory=memory, progress=False)
        assert got is reducers or list(got) == reducers
        check_reductions(reducers, want)
        # nothing left unfilled: every row saw N - 1 columns
        assert (reducers[0].argmax_position.numpy() >= 0).all()
        assert (reducers[0].argmax_position.numpy() != np.arange(N)).all()


@pytest.mark.parametrize("kind", SCALAR_KINDS)
def test_symmetric_reductions_including_self(kind, panels):
    X, _ = stream_setup(kind)
    k = gram(X).numpy()
    reducers = make_reducers(k, exclude_diag=False)
    want = dense_reductions(k, reducers, exclude_diag=False)
    reduce_rows(X, reducers, exclude_self=False, memory=1, progress=False)
    check_reductions(reducers, want)


@pytest.mark.parametrize("kind", SCALAR_KINDS)
def test_cross_set_reductions_match_dense(kind, panels):
    X, Y = stream_setup(kind)
    k = kernel_block(X, None, Y, None).numpy()
    assert k.shape == (N, N2)
    for memory in memories(X):
        reducers = make_reducers(k, exclude_diag=False)
        want = dense_reductions(k, reducers, exclude_diag=False)
        reduce_rows(X, reducers, Y, memory=memory, progress=False)
        check_reductions(reducers, want)


def test_kernel_block_takes_any_positions_and_returns_a_tensor():
    X, Y = stream_setup("lpntk")
    k = gram(X)
    for rows in ([0, 2, 3], np.array([0, 2, 3]), range(0, 4, 2), slice(1, 4)):
        block = kernel_block(X, rows=rows)
        assert isinstance(block, torch.Tensor) and block.dtype == k.dtype
        torch.testing.assert_close(
            block,
            k[list(range(N))[rows] if isinstance(rows, slice) else list(rows)],
            rtol=1e-12,
            atol=1e-12,
        )
    one = kernel_block(X, rows=2, cols=np.int64(3))
    assert one.shape == (1, 1) and abs(one.item() - k[2, 3].item()) < 1e-12


def test_row_max_function():
    X, Y = stream_setup("lpntk")
    k = gram(X).numpy()
    np.fill_diagonal(k, -np.inf)
    for memory in memories(X):
        v, pos = row_max(X, memory=memory, progress=False)
        assert isinstance(v, np.ndarray) and isinstance(pos, np.ndarray)
        np.testing.assert_allclose(v, k.max(1), rtol=1e-12)
        np.testing.assert_array_equal(pos, k.argmax(1))
    kc = kernel_block(X, None, Y, None).numpy()
    v, pos = row_max(X, Y, memory=1, progress=False)
    np.testing.assert_allclose(v, kc.max(1), rtol=1e-12)
    np.testing.assert_array_equal(pos, kc.argmax(1))


def test_block_size_bounds():
    X, _ = stream_setup("lpntk")
    assert block_size(X, 1) == 16
    assert block_size(X, 1 << 60) >= N
    sizes = [block_size(X, 2**e) for e in range(0, 48)]
    assert sizes == sorted(sizes)


def test_reduction_errors():
    X, Y = stream_setup("lpntk")
    with pytest.raises(ConfigError, match="exclude_self"):
        reduce_rows(X, [RowMax()], Y, exclude_self=True, progress=False)
    with pytest.raises(ConfigError, match="length"):
        reduce_rows(X, [RowCount(np.zeros(N + 1))], progress=False)
    with pytest.raises(ConfigError, match="at least 1"):
        RowTopK(0)
    E = compute_features(
        make_model("mlp"), make_data("mlp", n=4), "entk", dtype="float64", progress=False
    )
    with pytest.raises(ConfigError, match="scalar"):
        reduce_rows(E, [RowMax()], progress=False)
    # features of another kind (or model) cannot be paired
    P = compute_features(
        make_model("seq", seed=2), make_data("seq", n=5), "pntk", dtype="float64", progress=False
    )
    with pytest.raises(ConfigError, match="kind"):
        kernel_block(X, None, P, None)
    Z = compute_features(
        make_model("seq", seed=1), make_data("seq", n=5), "lpntk", dtype="float64", progress=False
    )
    with pytest.raises(ConfigError, match="model_hash"):
        row_max(X, Z, progress=False)


def test_single_sample_reductions():
    X = feats_for("mlp", "lpntk", 1, 0)
    v, pos = row_max(X, progress=False)
    assert v[0] == -math.inf and pos[0] == -1
    (c,) = reduce_rows(X, [RowCount(-1e300)], progress=False)
    assert int(c.counts[0]) == 0


def test_topk_larger_than_row():
    """Asking for more neighbours than exist pads the values with -inf (+inf for smallest)."""
    X = feats_for("mlp", "lpntk", 4, 0)
    for largest, pad in ((True, -np.inf), (False, np.inf)):
        (t,) = reduce_rows(X, [RowTopK(4, largest=largest)], progress=False)
        vals, pos = t.values.numpy(), t.positions.numpy()
        assert np.isfinite(vals[:, :3]).all() and (vals[:, 3] == pad).all()
        for i in range(4):
            assert set(pos[i, :3]) == set(range(4)) - {i}


def test_topk_padding_positions_are_minus_one():
    X = feats_for("mlp", "lpntk", 4, 0)
    (t,) = reduce_rows(X, [RowTopK(4)], progress=False)
    np.testing.assert_array_equal(t.positions.numpy()[:, 3], -1)


def test_tensor_dataset_with_int32_labels():
    model = make_model("mlp")
    x = make_data("mlp", n=6).tensors[0]
    y = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)
    a = compute_features(model, TensorDataset(x, y), dtype="float64", progress=False)
    b = compute_features(model, TensorDataset(x, y.long()), dtype="float64", progress=False)
    torch.testing.assert_close(gram(a), gram(b), rtol=0, atol=0)
