import csv
import json
import os
import stat

import numpy as np
import pytest
import torch

from lpntk import load_checkpoint
from lpntk.cli import build_parser, main
from lpntk.kernel import Features, gram, kernel_block

from .test_cli import DATA_DIR, needs_mnist


def table(path):
    return list(csv.DictReader(open(path)))


@needs_mnist
def test_kernel_cli_writes_features_and_per_sample_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "k"
    argv = (
        f"kernel --checkpoint {checkpoint} --kind lpntk --limit 200 --top-k 4 --out {out} "
        f"--data-dir {DATA_DIR} --no-progress"
    ).split()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "200 train samples" in printed  # quiet stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 200 and summary["kind"] == "lpntk" and summary["top_k"] == 4
    assert summary["strategy"] == "factored"
    feats = Features.load(out / "features")
    ckpt = torch.load(checkpoint, weights_only=False)
    np.testing.assert_array_equal(feats.indices, ckpt["train_indices"][:200])
    assert set(np.unique(feats.labels)) <= {0, 1, 2}
    g = gram(feats).double()
    diag = g.diagonal().clone()
    g.fill_diagonal_(np.nan)
    most = torch.nan_to_num(g, nan=-np.inf)
    least = torch.nan_to_num(g, nan=np.inf)
    rows = table(out / "per_sample.csv")
    assert [int(r["index"]) for r in rows] == sorted(feats.indices.tolist())
    by_index = {int(r["index"]): r for r in rows}
    model, _ = load_checkpoint(checkpoint)
    x = torch.stack([feats_x for feats_x, _ in (ds_item(i) for i in feats.indices)])
    with torch.no_grad():
        logits = model(x)
    original = np.array([1, 3, 5])
    for pos in range(200):
        r = by_index[int(feats.indices[pos])]
        assert r["split"] == "train"
        assert int(r["original_label"]) == original[int(r["label"])]
        assert int(r["prediction"]) == logits[pos].argmax().item()
        assert int(r["original_prediction"]) == original[int(r["prediction"])]
        loss = torch.nn.functional.cross_entropy(
            logits[pos : pos + 1], torch.tensor([feats.labels[pos]])
        )
        assert float(r["loss"]) == pytest.approx(loss.item(), rel=1e-4)
        assert int(r["correct"]) == int(r["prediction"] == r["label"])
        assert float(r["self_kernel"]) == pytest.approx(diag[pos].item(), rel=1e-4)
        assert float(r["max_kernel_other"]) == pytest.approx(most[pos].max().item(), rel=1e-4)
        j = most[pos].argmax().item()
        assert int(r["argmax_index"]) == feats.indices[j]
        assert int(r["argmax_label"]) == feats.labels[j]
        assert float(r["min_kernel_other"]) == pytest.approx(least[pos].min().item(), rel=1e-4)
        j = least[pos].argmin().item()
        assert (
            int(r["argmin_index"]) == feats.indices[j] and int(r["argmin_label"]) == feats.labels[j]
        )
    # neighbours.csv: the 4 most and 4 least similar others of each sample, in order
    nb = table(out / "neighbours.csv")
    assert len(nb) == 200 * 8
    for pos in (0, 57, 199):
        mine = [r for r in nb if int(r["index"]) == feats.indices[pos]]
        for relation, ref in (("most_similar", most[pos]), ("least_similar", -least[pos])):
            got = [r for r in mine if r["relation"] == relation]
            want = ref.topk(4).indices.tolist()
            assert [int(r["rank"]) for r in got] == [1, 2, 3, 4]
            assert [int(r["other_index"]) for r in got] == feats.indices[want].tolist()
            assert [int(r["other_label"]) for r in got] == feats.labels[want].tolist()
            vals = [float(r["kappa"]) for r in got]
            np.testing.assert_allclose(vals, g[pos, want].numpy(), rtol=1e-4)
    # a second run finds the finished store and gives the same outputs
    assert main(argv) == 0
    np.testing.assert_array_equal(
        np.load(out / "row_argmax_index.npy"),
        [int(by_index[i]["argmax_index"]) for i in feats.indices],
    )


_MNIST = {}


def ds_item(index):
    """MNIST training image ``index`` as the model sees it."""
    from lpntk import load_dataset

    if "train" not in _MNIST:
        _MNIST["train"] = load_dataset("mnist", "train", DATA_DIR)
    return _MNIST["train"][int(index)]


