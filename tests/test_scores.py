"""EL2N scores (Paul et al. 2021) and the el2n pruning strategy."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

import lpntk
from lpntk.cli import main
from lpntk.scores import Scores, el2n, el2n_of_checkpoint
from lpntk.training import load_checkpoint, prepare_data

from .test_cli import DATA_DIR, needs_mnist
from .test_samples import mlp_and_data


def test_el2n_equals_the_definition():
    torch.manual_seed(0)
    model = nn.Linear(5, 4).double().train()
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 4, (30,))
    got = el2n(model, x, y, batch_size=7)
    z = (x @ model.weight.T + model.bias).detach().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = np.linalg.norm(p - np.eye(4)[y.numpy()], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert model.training  # the mode is restored
    assert ((got >= 0) & (got <= np.sqrt(2))).all()


def test_el2n_rejects_a_model_without_logits():
    with pytest.raises(ValueError, match="logits"):
        el2n(nn.Flatten(0), torch.randn(3, 2), torch.zeros(3, dtype=torch.long))


def test_sample_kernel_prunes_by_given_scores():
    model, data = mlp_and_data(n=20)
    sk = lpntk.SampleKernel(model, data, dtype="float64", progress=False)
    score = np.linspace(0, 1, 20)
    s = Scores(np.arange(20), np.zeros(20, int), score, score[None], {"score": "el2n"})
    np.testing.assert_array_equal(sk.prune("el2n", scores=s, size=5).kept, np.arange(15, 20))
    with pytest.raises(ValueError, match="needs scores="):
        sk.prune("el2n", size=5)
    other = Scores(np.arange(1, 21), np.zeros(20, int), score, score[None], {"score": "el2n"})
    with pytest.raises(ValueError, match="other samples"):
        sk.prune("el2n", scores=other, size=5)


@needs_mnist
def test_el2n_of_a_checkpoint_trains_short_runs_and_resumes(checkpoint, tmp_path):
    out = tmp_path / "el2n"
    s = el2n_of_checkpoint(
        checkpoint,
        seeds=[0, 3],
        epochs=1,
        out_dir=out,
        data_dir=DATA_DIR,
        device="cpu",
        progress=False,
    )
    _, ckpt = load_checkpoint(checkpoint)
    np.testing.assert_array_equal(s.indices, ckpt["train_indices"])  # the same training split
    assert s.per_seed.shape == (2, len(s.indices))
    np.testing.assert_allclose(s.score, s.per_seed.mean(0))
    assert not np.allclose(s.per_seed[0], s.per_seed[1])  # independent initialisations
    cfg = s.parameters["config"]
    assert cfg["epochs"] == 1 and cfg["schedule"] == "none" and s.parameters["seeds"] == [0, 3]
    # each seed's scores are those of its run's final weights
    model, run = load_checkpoint(out / "seed_3" / "last.pt")
    train_set, _, _ = prepare_data(lpntk.TrainConfig.from_dict(run["config"]), DATA_DIR)
    x, y = train_set.tensors()
    np.testing.assert_allclose(s.per_seed[1], el2n(model, x, y), rtol=1e-6)
    stamp = (out / "seed_0" / "last.pt").stat().st_mtime_ns
    again = el2n_of_checkpoint(
        checkpoint,
        seeds=[0, 3],
        epochs=1,
        out_dir=out,
        data_dir=DATA_DIR,
        device="cpu",
        progress=False,
    )
    assert (out / "seed_0" / "last.pt").stat().st_mtime_ns == stamp  # not trained again
    np.testing.assert_array_equal(again.score, s.score)


@needs_mnist
def test_cli_prunes_by_el2n_and_by_pntk(checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint), "--data-dir", DATA_DIR, "--no-progress"]
    out = tmp_path / "el2n"
    argv = ["prune", *base, "--strategy", "el2n", "--size", "100", "--score-seeds", "2"]
    assert main([*argv, "--score-epochs", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert "kept 100 of" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "scores.csv")))
    idx = [int(r["index"]) for r in rows]
    assert idx == sorted(idx) and set(rows[0]) == {
        "index",
        "label",
        "el2n",
        "el2n_seed_0",
        "el2n_seed_1",
    }
    score = {int(r["index"]): float(r["el2n"]) for r in rows}
    kept = np.load(out / "kept.npy")
    assert min(score[i] for i in kept) >= max(score[i] for i in set(score) - set(kept.tolist()))
    m = json.loads((out / "manifest.json").read_text())
    assert m["strategy"] == "el2n" and m["source"]["seeds"] == [0, 1]
    assert m["source"]["epochs"] == 1 and m["checkpoint"] == str(checkpoint.resolve())
    # pNTK redundancy: a kernel of its own kind
    out = tmp_path / "pntk"
    assert (
        main(["prune", *base, "--strategy", "redundant", "--kind", "pntk", "--out", str(out)]) == 0
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["kind"] == "pntk"
    lp = tmp_path / "lpntk"
    assert main(["prune", *base, "--strategy", "redundant", "--out", str(lp)]) == 0
    assert json.loads((lp / "manifest.json").read_text())["source"]["kind"] == "lpntk"
    # el2n needs --size, before any training
    assert main(["prune", *base, "--strategy", "el2n", "--out", str(tmp_path / "x")]) == 2
    assert "strategy el2n needs --size" in capsys.readouterr().err
    assert not (tmp_path / "x" / "el2n").exists()
