import csv
import json

import numpy as np
import pytest
import torch

from lpntk.cli import main
from lpntk.kernel import Features, gram

from .test_cli import DATA_DIR, needs_mnist


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    argv = (
        "train --model lenet5 --epochs 1 --train-size 600 --batch-size 32 --classes 0 1 2 "
        f"--out {out} --data-dir {DATA_DIR} --no-progress"
    ).split()
    assert main(argv) == 0
    return out / "best.pt"


@needs_mnist
def test_kernel_cli_writes_features_and_per_sample_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "k"
    argv = (
        f"kernel --checkpoint {checkpoint} --kind lpntk --limit 200 --out {out} "
        f"--data-dir {DATA_DIR} --no-progress"
    ).split()
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 200 and summary["kind"] == "lpntk"
    assert summary["strategy"] == "factored"
    feats = Features.load(out / "features")
    ckpt = torch.load(checkpoint, weights_only=False)
    np.testing.assert_array_equal(feats.indices, ckpt["train_indices"][:200])
    assert set(np.unique(feats.labels)) <= {0, 1, 2}
    g = gram(feats).double()
    diag = g.diagonal().clone()
    g.fill_diagonal_(-np.inf)
    rows = list(csv.DictReader(open(out / "per_sample.csv")))
    assert [int(r["index"]) for r in rows] == sorted(feats.indices.tolist())
    by_index = {int(r["index"]): r for r in rows}
    for pos in range(0, 200, 17):
        r = by_index[int(feats.indices[pos])]
        assert float(r["self_kernel"]) == pytest.approx(diag[pos].item(), rel=1e-4)
        assert float(r["max_kernel_other"]) == pytest.approx(g[pos].max().item(), rel=1e-4)
        assert int(r["argmax_index"]) == feats.indices[g[pos].argmax().item()]
    # a second run finds the finished store and gives the same outputs
    assert main(argv) == 0
    np.testing.assert_array_equal(
        np.load(out / "row_argmax.npy"), [int(by_index[i]["argmax_index"]) for i in feats.indices]
    )


@needs_mnist
def test_kernel_cli_entk_and_test_split(checkpoint, tmp_path):
    out = tmp_path / "e"
    argv = (  # a run folder stands for its best.pt
        f"kernel --checkpoint {checkpoint.parent} --kind entk --split test --limit 20 "
        f"--out {out} --data-dir {DATA_DIR} --no-progress"
    ).split()
    assert main(argv) == 0
    assert np.load(out / "diagonal.npy").shape == (20, 3, 3)
    assert not (out / "per_sample.csv").exists()


def test_kernel_cli_bad_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["kernel", "--checkpoint", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["kernel", "--checkpoint", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "could not be read" in capsys.readouterr().err
