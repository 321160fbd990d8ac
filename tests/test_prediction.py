"""Forgetting prediction (Sec. 3.3, Eq. 1, Table 1): the first-order change against brute-force
Jacobians and against the real step, the window, the scoring, the experiment and its command."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

from lpntk.cli import main
from lpntk.prediction import (
    flip_scores,
    forgetting_prediction,
    margins,
    predicted_change,
    sgd_window,
    summarise,
)
from lpntk.training import TrainConfig

from .test_cli import DATA_DIR, needs_mnist


def smooth_net(k=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, k)
    ).double()


def inputs(n, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.arange(n) % k


def jacobians(model, x, k):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def z(p, xi):
        return functional_call(model, p, (xi[None],))[0]

    return [torch.cat([j.reshape(k, -1) for j in jacrev(z)(params, xi).values()], 1) for xi in x]


def test_predicted_change_equals_eq1_with_brute_force_kernels():
    k, lr = 3, 0.3
    model = smooth_net(k)
    x_o, y_o = inputs(7, k, seed=1)
    x_b, y_b = inputs(5, k, seed=2)
    got = predicted_change(model, x_o, y_o, x_b, y_b, lr, chunk=3)
    jo, jb = jacobians(model, x_o, k), jacobians(model, x_b, k)
    with torch.no_grad():
        r = F.softmax(model(x_b), 1) - F.one_hot(y_b, k).double()
    s = lambda t: 2 * F.one_hot(torch.tensor(int(t)), k).double() - 1  # noqa: E731
    ones = torch.ones(k, dtype=torch.float64)
    for o in range(len(x_o)):
        blocks = [jo[o] @ jb[u].T for u in range(len(x_b))]  # eNTK K(x_o, x_u), K x K
        want = {
            "entk": sum(K @ r[u] for u, K in enumerate(blocks)),
            "lpntk": sum(s(y_o[o]) @ K @ s(y_b[u]) / k * r[u] for u, K in enumerate(blocks)),
            "pntk": sum(ones @ K @ ones / k * r[u] for u, K in enumerate(blocks)),
        }
        for kind, w in want.items():
            torch.testing.assert_close(got[kind][o], -lr / len(x_b) * w, rtol=1e-10, atol=1e-13)


def test_first_order_error_shrinks_like_eta_squared():
    model = smooth_net()
    x_o, y_o = inputs(20, seed=3)
    x_b, y_b = inputs(8, seed=4)
    errors = []
    for lr in (0.04, 0.02, 0.01):
        step = smooth_net()
        step.load_state_dict(model.state_dict())
        window = sgd_window(step, x_o, y_o, [(x_b, y_b)], lr)
        true = window["logits"][1] - window["logits"][0]
        errors.append(np.linalg.norm(window["predicted_entk"][0] - true))
        assert np.linalg.norm(true) > 100 * errors[-1]  # first order dominates
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert ratios == pytest.approx([4, 4], rel=0.05)  # halving eta quarters the error


def test_window_steps_are_the_plain_sgd_steps_of_the_optimiser():
    model = smooth_net()
    x_o, y_o = inputs(6, seed=5)
    batches = [inputs(4, seed=s) for s in (6, 7, 8)]
    reference = smooth_net()
    reference.load_state_dict(model.state_dict())
    window = sgd_window(model, x_o, y_o, batches, lr=0.1)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0, weight_decay=0)
    for t, (xb, yb) in enumerate(batches):
        opt.zero_grad()
        F.cross_entropy(reference(xb), yb).backward()
        opt.step()
        with torch.no_grad():
            np.testing.assert_allclose(window["logits"][t + 1], reference(x_o).numpy(), rtol=1e-12)
    assert window["logits"].shape == (4, 6, 3)
    assert window["predicted_lpntk"].shape == (3, 6, 3)


def test_margins_and_flip_scores_on_a_constructed_window():
    labels = np.array([0, 1, 2, 0])
    # step 0: samples 0-2 correct, 3 wrong; after it, sample 0 and 1 forgotten
    before = np.array([[3.0, 0, 0], [0, 1.0, 0.9], [0, 0, 2.0], [0, 1.0, 0]])
    after = np.array([[0, 1.0, 0], [0, 0.8, 0.9], [0, 0, 2.1], [0, 1.0, 0]])
    logits = np.stack([before, after])
    np.testing.assert_allclose(margins(before, labels), [3, 0.1, 2, -1])
    predicted = {  # lpntk flags 0 and 2 (one right, one wrong); entk flags exactly 0 and 1
        "lpntk": (np.array([[-4.0, 0, 0], [0, 0, 0], [0, 0, -3.0], [0, 0, 0]]))[None],
        "entk": (after - before)[None],
    }
    s = flip_scores(logits, predicted, labels)
    assert (s["events"], s["at_risk"]) == (2, 3)
    assert (s["lpntk"]["tp"], s["lpntk"]["fp"], s["lpntk"]["fn"]) == (1, 1, 1)
    assert s["lpntk"]["f1"] == pytest.approx(0.5)
    assert s["entk"]["precision"] == s["entk"]["recall"] == s["entk"]["f1"] == 1.0
    assert s["entk"]["correlation"] == pytest.approx(1.0)
    assert s["entk"]["relative_error"] == pytest.approx(0.0)
    assert s["entk"]["norm_ratio"] == pytest.approx(1.0)
    # margin flags as many as lpntk (2): the smallest margins among correct, samples 1 and 2
    assert (s["margin"]["tp"], s["margin"]["fp"], s["margin"]["fn"]) == (1, 1, 1)
    assert s["margin"]["flagged"] == s["lpntk"]["flagged"] == 2
    assert s["margin_oracle"]["flagged"] == 2 and s["margin_oracle"]["tp"] == 1
    nothing = flip_scores(logits, {"lpntk": np.zeros((1, 4, 3))}, labels)
    assert np.isnan(nothing["lpntk"]["precision"]) and nothing["lpntk"]["recall"] == 0.0


def test_summarise_leaves_out_undefined_seeds():
    def row(tp, fp, fn):
        precision = tp / (tp + fp) if tp + fp else float("nan")
        return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": 0.5, "f1": 0.5}

    per_seed = [
        {"seed": 0, "events": 4, "at_risk": 9, "lpntk": row(2, 2, 2)},
        {"seed": 1, "events": 2, "at_risk": 9, "lpntk": row(0, 0, 2)},
        {"seed": 2, "events": 2, "at_risk": 9, "lpntk": row(1, 0, 1)},
    ]
    s = summarise(per_seed)
    assert s["lpntk"]["precision"] == {"mean": 0.75, "std": pytest.approx(0.3535534), "seeds": 2}
    assert s["lpntk"]["pooled"]["tp"] == 3 and s["lpntk"]["pooled"]["fn"] == 5
    assert s["events"] == [4, 2, 2]


def test_experiment_checks_its_settings(tmp_path, data_env, data_make_mnist):
    folder = data_make_mnist(tmp_path / "data", n_train=60)
    cfg = TrainConfig(epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="tracked"):
        forgetting_prediction(cfg, seeds=[0], tracked=500, out_dir=tmp_path / "o", data_dir=folder)
    with pytest.raises(ValueError, match="seeds"):
        forgetting_prediction(cfg, seeds=[], out_dir=tmp_path / "o", data_dir=folder)
    with pytest.raises(ValueError, match="iterations"):
        forgetting_prediction(cfg, seeds=[0], iterations=0, data_dir=folder)


def test_window_steps_at_window_lr_after_any_training(tmp_path, data_env, data_make_mnist):
    folder = data_make_mnist(tmp_path / "data", n_train=60)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, momentum=0.9)  # not plain SGD
    common = dict(seeds=[0], iterations=2, tracked=20, data_dir=folder, progress=False)
    own = forgetting_prediction(cfg, out_dir=tmp_path / "own", **common)
    small = forgetting_prediction(cfg, out_dir=tmp_path / "small", window_lr=1e-3, **common)
    assert own["window_lr"] == 0.05 and small["window_lr"] == 1e-3
    with (
        np.load(tmp_path / "own" / "seed_0" / "window.npz") as a,
        np.load(tmp_path / "small" / "seed_0" / "window.npz") as b,
    ):
        np.testing.assert_array_equal(a["logits"][0], b["logits"][0])  # the same trained model
        np.testing.assert_array_equal(a["batches"], b["batches"])
        for k in ("entk", "lpntk", "pntk"):  # first order: the step's size scales the change
            big = a[f"predicted_{k}"][0]  # float32 sums: entries near 0 carry the rounding of
            scale = 1e-5 * np.abs(big).max()  # the largest, hence the absolute slack
            np.testing.assert_allclose(big, 50 * b[f"predicted_{k}"][0], rtol=1e-5, atol=scale)
    with pytest.raises(ValueError, match="other settings"):
        forgetting_prediction(cfg, out_dir=tmp_path / "small", window_lr=2e-3, **common)
    for bad in (0.0, -1e-3, True, "0.1"):
        with pytest.raises(ValueError, match="window_lr"):
            forgetting_prediction(cfg, out_dir=tmp_path / "x", window_lr=bad, **common)
    # finished runs elsewhere are shared, not trained again; the windows stay in out_dir
    stamp = (tmp_path / "own" / "seed_0" / "last.pt").stat().st_mtime_ns
    shared = forgetting_prediction(
        cfg, out_dir=tmp_path / "shared", runs_dir=tmp_path / "own", window_lr=1e-3, **common
    )
    assert (tmp_path / "own" / "seed_0" / "last.pt").stat().st_mtime_ns == stamp
    assert not (tmp_path / "shared" / "seed_0" / "last.pt").exists()
    assert json.dumps(shared["per_seed"]) == json.dumps(small["per_seed"])  # NaN too
    with (
        np.load(tmp_path / "shared" / "seed_0" / "window.npz") as a,
        np.load(tmp_path / "small" / "seed_0" / "window.npz") as b,
    ):
        np.testing.assert_array_equal(a["logits"], b["logits"])


@needs_mnist
def test_cli_runs_the_experiment_and_resumes(tmp_path, capsys):
    out = tmp_path / "fp"
    argv = (
        f"predict-forgetting --train-size 300 --classes 0 1 2 --epochs 1 --lr 0.01 --batch-size 16 "
        f"--seeds 2 --iterations 3 --tracked 40 --out {out} --data-dir {DATA_DIR} --no-progress"
    ).split()
    assert main(argv) == 0
    assert "F1" in capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    assert r["seeds"] == [0, 1] and r["iterations"] == 3 and r["tracked"] == 40
    assert r["config"]["optimizer"] == "sgd" and r["config"]["momentum"] == 0
    for v in ("entk", "lpntk", "pntk", "margin", "margin_oracle"):
        assert set(r[v]) >= {"pooled"}
    with np.load(out / "seed_1" / "window.npz") as w:
        assert w["logits"].shape == (4, 40, 3) and w["batches"].shape == (3, 16)
        assert len(np.unique(w["tracked"])) == 40
    rows = list(csv.DictReader(open(out / "per_seed.csv")))
    assert len(rows) == 12 and {r["variant"] for r in rows} == {
        "entk",
        "entk_softmax",
        "lpntk",
        "pntk",
        "margin",
        "margin_oracle",
    }
    assert (out / "prediction.png").stat().st_size > 1000
    stamp = (out / "seed_0" / "window.npz").stat().st_mtime_ns
    assert main(argv) == 0  # finished seeds are read back, not recomputed
    assert (out / "seed_0" / "window.npz").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["per_seed"] == r["per_seed"]
    changed = [a if a != "3" else "4" for a in argv]  # other --iterations, same folder
    assert main(changed) == 2
    assert "other settings" in capsys.readouterr().err
