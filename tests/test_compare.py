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


def test_equal_steps_gives_a_small_subset_more_epochs(fake_mnist, tmp_path):
    cfg = TrainConfig(
        model="mlp3", model_options={"widths": [8, 8]}, epochs=2, batch_size=16, val_fraction=0.2
    )
    train_set, _, _ = prepare_data(cfg, fake_mnist)
    steps = 2 * -(-len(train_set) // 16)  # the full set's SGD steps in 2 epochs
    part = np.sort(train_set.indices[:20])  # 2 steps an epoch
    c = compare_training(
        cfg,
        {"part": part},
        [0, 1],
        tmp_path / "c",
        data_dir=fake_mnist,
        progress=False,
        equal="steps",
    )
    rows = {(r["subset"], r["seed"]): r for r in c.runs}
    assert rows["full", 0]["epochs"] == 2 and rows["full", 0]["steps"] == steps
    epochs = -(-steps // 2)
    assert rows["part", 0]["epochs"] == epochs and rows["part", 0]["steps"] == 2 * epochs
    assert rows["part", 1]["run_dir"].endswith("part.equal_steps/seed_1")
    metrics = json.loads((tmp_path / "c/part.equal_steps/seed_0/metrics.json").read_text())
    assert len(metrics) == epochs
    assert json.loads((tmp_path / "c/comparison.json").read_text())["equal"] == "steps"
    with pytest.raises(ValueError, match="epochs, steps"):
        compare_training(cfg, {}, [0, 1], tmp_path / "d", data_dir=fake_mnist, equal="time")


def toy_recipe(calls):
    """Your own model and loop: a linear classifier of 2-D points by plain SGD on a Subset."""
    from torch.utils.data import Subset, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, generator=g)
    y = (x[:, 0] > 0).long()
    base = TensorDataset(x, y)
    train = Subset(base, list(range(10, 70)))  # original indices 10..69
    x_test, y_test = torch.randn(40, 2, generator=g), None
    y_test = (x_test[:, 0] > 0).long()

    def make_model(seed):
        return torch.nn.Linear(2, 2)

    def fit(model, dataset, seed):
        calls.append(
            sorted(dataset.dataset.indices[i] for i in dataset.indices)
            if isinstance(dataset.dataset, Subset)
            else None
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        xs = torch.stack([dataset[i][0] for i in range(len(dataset))])
        ys = torch.stack([dataset[i][1] for i in range(len(dataset))])
        curve = []
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xs), ys).backward()
            opt.step()
            curve.append(evaluate(model))
        return curve

    @torch.no_grad()
    def evaluate(model):
        return float((model(x_test).argmax(1) == y_test).float().mean())

    from lpntk.compare import Recipe

    return Recipe(make_model, fit, evaluate, train)


def test_compare_with_your_own_model_and_training_loop(tmp_path):
    calls = []
    recipe = toy_recipe(calls)
    kept = np.arange(10, 40)
    out = tmp_path / "own"
    c = compare_training(recipe, {"first": kept}, seeds=[0, 1, 2], out_dir=out, progress=False)
    assert calls[0] is None and calls[3] == kept.tolist()  # the whole set, then the subset
    assert [r["n_train"] for r in c.runs] == [60] * 3 + [30] * 3
    assert c.curves["full"].shape == (3, 3) and {r["rule"] for r in c.rules} == {"final"}
    part = [r["test_acc"] for r in c.runs if r["subset"] == "first"]
    full = [r["test_acc"] for r in c.runs if r["subset"] == "full"]
    row = next(s for s in c.summary if s["subset"] == "first")
    assert row["mean"] == pytest.approx(np.mean(part))
    t = stats.ttest_rel(full, part)
    if not np.isnan(t.statistic):
        assert row["paired_t"] == pytest.approx(t.statistic)
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "summary.csv").exists()
    assert (out / "first" / "seed_2" / "model.pt").exists()
    again = compare_training(recipe, {"first": kept}, seeds=[0, 1, 2], out_dir=out)
    assert len(calls) == 6 and again.runs == c.runs  # finished runs are not trained again
    # the same seed gives the same initial weights: a rerun of one run gives the same accuracy
    (out / "first" / "seed_1" / "result.json").unlink()
    assert compare_training(recipe, {"first": kept}, [0, 1, 2], out).runs == c.runs


def test_compare_with_a_recipe_checks_its_pieces(tmp_path):
    import dataclasses

    from lpntk import ConfigError, ModelError

    recipe = toy_recipe([])
    with pytest.raises(ConfigError, match="not samples of the recipe"):
        compare_training(recipe, {"x": [0, 1]}, [0, 1], tmp_path / "a")
    with pytest.raises(ConfigError, match="decides its own number of steps"):
        compare_training(recipe, {}, [0, 1], tmp_path / "b", equal="steps")
    bad = dataclasses.replace(recipe, evaluate=lambda model: 7.0)
    with pytest.raises(ConfigError, match=r"returned 7.0; expected a test accuracy in \[0, 1\]"):
        compare_training(bad, {}, [0, 1], tmp_path / "c")
    bad = dataclasses.replace(recipe, make_model=lambda seed: "a model")
    with pytest.raises(ModelError, match="expected a torch.nn.Module"):
        compare_training(bad, {}, [0, 1], tmp_path / "d")


