"""lpntk analyze / prune / compare on a tiny real MNIST checkpoint."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from lpntk.analysis import drop_redundant, redundant_samples
from lpntk.cli import main
from lpntk.kernel import Features

from .test_cli import DATA_DIR, needs_mnist

pytestmark = needs_mnist


def test_analyze_writes_tables_stats_and_a_plot(checkpoint, tmp_path, capsys):
    out = tmp_path / "a"
    argv = f"analyze --checkpoint {checkpoint} --limit 200 --clusters 20 --out {out} --no-progress"
    assert main([*argv.split(), "--data-dir", DATA_DIR]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "200 samples" in printed
    rows = list(csv.DictReader(open(out / "per_sample.csv")))
    feats = Features.load(out / "features")
    assert [int(r["index"]) for r in rows] == sorted(feats.indices.tolist())
    red = redundant_samples(feats, progress=False)
    by_index = {int(r["index"]): r for r in rows}
    for pos in range(200):
        r = by_index[int(feats.indices[pos])]
        assert (r["redundant"] == "True") == bool(red.redundant[pos])
        want = feats.indices[red.witness[pos]] if red.redundant[pos] else -1
        assert int(r["witness"]) == want
        assert r["label_name"] == "135"[feats.labels[pos]]  # classes 1, 3, 5 relabelled 0, 1, 2
    stats = json.loads((out / "clusters.json").read_text())
    assert stats["clusters"] == 20 and sum(stats["sizes_sorted"]) == 200
    for picture in ("cluster_sizes", "redundant_pairs", "contradictory_pairs", "clusters"):
        assert (out / f"{picture}.png").stat().st_size > 1000, picture
    summary = json.loads((out / "summary.json").read_text())
    assert summary["redundant_fraction"] == pytest.approx(red.fraction)


def test_analyze_and_prune_from_projected_features(checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint), "--data-dir", DATA_DIR, "--no-progress"]
    out = tmp_path / "a"
    argv = [*base, "--limit", "150", "--clusters", "10", "--proj-dim", "64", "--out", str(out)]
    assert main(["analyze", *argv]) == 0
    feats = Features.load(out / "features")
    assert (feats.meta["strategy"], feats.meta["proj_dim"], feats.floats_per_sample()) == (
        "projected",
        64,
        64,
    )
    red = redundant_samples(feats, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["proj_dim"] == 64 and summary["redundant_fraction"] == pytest.approx(
        red.fraction
    )
    argv = [*base, "--strategy", "redundant", "--proj-dim", "32", "--out", str(tmp_path / "p")]
    assert main(["prune", *argv]) == 0
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["proj_dim"] == 32
    assert Features.load(tmp_path / "p" / "features").meta["proj_dim"] == 32
    capsys.readouterr()
    argv = [*base, "--strategy", "random", "--size", "9", "--proj-dim", "8"]
    assert main(["prune", *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--proj-dim" in err and "kernel strategies" in err


def test_prune_then_compare(checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint), "--data-dir", DATA_DIR, "--no-progress"]
    assert main(["prune", *base, "--strategy", "redundant", "--out", str(tmp_path / "red")]) == 0
    kept = np.load(tmp_path / "red" / "kept.npy")
    manifest = json.loads((tmp_path / "red" / "manifest.json").read_text())
    assert manifest["strategy"] == "redundant" and manifest["kept"] == len(kept)
    feats = Features.load(tmp_path / "red" / "features")
    keep = drop_redundant(redundant_samples(feats, progress=False), "cover")
    np.testing.assert_array_equal(kept, np.sort(feats.indices[keep]))
    ckpt = torch.load(checkpoint, weights_only=True)
    assert set(kept.tolist()) <= set(ckpt["train_indices"])
    rnd = tmp_path / "rnd"
    argv = ["prune", *base, "--strategy", "random", "--size", str(len(kept)), "--out", str(rnd)]
    assert main(argv) == 0
    assert len(np.load(rnd / "kept.npy")) == len(kept)
    # an option of another strategy is a usage error naming both flags
    bad = ["prune", *base, "--strategy", "random", "--size", "9", "--rule", "all"]
    bad += ["--out", str(tmp_path / "x")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "--rule does not apply to strategy random" in err and "--size" in err
    out = tmp_path / "cmp"
    argv = ["compare", *base, "--pruned", str(tmp_path / "red"), str(rnd), "--seeds", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "full: test accuracy" in printed and "red:" in printed and "Welch p" in printed
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["subset"] for r in summary] == ["full", "red", "rnd"]
    assert (out / "accuracy.png").exists()


def test_prune_reuses_the_features_and_search_of_analyze(checkpoint, tmp_path, capsys, monkeypatch):
    import lpntk.samples as samples

    base = ["--checkpoint", str(checkpoint), "--data-dir", DATA_DIR, "--no-progress"]
    a = tmp_path / "a"
    assert main(["analyze", *base, "--clusters", "10", "--out", str(a)]) == 0
    assert (a / "redundancy.npz").exists()
    limited = tmp_path / "limited"
    assert main(["analyze", *base, "--limit", "50", "--clusters", "5", "--out", str(limited)]) == 0
    fresh = tmp_path / "fresh"
    assert main(["prune", *base, "--strategy", "redundant", "--out", str(fresh)]) == 0
    monkeypatch.setattr(samples, "redundant_samples", None)  # no second search
    stamps = {f: f.stat().st_mtime_ns for f in (a / "features").rglob("*") if f.is_file()}
    reused = tmp_path / "reused"
    argv = ["prune", *base, "--strategy", "redundant", "--analysis", str(a), "--out", str(reused)]
    assert main(argv) == 0, capsys.readouterr().err
    assert not (reused / "features").exists()  # the analysis store, read as it was
    assert stamps == {f: f.stat().st_mtime_ns for f in (a / "features").rglob("*") if f.is_file()}
    np.testing.assert_array_equal(np.load(reused / "kept.npy"), np.load(fresh / "kept.npy"))
    capsys.readouterr()
    argv[argv.index(str(a))] = str(limited)
    assert main(argv) == 2
    assert "argument --analysis" in capsys.readouterr().err