@needs_mnist
def test_kernel_cli_against_writes_the_cross_kernel(checkpoint, tmp_path):
    out = tmp_path / "x"
    argv = (  # a mid-training checkpoint (last.pt) works like best.pt
        f"kernel --checkpoint {checkpoint.parent / 'last.pt'} --split test --limit 30 "
        f"--against train --against-limit 50 --top-k 2 --out {out} --data-dir {DATA_DIR} "
        "--no-progress --dtype float64"
    ).split()
    assert main(argv) == 0
    rows, cols = Features.load(out / "features"), Features.load(out / "against" / "features")
    assert (rows.n, cols.n) == (30, 50)
    want = kernel_block(rows, Y=cols).numpy()
    cross = np.load(out / "cross_kernel.npy")
    np.testing.assert_allclose(cross, want, rtol=1e-12, atol=1e-12)
    per = table(out / "per_sample.csv")
    order = np.argsort(rows.indices)
    for r, pos in zip(per, order, strict=True):
        assert r["split"] == "test"
        assert int(r["argmax_index"]) == cols.indices[want[pos].argmax()]
        assert int(r["argmin_index"]) == cols.indices[want[pos].argmin()]
    assert not list(out.glob(".*partial"))


@needs_mnist
def test_kernel_cli_entk_says_what_it_wrote(checkpoint, tmp_path, capsys):
    out = tmp_path / "e"
    epoch1 = checkpoint.parent / "checkpoints" / "epoch_001.pt"
    argv = (
        f"kernel --checkpoint {epoch1} --kind entk --split test --limit 20 "
        f"--out {out} --data-dir {DATA_DIR} --no-progress"
    ).split()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "entk" in printed and "diagonal.npy" in printed and "need a scalar kind" in printed
    diag = np.load(out / "diagonal.npy")
    assert diag.shape == (20, 3, 3)
    rows = table(out / "per_sample.csv")
    assert len(rows) == 20 and "max_kernel_other" not in rows[0]
    feats = Features.load(out / "features")
    for r in rows:
        pos = int(np.flatnonzero(feats.indices == int(r["index"]))[0])
        assert float(r["self_kernel_trace"]) == pytest.approx(np.trace(diag[pos]), rel=1e-5)


def test_every_option_has_help_and_shows_its_default():
    def walk(parser, name):
        yield name, parser
        for action in parser._actions:
            if isinstance(action.choices, dict):  # the sub-commands
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")

    seen = 0
    for name, parser in walk(build_parser(), "lpntk"):
        text = parser.format_help()
        for action in parser._actions:
            if action.dest == "help":
                continue
            seen += 1
            assert action.help, (name, action.option_strings or action.dest)
            default = action.default
            hidden = default is None or default is False or default in ([], "==SUPPRESS==")
            if action.option_strings and not hidden:
                assert f"(default: {default})" in " ".join(text.split()), (name, action.dest)
            elif action.option_strings and not action.required and action.nargs != 0:
                assert "default" in action.help, (name, action.dest)
            if action.choices is not None and not isinstance(action.choices, dict):
                assert "{" + ",".join(map(str, action.choices)) + "}" in text, (name, action.dest)
    assert seen > 50


def test_version_and_top_level_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("lpntk 0.")
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "lpntk kernel --checkpoint" in text and "LPNTK_DATA_DIR" in text
    for command in ("data", "train", "kernel", "demo"):
        assert command in text
    assert main(["data", "fetch", "--help"]) == 0
    assert "--data-dir" in capsys.readouterr().out


@needs_mnist
def test_outputs_are_readable_like_any_other_file(checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "modes"
        argv = f"kernel --checkpoint {checkpoint} --limit 20 --top-k 1 --out {out} --no-progress"
        assert main([*argv.split(), "--data-dir", DATA_DIR]) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    files += [p for p in checkpoint.parent.rglob("*") if p.is_file()]
    assert len(files) > 15
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


@needs_mnist
def test_top_k_beyond_the_other_samples_keeps_them_all(checkpoint, tmp_path):
    out = tmp_path / "big"
    argv = f"kernel --checkpoint {checkpoint} --limit 20 --top-k 500 --out {out} --no-progress"
    assert main([*argv.split(), "--data-dir", DATA_DIR]) == 0
    rows = table(out / "neighbours.csv")
    assert len(rows) == 20 * 19 * 2  # every other sample, most and least similar
    # a failed rerun with other options leaves no mix of old and new outputs
    bad = f"kernel --checkpoint {checkpoint} --limit 20 --against test --against-limit 5"
    assert main([*bad.split(), "--out", str(out), "--batch-size", "0", "--no-progress"]) == 2
    assert (out / "summary.json").exists()  # refused before anything was computed
