"""Learning difficulty and forgetting events from per-sample logs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lpntk.cli import main
from lpntk.dynamics import forgetting_events, integrated_loss, run_dynamics

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
    with pytest.raises(ValueError, match="evaluations, samples"):
        forgetting_events(np.zeros(3))


def test_integrated_loss_by_hand():
    loss = np.array([[1.0, 0.5], [0.25, np.nan], [0.25, 2.0]])
    np.testing.assert_allclose(integrated_loss(loss), [1.5, 2.5])


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
    write_logs(tmp_path / "c", [[0, 1, 1]], [[1.0, 1.0, 1.0]], [7, 3, 6])
    with pytest.raises(ValueError, match="other samples"):
        run_dynamics([tmp_path / "a", tmp_path / "c"])
    with pytest.raises(FileNotFoundError, match="--log-per-sample"):
        run_dynamics([tmp_path])


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
    table = tmp_path / "dyn"
    argv = ["dynamics", "--runs", *map(str, runs), "--out", str(table)]
    assert main(argv) == 0
    assert "per_sample.csv" in capsys.readouterr().out
    import pandas as pd

    t = pd.read_csv(table / "per_sample.csv")
    assert list(t["index"]) == sorted(d.indices.tolist())
    np.testing.assert_allclose(t["forgetting"], d.table()["forgetting"])
    summary = json.loads((table / "summary.json").read_text())
    assert summary["n"] == len(d.indices) and summary["runs"] == [str(r) for r in runs]
    assert main(["dynamics", "--runs", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "--log-per-sample" in capsys.readouterr().err
