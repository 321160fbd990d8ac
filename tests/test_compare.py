"""The prune-and-retrain comparison on a tiny fake MNIST: every run shares the validation split,
statistics equal scipy's on the recorded accuracies, finished runs are not trained again."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy import stats

from lpntk.compare import compare_training
from lpntk.training import TrainConfig, prepare_data


@pytest.fixture
def fake_mnist(data_env, data_make_mnist, tmp_path):
    return data_make_mnist(tmp_path / "data" / "mnist", n_train=60, n_test=20).parent


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # identical accuracies
def test_compare_full_and_a_subset_over_seeds(fake_mnist, tmp_path):
    cfg = TrainConfig(
        model="mlp3", model_options={"widths": [8, 8]}, epochs=2, batch_size=16, val_fraction=0.2
    )
    train_set, _, _ = prepare_data(cfg, fake_mnist)
    half = np.sort(np.random.default_rng(0).choice(train_set.indices, 20, replace=False))
    out = tmp_path / "cmp"
    c = compare_training(
        cfg, {"half": half}, seeds=[0, 1, 2], out_dir=out, data_dir=fake_mnist, progress=False
    )
    assert [(r["subset"], r["seed"]) for r in c.runs] == [
        (s, seed) for s in ("full", "half") for seed in (0, 1, 2)
    ]
    assert c.curves["full"].shape == (3, 2) and c.curves["half"].shape == (3, 2)
    vals = set()
    for r in c.runs:
        ckpt = torch.load(out / r["subset"] / f"seed_{r['seed']}" / "best.pt", weights_only=True)
        vals.add(tuple(ckpt["val_indices"]))
        if r["subset"] == "half":
            assert sorted(ckpt["train_indices"]) == half.tolist()
    assert len(vals) == 1  # one validation split for every run
    full = [r["test_acc"] for r in c.runs if r["subset"] == "full"]
    part = [r["test_acc"] for r in c.runs if r["subset"] == "half"]
    row = next(s for s in c.summary if s["subset"] == "half")
    assert row["mean"] == pytest.approx(np.mean(part))
    assert row["std"] == pytest.approx(np.std(part, ddof=1))
    for name, equal in (("student", True), ("welch", False)):
        t = stats.ttest_ind(full, part, equal_var=equal)
        if np.isnan(t.statistic):
            assert np.isnan(row[f"{name}_t"])
        else:
            assert row[f"{name}_t"] == pytest.approx(t.statistic)
            assert row[f"{name}_p"] == pytest.approx(t.pvalue)
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == 6
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and len(saved["test_acc_per_epoch"]["half"]) == 3
    assert (out / "accuracy.png").stat().st_size > 1000
    # finished runs are reused, not retrained
    stamp = (out / "half" / "seed_1" / "best.pt").stat().st_mtime_ns
    again = compare_training(
        cfg, {"half": half}, seeds=[0, 1, 2], out_dir=out, data_dir=fake_mnist, progress=False
    )
    assert (out / "half" / "seed_1" / "best.pt").stat().st_mtime_ns == stamp
    assert again.runs == c.runs


def test_compare_needs_seeds_and_a_free_name(fake_mnist, tmp_path):
    cfg = TrainConfig(model="mlp3", epochs=1)
    with pytest.raises(ValueError, match="two or more distinct seeds"):
        compare_training(cfg, {}, seeds=[0], out_dir=tmp_path, data_dir=fake_mnist)
    with pytest.raises(ValueError, match="full"):
        compare_training(cfg, {"full": [1]}, seeds=[0, 1], out_dir=tmp_path, data_dir=fake_mnist)
