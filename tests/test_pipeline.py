import json

from lpntk import TrainConfig, run_demo

from .test_cli import DATA_DIR, needs_mnist


@needs_mnist
def test_demo_pipeline_end_to_end_and_resume(tmp_path, capsys):
    cfg = TrainConfig(epochs=2, train_size=1000, batch_size=32, seed=2)
    report = run_demo(tmp_path, cfg, data_dir=DATA_DIR, progress=False)
    assert report["train"]["test_acc"] > 0.7
    assert report["kernel"]["n"] == 1000 and report["kernel"]["kind"] == "lpntk"
    assert json.loads((tmp_path / "summary.json").read_text())["kernel"]["n"] == 1000
    lines = (tmp_path / "kernel" / "per_sample.csv").read_text().splitlines()
    assert len(lines) == 1001
    # a second run finds every stage finished and reports the same results
    again = run_demo(tmp_path, cfg, data_dir=DATA_DIR, progress=False)
    assert again["train"] == report["train"] and again["kernel"] == report["kernel"]
