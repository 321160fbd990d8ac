"""Learning difficulty and forgetting events from per-sample logs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lpntk.cli import main
from lpntk.dynamics import (
    easy_in_largest_cluster,
    forgetting_events,
    integrated_loss,
    run_dynamics,
)

from .test_cli import DATA_DIR, needs_mnist


def test_forgetting_events_on_scripted_sequences():
    sequences = [
        [0, 1, 1, 1],  # learned once, never forgotten
        [1, 0, 1, 0],  # forgotten twice
        [0, 0, 0, 0],  # never learned
        [1, -1, 0, 1],  # not recorded at epoch 1: 1 -> 0 across the gap is one event
        [-1, -1, -1, -1],  # never recorded: never learned, no events
        [1, 1, 0, 0],  # one event
    ]
    correct = np.array(sequences, dtype=np.int8).T  # (evaluations, samples)
    events, first, never = forgetting_events(correct)
    np.testing.assert_array_equal(events, [0, 2, 0, 1, 0, 1])
    np.testing.assert_array_equal(first, [1, 0, -1, 0, -1, 0])
    np.testing.assert_array_equal(never, [False, False, True, False, True, False])
    named = forgetting_events(correct)  # the same, by name
    assert named.events is not None and named._fields == (
        "events",
        "first_learned",
        "never_learned",
    )
    np.testing.assert_array_equal(named.never_learned, never)
    with pytest.raises(ValueError, match="evaluations, samples"):
        forgetting_events(np.zeros(3))


def test_integrated_loss_by_hand():
    loss = np.array([[1.0, 0.5], [0.25, np.nan], [0.25, 2.0]])
    np.testing.assert_allclose(integrated_loss(loss), [1.5, 2.5])


def test_easy_in_largest_cluster_with_known_answers():
    import itertools
    import math

    cluster = np.array([0] * 30 + [1] * 50 + list(range(2, 22)))  # the largest: 1 (50)
    difficulty = np.arange(100.0)
    difficulty[30:40] = -1  # the 10 easiest are members of the largest cluster
    r = easy_in_largest_cluster(difficulty, cluster, 0.1)
    assert r["easiest"] == 10 and r["largest_cluster"] == 1 and r["largest_cluster_size"] == 50
    assert r["share_in_largest"] == 1.0 and r["expected_share"] == 0.5
    assert r["p_value"] == pytest.approx(math.comb(50, 10) / math.comb(100, 10), rel=1e-9)
    # the p-value is that of the permutation test, enumerated on a small case
    cluster = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4])
    difficulty = np.array([0.1, 5, 0.2, 6, 7, 0.3, 8, 9, 10, 11, 12, 13])
    r = easy_in_largest_cluster(difficulty, cluster, 0.25)  # the 3 easiest: 2 members
    hits = [sum(cluster[list(c)] == 0) for c in itertools.combinations(range(12), 3)]
    assert r["share_in_largest"] == pytest.approx(2 / 3)
    assert r["p_value"] == pytest.approx(np.mean(np.array(hits) >= 2), rel=1e-9)
    with pytest.raises(ValueError, match="one length"):
        easy_in_largest_cluster(difficulty, cluster[:5])


def write_logs(run, correct, loss, indices):
    d = run / "per_sample"
    d.mkdir(parents=True)
    correct = np.asarray(correct, dtype=np.int8)
    np.save(d / "correct.npy", correct)
    np.save(d / "loss.npy", np.asarray(loss, dtype=np.float32))
    np.save(d / "step.npy", np.arange(correct.size).reshape(correct.shape) * 10)
    np.save(d / "indices.npy", np.asarray(indices))


def test_runs_are_averaged_and_tabled(tmp_path):
    write_logs(
        tmp_path / "a", [[0, 1, 1], [1, 0, 1]], [[2.0, 1.0, 0.5], [1.0, 2.0, 0.5]], [7, 3, 5]
    )
    write_logs(
        tmp_path / "b", [[0, 0, 1], [1, 0, 0]], [[1.0, 3.0, 1.5], [0.0, 1.0, 0.5]], [7, 3, 5]
    )
    d = run_dynamics([tmp_path / "a", tmp_path / "b"])
    np.testing.assert_allclose(d.difficulty, [2.0, 3.5, 1.5])
    np.testing.assert_allclose(d.forgetting, [0, 0.5, 0.5])  # 1 -> 0 for index 3 in a, 5 in b
    np.testing.assert_allclose(d.never_learned, [0, 0.5, 0])
    # first correct: index 7 at epoch 1 (steps 3 and 3); index 3 at epoch 0 in a (step 1)
    np.testing.assert_allclose(d.first_learned_step, [30, 10, 20])
    t = d.table()
    assert list(t["index"]) == [3, 5, 7] and list(t["difficulty_rank"]) == [1, 3, 2]
    write_logs(tmp_path / "c", [[0, 1, 1], [1, 1, 1]], np.ones((2, 3)), [7, 3, 6])
    with pytest.raises(ValueError, match="other samples"):
        run_dynamics([tmp_path / "a", tmp_path / "c"])
    with pytest.raises(FileNotFoundError, match="--log-per-sample"):
        run_dynamics([tmp_path])
    write_logs(tmp_path / "d", [[0, 1, 1], [1, 0, 1], [1, 1, 1]], np.ones((3, 3)), [7, 3, 5])
    with pytest.raises(ValueError, match="same length"):
        run_dynamics([tmp_path / "a", tmp_path / "d"])
    np.save(tmp_path / "d" / "per_sample" / "step.npy", np.array([[0, 1, 2], [3, 4, 5], [-1] * 3]))
    with pytest.raises(ValueError, match="unfinished"):
        run_dynamics([tmp_path / "d"])


@needs_mnist
def test_cli_dynamics_and_forgetting_pruning(checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint), "--data-dir", DATA_DIR, "--no-progress"]
    out = tmp_path / "forget"
    argv = ["prune", *base, "--strategy", "forgetting", "--size", "50", "--score-seeds", "2"]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    kept = np.load(out / "kept.npy")
    assert len(kept) == 50
    m = json.loads((out / "manifest.json").read_text())
    assert m["strategy"] == "forgetting" and m["source"]["seeds"] == [0, 1]
    runs = [out / "forgetting" / f"seed_{s}" for s in (0, 1)]
    d = run_dynamics(runs)
    score = np.where(d.never_learned > 0, np.inf, d.forgetting)
    rest = np.setdiff1d(d.indices, kept)
    by_index = dict(zip(d.indices.tolist(), score, strict=True))
    assert min(by_index[i] for i in kept) >= max(by_index[i] for i in rest)
    capsys.readouterr()
    analysis = tmp_path / "analysis"
    argv = ["analyze", *base, "--clusters", "6", "--no-relationships", "--out", str(analysis)]
    assert main(argv) == 0
    capsys.readouterr()
    table = tmp_path / "dyn"
    argv = ["dynamics", "--runs", *map(str, runs), "--out", str(table), "--data-dir", DATA_DIR]
    assert main([*argv, "--clusters", str(analysis / "per_sample.csv")]) == 0
    printed = capsys.readouterr().out
    assert "per_sample.csv" in printed and "easiest in the largest cluster" in printed
    import pandas as pd

    t = pd.read_csv(table / "per_sample.csv")
    assert list(t["index"]) == sorted(d.indices.tolist())
    np.testing.assert_allclose(t["forgetting"], d.table()["forgetting"])
    summary = json.loads((table / "summary.json").read_text())
    assert summary["n"] == len(d.indices) and summary["runs"] == [str(r) for r in runs]
    clusters = pd.read_csv(analysis / "per_sample.csv")
    column = "cluster"  # analyze names the one variant it ran plainly (--clusters 6)
    want = easy_in_largest_cluster(t["difficulty"], clusters.sort_values("index")[column])
    assert summary["easy_in_largest_cluster"] == pytest.approx(want)
    assert main(["dynamics", "--runs", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "--log-per-sample" in capsys.readouterr().err
