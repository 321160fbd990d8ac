"""Exactness of the kernel engine against a brute-force per-sample Jacobian reference (float64)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from lpntk.kernel import Kind, columns, compute_features, diagonal, gram, kernel_block

from .test_kernel_helpers import K, Reference, make_data, make_model, rel_err

MODELS = ["mlp", "cnn", "cnn_generic", "misc", "bn", "custom", "seq", "frozen"]
KINDS = ["lpntk", "pntk", "entk", "loss"]
STRATEGIES = ["factored", "materialised"]
TOL = 1e-10


@functools.cache
def setup(name: str):
    model = make_model(name)
    data = make_data(name, n=8)
    return model, data, Reference(model, data)


@functools.cache
def features(name: str, kind: str, strategy: str):
    model, data, _ = setup(name)
    return compute_features(
        model, data, kind, strategy, dtype="float64", batch_size=3, progress=False
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", MODELS)
def test_gram_matches_brute_force(name, kind, strategy):
    _, _, ref = setup(name)
    feats = features(name, kind, strategy)
    g = gram(feats)
    want = ref.kernel(kind)
    assert g.dtype == torch.float64
    assert g.shape == want.shape == ((8, 8, K, K) if kind == "entk" else (8, 8))
    assert rel_err(g, want) <= TOL
    assert feats.m == (K if kind == "entk" else 1)
    assert feats.kind == kind and feats.n == 8
    assert feats.meta["strategy"] == strategy


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["cnn_generic", "seq", "bn"])
def test_diagonal_block_and_columns_match_brute_force(name, kind, strategy):
    _, _, ref = setup(name)
    feats = features(name, kind, strategy)
    want = ref.kernel(kind)
    n = 8
    d = diagonal(feats)
    want_diag = want[torch.arange(n), torch.arange(n)]
    assert d.shape == want_diag.shape
    assert rel_err(d, want_diag) <= TOL
    rows, cols = np.array([5, 0, 3]), np.array([7, 1, 1, 4])
    blk = kernel_block(feats, rows, cols=cols)
    assert rel_err(blk, want[rows][:, cols]) <= TOL
    assert rel_err(kernel_block(feats, slice(2, 6), cols=slice(1, 3)), want[2:6, 1:3]) <= TOL
    # memory=1 forces blocks of 16 rows; N = 8 is one block, so also try several blocks below
    c = columns(feats, cols, memory=1)
    assert rel_err(c, want[:, cols]) <= TOL


def test_columns_over_several_blocks():
    model = make_model("mlp")
    data = make_data("mlp", n=40, seed=3)
    ref = Reference(model, data)
    feats = compute_features(model, data, "lpntk", dtype="float64", progress=False)
    cols = np.array([39, 0, 17, 16])
    want = ref.kernel("lpntk")
    assert rel_err(columns(feats, cols, memory=1), want[:, cols]) <= TOL
    assert rel_err(diagonal(feats, memory=1), want.diagonal()) <= TOL


def test_piece_forms_are_covered():
    """The model zoo exercises dense pieces, factored T = 1 pieces and factored T > 1 pieces."""
    forms = set()
    for name in MODELS:
        for kind in ("lpntk", "entk"):
            for p in features(name, kind, "factored").pieces:
                forms.add((p.form, p.form == "factored" and p.shapes["A"][0] > 1))
    assert forms == {("dense", False), ("factored", False), ("factored", True)}
    assert [p.form for p in features("cnn_generic", "entk", "materialised").pieces] == ["dense"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", MODELS)
def test_pieces_cover_exactly_the_trainable_parameters(name, strategy):
    """Per-sample gradient length summed over pieces equals the trainable parameter count, so
    frozen parameters are left out and nothing is counted twice."""
    model = setup(name)[0]
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for p in features(name, "lpntk", strategy).pieces:
        if p.form == "dense":
            total += p.shapes["F"][-1]
        else:
            total += p.shapes["A"][-1] * p.shapes["B"][-1]
    assert total == n_trainable
    if name == "frozen" and strategy == "factored":
        names = [p.name for p in features(name, "lpntk", strategy).pieces]
        assert not any(n.startswith("layers.0") for n in names)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_entk_identities(strategy):
    """eNTK blocks weighted by s_i s_j^T / K give lpNTK, weighted by 1 1^T / K give pNTK."""
    name = "custom"
    _, data, _ = setup(name)
    e = gram(features(name, "entk", strategy))
    labels = data.tensors[1]
    s = -torch.ones(8, K, dtype=torch.float64)
    s[torch.arange(8), labels] = 1.0
    lp = torch.einsum("ik,ijkl,jl->ij", s, e, s) / K
    assert rel_err(lp, gram(features(name, "lpntk", strategy))) <= TOL
    assert rel_err(e.sum((2, 3)) / K, gram(features(name, "pntk", strategy))) <= TOL


def test_strategies_agree_with_each_other():
    for name in MODELS:
        a = gram(features(name, "entk", "factored"))
        b = gram(features(name, "entk", "materialised"))
        assert rel_err(a, b) <= TOL, name


def test_shared_module_materialised_matches_brute_force():
    model = make_model("shared")
    data = make_data("shared")
    ref = Reference(model, data)
    for kind in KINDS:
        feats = compute_features(model, data, kind, "materialised", dtype="float64", progress=False)
        assert rel_err(gram(feats), ref.kernel(kind)) <= TOL


def test_cross_set_kernel_block_matches_brute_force():
    model = make_model("cnn")
    a, b = make_data("cnn", n=6, seed=1), make_data("cnn", n=5, seed=2)
    ref = Reference(model, a, b)
    for kind in KINDS:
        fa = compute_features(model, a, kind, dtype="float64", progress=False)
        fb = compute_features(model, b, kind, dtype="float64", progress=False)
        assert rel_err(kernel_block(fa, None, fb, None), ref.kernel(kind)) <= TOL
        assert rel_err(columns(fa, [4, 0], fb), ref.kernel(kind)[:, [4, 0]]) <= TOL


def test_dataloader_and_subset_inputs():
    model, data, ref = setup("mlp")
    loader = DataLoader(data, batch_size=3, shuffle=False)
    feats = compute_features(model, loader, "lpntk", dtype="float64", progress=False)
    assert rel_err(gram(feats), ref.kernel("lpntk")) <= TOL
    np.testing.assert_array_equal(feats.indices, np.arange(8))
    np.testing.assert_array_equal(feats.labels, data.tensors[1].numpy())

    idx = [6, 2, 5, 0]
    sub = Subset(data, idx)
    feats = compute_features(model, sub, "lpntk", dtype="float64", progress=False)
    np.testing.assert_array_equal(feats.indices, idx)
    np.testing.assert_array_equal(feats.labels, data.tensors[1][idx].numpy())
    assert rel_err(gram(feats), ref.kernel("lpntk")[idx][:, idx]) <= TOL
    feats = compute_features(
        model, DataLoader(sub, batch_size=2), "pntk", dtype="float64", progress=False
    )
    np.testing.assert_array_equal(feats.indices, idx)


# -- dtype and mode ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_float32_default_close_to_float64(kind):
    model, data, _ = setup("cnn")
    x, y = data.tensors
    data32 = torch.utils.data.TensorDataset(x.float(), y)
    f32 = compute_features(model, data32, kind, progress=False)
    assert f32.meta["dtype"] == "float32"
    assert all(a.dtype == np.float32 for a in f32.arrays.values())
    g32 = gram(f32)
    assert g32.dtype == torch.float32
    g64 = gram(features("cnn", kind, "factored"))
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4 * float(g64.abs().max()))
    # the user's float64 model was not converted in place
    assert next(model.parameters()).dtype == torch.float64


@pytest.mark.parametrize("strategy", ["factored", "materialised", "projected"])
@pytest.mark.parametrize("mode", [True, False])
def test_training_flag_restored(mode, strategy):
    model = make_model("bn")
    model.train(mode)
    data = make_data("bn", n=4)
    extra = {"proj_dim": 8} if strategy == "projected" else {}
    feats = compute_features(
        model, data, "lpntk", strategy, dtype="float64", progress=False, **extra
    )
    assert model.training is mode
    assert all(m.training is mode for m in model.modules())
    # evaluated in eval mode: BatchNorm used its running statistics, which did not change
    ref = Reference(make_model("bn").eval(), data)
    if strategy != "projected":
        assert rel_err(gram(feats), ref.kernel("lpntk")) <= TOL
    assert torch.equal(model.bn.running_mean, make_model("bn").bn.running_mean)


def test_training_flag_restored_after_data_error():
    model = make_model("mlp").train()
    x = torch.randn(4, 5, dtype=torch.float64)
    bad = torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 5, 0]))
    with pytest.raises(Exception, match="out of range"):
        compute_features(model, bad, dtype="float64", progress=False)
    assert model.training


def test_training_flag_restored_after_config_error():
    model = make_model("mlp").train()
    with pytest.raises(Exception, match="unknown strategy"):
        compute_features(model, make_data("mlp"), strategy="nope", dtype="float64")
    assert model.training


class LabelLogit(Kind):
    """A user-defined kind: the gradient of the label's logit."""

    name = "label_logit"

    def cotangents(self, logits, labels):
        return torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype).unsqueeze(1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_custom_kind_instance(strategy):
    model, data, ref = setup("custom")
    feats = compute_features(model, data, LabelLogit(), strategy, dtype="float64", progress=False)
    assert feats.kind == "label_logit" and feats.m == 1
    y = data.tensors[1]
    i = torch.arange(8)
    want = ref.entk()[i[:, None], i[None, :], y[:, None], y[None, :]]  # E[i, j, y_i, y_j]
    assert rel_err(gram(feats), want) <= TOL
