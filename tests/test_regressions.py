"""Regression tests for bugs found in review."""

import json

import numpy as np
import pytest
import torch

from lpntk import ConfigError, DataError, TrainConfig, run_training
from lpntk.cli import main
from lpntk.kernel import compute_features

from .test_cli import DATA_DIR, needs_mnist
from .test_kernel_helpers import make_data, make_model
from .test_train import CFG, run


def test_reopening_a_finished_store_keeps_its_labels(tmp_path):
    model, data = make_model("mlp"), make_data("mlp", n=10)
    first = compute_features(model, data, out_dir=tmp_path, progress=False)
    labels = np.array(first.labels)
    again = compute_features(model, data, out_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.labels, labels)
    np.testing.assert_array_equal(labels, data.tensors[1].numpy())


def test_store_refuses_the_same_indices_with_other_labels(tmp_path):
    from lpntk import ArrayDataset

    images = np.random.default_rng(0).integers(0, 255, (12, 1, 28, 28), dtype=np.uint8)
    a = ArrayDataset(images, np.arange(12) % 3, classes=("a", "b", "c"), mean=(0.5,), std=(0.5,))
    b = ArrayDataset(
        images, (np.arange(12) + 1) % 3, classes=("a", "b", "c"), mean=(0.5,), std=(0.5,)
    )
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))
    compute_features(model, a, out_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="another model, dataset or setting"):
        compute_features(model, b, out_dir=tmp_path, progress=False)


def test_bad_feature_options():
    model, data = make_model("mlp"), make_data("mlp")
    with pytest.raises(ConfigError, match="batch_size"):
        compute_features(model, data, batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="proj_dim: applies only"):
        compute_features(model, data, "lpntk", "factored", proj_dim=8, progress=False)


def test_fresh_run_replaces_old_per_sample_logs(tmp_path):
    cfg = TrainConfig(**{**CFG, "log_per_sample": True, "epochs": 1})
    run(tmp_path, "a", cfg)
    (tmp_path / "a" / "last.pt").unlink()  # start again, as the resume error advises
    cfg2 = TrainConfig(**{**CFG, "log_per_sample": True, "epochs": 2})
    run(tmp_path, "a", cfg2)
    assert np.load(tmp_path / "a" / "per_sample" / "loss.npy").shape == (2, 96)


def test_resume_accepts_another_checkpoint_interval_and_lists_for_tuples(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "a", TrainConfig(**{**CFG, "classes": (0, 1, 2)}), stop_after_steps=3)
    resumed = TrainConfig(**{**CFG, "classes": [0, 1, 2], "checkpoint_every": 5})
    _, result = run(tmp_path, "a", resumed)
    assert len(result.history) == CFG["epochs"]


def test_train_config_rejects_impossible_values():
    for bad in (
        {"step_size": 0},
        {"gamma": 0},
        {"momentum": -1},
        {"weight_decay": -1},
        {"train_size": 0},
        {"test_size": 0},
        {"test_size": 1.5},
    ):
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate()


@needs_mnist
def test_test_size_is_a_seeded_stratified_subset_of_the_test_split():
    from lpntk.training import prepare_data

    _, _, full = prepare_data(TrainConfig(), DATA_DIR)
    _, _, a = prepare_data(TrainConfig(test_size=500, seed=1), DATA_DIR)
    _, _, b = prepare_data(TrainConfig(test_size=500, seed=1), DATA_DIR)
    _, _, c = prepare_data(TrainConfig(test_size=500, seed=2), DATA_DIR)
    assert len(a) == 500 and a.split == "test"
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert set(a.indices) <= set(full.indices)
    share = a.class_counts() / 500
    np.testing.assert_allclose(share, full.class_counts() / len(full), atol=0.002)
    with pytest.raises(ConfigError, match="test split has only 10000") as e:
        prepare_data(TrainConfig(test_size=10001), DATA_DIR)
    assert e.value.param == "test_size"


@needs_mnist
def test_a_runs_test_samples_are_its_test_size_subset(tmp_path):
    from lpntk.kernel_stage import checkpoint_data
    from lpntk.training import load_checkpoint, prepare_data

    cfg = TrainConfig(epochs=1, train_size=300, test_size=50, seed=0)
    run_training(cfg, tmp_path, data_dir=DATA_DIR, progress=False)
    _, ckpt = load_checkpoint(tmp_path / "best.pt")
    test = checkpoint_data(ckpt, "test", data_dir=DATA_DIR)
    np.testing.assert_array_equal(test.indices, prepare_data(cfg, DATA_DIR)[2].indices)
    assert len(test) == 50 and "test_size" not in TrainConfig().to_dict()
    assert len(checkpoint_data(ckpt, "test", dataset="mnist", data_dir=DATA_DIR)) == 50


@needs_mnist
def test_train_indices_must_all_be_training_samples(tmp_path):
    cfg = TrainConfig(epochs=1, train_size=300, seed=0)
    with pytest.raises(DataError, match="not in this dataset"):
        run_training(cfg, tmp_path, data_dir=DATA_DIR, progress=False, train_indices=[-5, 1])


@needs_mnist
def test_kernel_outputs_follow_the_features_and_a_lone_sample_has_no_nearest(tmp_path):
    out = tmp_path / "train"
    assert (
        main(
            f"train --epochs 1 --train-size 300 --out {out} --data-dir {DATA_DIR} "
            "--no-progress".split()
        )
        == 0
    )
    k = tmp_path / "k"
    base = f"kernel --checkpoint {out} --out {k} --data-dir {DATA_DIR} --no-progress"
    assert main(f"{base} --limit 1".split()) == 0
    assert np.load(k / "row_argmax_index.npy").tolist() == [-1]
    assert np.isnan(np.load(k / "row_max.npy")).all()
    row = (k / "per_sample.csv").read_text().splitlines()[1]
    assert row.endswith(",,-1,-1,,-1,-1")  # no other sample: empty kappa, index and label -1
    # features deleted and recomputed with another kind: the outputs must follow
    import shutil

    shutil.rmtree(k / "features")
    assert main(f"{base} --limit 5 --kind pntk".split()) == 0
    summary = json.loads((k / "summary.json").read_text())
    assert summary["kind"] == "pntk" and summary["n"] == 5
    assert np.load(k / "diagonal.npy").shape == (5,)
