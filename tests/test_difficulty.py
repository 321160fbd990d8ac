"""Experiment 1: batched training equals one-by-one training; difficulty and rho."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lpntk.difficulty import experiment1, per_class_subset, split_subsets, train_many

from .test_cli import DATA_DIR, needs_mnist
from .test_theorem import tiny_data


def one_by_one(model, x, y, epochs, lr, per_sample=False):
    """Plain loops: a copy of the model per subset, its loss before each update summed."""
    out = torch.zeros(y.shape, dtype=torch.float64)
    for m in range(len(x)):
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        names = [n for n, _ in model.named_parameters()]
        chunks = [slice(i, i + 1) for i in range(y.shape[1])] if per_sample else [slice(None)]
        for _ in range(epochs):
            for c in chunks:
                z = torch.func.functional_call(
                    model, dict(zip(names, params, strict=True)), (x[m, c],)
                )
                each = nn.functional.cross_entropy(z, y[m, c], reduction="none")
                out[m, c] += each.detach().double()
                grads = torch.autograd.grad(each.mean(), params)
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        p -= lr * g
    return out


@pytest.mark.parametrize("mode", ["full_batch", "per_sample"])
def test_batched_training_equals_one_by_one(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (4, 3))
    before = [p.clone() for p in model.parameters()]
    got = train_many(model, x, y, epochs=5, lr=0.3, mode=mode)
    want = one_by_one(model, x, y, 5, 0.3, per_sample=mode == "per_sample")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert all(
        torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
    )  # untouched


def test_integrated_loss_of_one_step_by_hand():
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()  # uniform predictions: loss log 2 before the first step
    x = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    y = torch.tensor([[0]])
    d = train_many(model, x, y, epochs=1, lr=1.0)
    assert d.item() == pytest.approx(np.log(2))
    # after one step of lr 1: the gradient of the logits is (-1/2, 1/2), so w = [[.5, 0], [-.5, 0]]
    d2 = train_many(model, x, y, epochs=2, lr=1.0)
    assert d2.item() == pytest.approx(np.log(2) + np.log(1 + np.exp(-1.0)))


def test_split_subsets_are_disjoint_and_cover():
    parts = split_subsets(np.arange(20) % 4, 5, seed=3)
    assert parts.shape == (4, 5) and sorted(parts.ravel()) == list(range(20))
    with pytest.raises(ValueError, match="divide"):
        split_subsets(np.arange(20), 3, seed=0)


def test_experiment1_writes_results(tmp_path, capsys):
    data = tiny_data(n=24, k=4)
    r = experiment1(
        data,
        sizes=[1, 6],
        split_seeds=[0, 1],
        epochs=3,
        lr=0.5,
        widths=(8, 6),
        out_dir=tmp_path,
        progress=False,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rho"]["6"]["per_split"] == r["rho"]["6"]["per_split"]
    assert all(-1 <= v <= 1 for s in r["rho"].values() for v in s["per_split"])
    assert (tmp_path / "figure1.png").stat().st_size > 1000
    import pandas as pd

    t = pd.read_csv(tmp_path / "per_sample.csv")
    assert len(t) == 24 and {"whole", "subset_1", "subset_6"} <= set(t.columns)
    # a subset of the whole set, trained alone, is the whole-set run
    r2 = experiment1(data, sizes=[24], split_seeds=[0], epochs=3, lr=0.5, widths=(8, 6))
    assert r2["rho"]["24"]["mean"] == pytest.approx(1.0)
    err = capsys.readouterr().err  # each training says where the command stands
    assert "[1/2] the whole set, 24 samples\n" in err
    assert "[2/2] 1 subsets of X = 24, split seed 0; about " in err


def test_per_class_subset_takes_as_many_of_each_class():
    data = tiny_data(n=40, k=4)
    sub = per_class_subset(data, 3, seed=1)
    assert np.bincount(sub.labels).tolist() == [3, 3, 3, 3]
    assert list(sub.indices) == sorted(sub.indices)
    with pytest.raises(ValueError, match="at least 11"):
        per_class_subset(data, 11)


@needs_mnist
def test_cli_experiment1(tmp_path, capsys):
    from lpntk.cli import main

    argv = "experiment1 --per-class 10 --sizes 1 8 --split-seeds 2 --epochs 2 --no-progress"
    assert main([*argv.split(), "--out", str(tmp_path), "--data-dir", DATA_DIR]) == 0
    assert "X=1:" in capsys.readouterr().out
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["n"] == 40 and set(r["rho"]) == {"1", "8"}
    bad = [*argv.split(), "--sizes", "3", "--out", str(tmp_path / "x"), "--data-dir", DATA_DIR]
    assert main(bad) == 2
    assert "must divide N = 40" in capsys.readouterr().err
