import csv
import json

import numpy as np
import pytest

from lpntk import TrainConfig, run_demo
from lpntk.kernel import Features

from .test_cli import DATA_DIR, needs_mnist


@needs_mnist
def test_demo_pipeline_end_to_end_and_resume(tmp_path, capsys):
    cfg = TrainConfig(epochs=2, train_size=1000, batch_size=32, seed=2)
    report = run_demo(tmp_path, cfg, seeds=2, data_dir=DATA_DIR, progress=False)
    assert report["train"]["test_acc"] > 0.7
    # the analysed model is the full set's seed-2 run of the comparison
    run = tmp_path / "compare" / "full" / "seed_2"
    assert report["train"]["checkpoint"] == str(run / "best.pt")
    assert json.loads((tmp_path / "summary.json").read_text())["analysis"]["n"] == 1000
    analysis = tmp_path / "analysis"
    assert Features.load(analysis / "features").meta["kind"] == "lpntk"
    rows = list(csv.DictReader(open(analysis / "per_sample.csv")))
    assert len(rows) == 1000 and {"argmax_index", "min_kernel_other"} <= set(rows[0])
    assert report["analysis"]["n"] == 1000 and report["analysis"]["clusters"] == 100
    for name in ("per_sample.csv", "clusters.json", "cluster_sizes.png", "redundant_pairs.png"):
        assert (analysis / name).exists(), name
    # the pruned set drops redundant samples; the random one has the same size
    kept = np.load(tmp_path / "pruned" / "redundant" / "kept.npy")
    rows = {int(r["index"]): r for r in csv.DictReader(open(analysis / "per_sample.csv"))}
    assert 0 < len(kept) < 1000 and set(kept.tolist()) <= set(rows)
    assert len(kept) >= sum(r["redundant"] == "False" for r in rows.values())  # cover keeps more
    assert len(np.load(tmp_path / "pruned" / "random" / "kept.npy")) == len(kept)
    assert [r["subset"] for r in report["compare"]] == ["full", "redundant", "random"]
    assert all(r["runs"] == 2 for r in report["compare"])
    assert sorted(p.name for p in (tmp_path / "compare" / "full").iterdir()) == [
        "seed_2",
        "seed_3",
    ]
    assert (tmp_path / "compare" / "accuracy.png").exists()
    assert set(report["seconds"]) == {"train", "analysis", "prune", "compare"}
    printed = capsys.readouterr().out
    assert "compare: redundant test accuracy" in printed and "Welch p" in printed
    # a second run finds every stage finished and reports the same results
    stamp = (analysis / "per_sample.csv").stat().st_mtime_ns
    again = run_demo(tmp_path, cfg, seeds=2, data_dir=DATA_DIR, progress=True)
    err = capsys.readouterr().err  # where the command stands, stage by stage
    assert "[1/4] train lenet5 on mnist, seed 2" in err and "[4/4] compare: " in err
    assert "[1/6] full, seed 2, the full set" in err  # and the comparison's own runs
    assert again["train"] == report["train"]
    assert again["analysis"] == report["analysis"] and again["compare"] == report["compare"]
    assert (analysis / "per_sample.csv").stat().st_mtime_ns == stamp
    # a record of another training (another checkpoint file at the same path) is not reused
    record = json.loads((analysis / "summary.json").read_text())
    record["checkpoint_sha256"] = "0" * 64
    (analysis / "summary.json").write_text(json.dumps(record))
    run_demo(tmp_path, cfg, seeds=2, data_dir=DATA_DIR, progress=False)
    assert (analysis / "per_sample.csv").stat().st_mtime_ns != stamp
    with pytest.raises(ValueError, match="at least 2 seeds"):
        run_demo(tmp_path, cfg, seeds=1, data_dir=DATA_DIR, progress=False)