def test_compare_checkpoint_checks_every_pruned_folder_first_and_reuses_the_run(
    fake_mnist, tmp_path
):
    from lpntk import DataError, MissingFileError
    from lpntk.analysis_stage import compare_checkpoint
    from lpntk.prune import Pruned, write_pruned
    from lpntk.training import run_training

    cfg = TrainConfig(
        model="mlp3", model_options={"widths": [8, 8]}, epochs=2, batch_size=16, seed=1
    )
    run = run_training(cfg, tmp_path / "run", data_dir=fake_mnist, progress=False).out_dir
    train = torch.load(run / "best.pt", weights_only=True)["train_indices"]
    good = write_pruned(Pruned(np.sort(train[:20]), {"kept": 20}), tmp_path / "good")

    def folder(name, kept=None, manifest=None, raw=None):
        f = tmp_path / name
        f.mkdir()
        if raw is not None:
            (f / "kept.npy").write_bytes(raw)
        elif kept is not None:
            np.save(f / "kept.npy", np.asarray(kept))
        if manifest is not None:
            (f / "manifest.json").write_text(json.dumps(manifest))
        return f

    bad = {
        "does not exist": (MissingFileError, tmp_path / "nowhere"),
        "holds no manifest.json": (DataError, folder("unfinished", train[:3])),
        "corrupt": (DataError, folder("garbage", raw=b"\x00garbage", manifest={"kept": 1})),
        "not 1-D integers": (DataError, folder("floats", [0.5, 1.5], {"kept": 2})),
        "repeats 1 indices": (DataError, folder("twice", [train[0]] * 2, {"kept": 2})),
        "not training samples": (DataError, folder("foreign", [10**6], {"kept": 1})),
        "manifest says 5": (DataError, folder("short", train[:3], {"kept": 5})),
    }
    out = tmp_path / "cmp"
    for message, (error, path) in bad.items():
        with pytest.raises(error, match=message) as e:
            compare_checkpoint(run, [good, path], out, seeds=2, data_dir=fake_mnist)
        assert str(path) in str(e.value)
        assert not out.exists()  # nothing trained before the check
    stamp = (run / "best.pt").stat().st_mtime_ns
    c = compare_checkpoint(run, [good], out, seeds=[0, 1], data_dir=fake_mnist, progress=False)
    used = {(r["subset"], r["seed"]): r["run_dir"] for r in c.runs}
    assert used["full", 1] == str(run) and used["full", 0] == str(out / "full" / "seed_0")
    assert (run / "best.pt").stat().st_mtime_ns == stamp and not (out / "full" / "seed_1").exists()


def test_a_comparison_says_which_run_and_how_long_is_left(tmp_path, capsys):
    recipe = toy_recipe([])
    compare_training(recipe, {"first": np.arange(10, 40)}, [0, 1], tmp_path / "a", progress=True)
    err = capsys.readouterr().err
    assert "[1/4] full, seed 0, the full set\n" in err
    assert "[4/4] first, seed 1, 30 samples; about " in err and " s left" in err
    compare_training(recipe, {"first": np.arange(10, 40)}, [0, 1], tmp_path / "a", progress=True)
    assert "left" not in capsys.readouterr().err  # all found finished: no time to go by


def test_sample_kernel_compare_checks_the_pruned_sets(tmp_path):
    from lpntk import ConfigError, SampleKernel

    recipe = toy_recipe([])
    model = recipe.make_model(0)
    sk = SampleKernel(model, recipe.dataset, progress=False)
    with pytest.raises(ConfigError, match="not samples of this kernel"):
        sk.compare(recipe, {"x": [0, 1]}, [0, 1], tmp_path / "a")
    c = sk.compare(recipe, {"first": np.arange(10, 30)}, [0, 1], tmp_path / "b")
    assert [r["n_train"] for r in c.runs] == [60, 60, 20, 20]


def test_the_report_of_a_comparison_captions_its_plot_and_warns_of_few_seeds(tmp_path):
    from lpntk.report import build_report

    recipe = toy_recipe([])
    out = tmp_path / "c"
    compare_training(recipe, {"first": np.arange(10, 40)}, [0, 1], out, progress=False)
    page = build_report(out).read_text()
    assert "Test accuracy after each epoch: the mean over seeds" in page
    assert "<small>(accuracy.png)</small>" in page
    assert "<tr><th>subset</th><th>runs</th><th>mean</th><th>std</th>" in page  # as written
    assert "these p-values stand on 2 runs a set" in page
    c = compare_training(recipe, {"first": np.arange(10, 40)}, range(5), tmp_path / "d")
    assert len(c.runs) == 10 and "Caveat" not in build_report(tmp_path / "d").read_text()
