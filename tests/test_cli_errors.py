"""Bad input through the real command line (a subprocess each): one ``lpntk: error:`` line naming
the problem, the right exit status, no traceback, and no partial output left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from lpntk.cli import main

from .test_cli import DATA_DIR, needs_mnist

pytestmark = needs_mnist


def lpntk(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LPNTK_DEBUG"}
    environ.update({"LPNTK_DATA_DIR": DATA_DIR, "PYTHONWARNINGS": "ignore", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "lpntk", *map(str, args)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        **kwargs,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny trained run, a finished kernel of it, and broken copies of their files."""
    w = tmp_path_factory.mktemp("bad")
    assert main([*RESUME, str(w / "run"), "--data-dir", DATA_DIR]) == 0
    kernel = f"kernel --checkpoint {w / 'run'} --limit 40 --out {w / 'k'} --no-progress"
    assert main(kernel.split()) == 0
    best = w / "run" / "best.pt"
    torch.save(torch.zeros(3), w / "tensor.pt")
    torch.save(7, w / "int.pt")
    torch.save({"model": "lenet5", "model_state": {}}, w / "partial.pt")
    (w / "junk.pt").write_bytes(b"this is not a checkpoint")
    (w / "garbage.csv").write_bytes(b"\x00\x01\xff\xfe binary")
    (w / "empty.csv").write_text("")
    (w / "int.json").write_text("7")
    pruned = w / "pruned_garbage"
    pruned.mkdir()
    (pruned / "kept.npy").write_bytes(b"not numpy")
    (pruned / "manifest.json").write_text('{"kept": 1}')
    (w / "truncated.pt").write_bytes(best.read_bytes()[:5000])
    ckpt = torch.load(best, weights_only=True)
    torch.save({**ckpt, "model_state": {"w": torch.zeros(2)}}, w / "weights.pt")
    torch.save({**ckpt, "model": "vgg"}, w / "unknown_model.pt")
    torch.save({**ckpt, "train_indices": None}, w / "no_indices.pt")
    torch.save({**ckpt, "config": "zzz"}, w / "bad_config.pt")
    torch.save({**ckpt, "dataset": "svhn"}, w / "other_dataset.pt")
    for name, change in (
        ("other_n", {"n": 10**6, "complete": False}),
        ("no_pieces", {"pieces": []}),
    ):
        shutil.copytree(w / "k", w / name)
        group = json.loads((w / name / "features" / "zarr.json").read_text())
        group["attributes"]["lpntk"].update(change)
        (w / name / "features" / "zarr.json").write_text(json.dumps(group))
    for name in ("bad_last", "bad_log", "bad_meta", "no_array", "short_array"):
        src = w / ("run" if name.startswith("bad_l") else "k")
        shutil.copytree(src, w / name)
    (w / "bad_last" / "last.pt").write_bytes(b"\x00" * 100)
    (w / "bad_last" / "best.pt").unlink()
    (w / "bad_last" / "metrics.json").unlink()  # an unfinished run: it resumes from last.pt
    ckpt_last = torch.load(w / "run" / "last.pt", weights_only=True)
    ckpt_last["state"]["finished"] = False
    torch.save(ckpt_last, w / "bad_log" / "last.pt")
    (w / "bad_log" / "per_sample" / "loss.npy").write_bytes(b"\x93NUMPY garbage")
    (w / "bad_meta" / "features" / "zarr.json").write_text('{"n": 40, "pieces": [')
    shutil.rmtree(w / "no_array" / "features" / "0.F")
    chunk = w / "short_array" / "features" / "0.F" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-400])
    (w / "short_array" / "summary.json").unlink()  # found when the rows are read again
    shutil.copytree(w / "k", w / "no_chunk")
    (w / "no_chunk" / "features" / "1.A" / "c" / "0" / "0" / "0").unlink()
    (w / "a_file").write_text("not a folder")
    return w


RUN, K = "{w}/run", "{w}/k"
TRAIN = ("train", "--no-progress", "--epochs", "1", "--train-size", "100", "--out", "{w}/new")
# the settings of the fixture's run, so that a copy of it resumes
RESUME = tuple(
    "train --no-progress --epochs 1 --train-size 300 --classes 1 3 5 --batch-size 32 "
    "--log-per-sample --out".split()
)
RANDOM = ("prune", "--checkpoint", RUN, "--strategy", "random", "--size", "5", "--out", "{w}/new")
KERNEL = ("kernel", "--checkpoint", RUN, "--no-progress", "--limit", "10", "--out", "{w}/new")

# (name, argv, exit status, words the one-line message must hold)
CASES = [
    ("epochs zero", (*TRAIN, "--epochs", "0"), 2, ["argument --epochs", "integer >= 1"]),
    ("epochs not a number", (*TRAIN, "--epochs", "x"), 2, ["argument --epochs", "invalid int"]),
    ("val fraction", (*TRAIN, "--val-fraction", "1.5"), 2, ["argument --val-fraction"]),
    ("negative lr", (*TRAIN, "--lr", "-1"), 2, ["argument --lr", "positive"]),
    ("batch size", (*TRAIN, "--batch-size", "0"), 2, ["argument --batch-size"]),
    ("train size", (*TRAIN, "--train-size", "999999"), 2, ["argument --train-size", "only"]),
    ("unknown model", (*TRAIN, "--model", "vgg"), 2, ["argument --model", "lenet5"]),
    ("unknown dataset", (*TRAIN, "--dataset", "svhn"), 2, ["argument --dataset", "mnist"]),
    ("no out", ("train", "--epochs", "1"), 2, ["--out", "required"]),
    (
        "model option type",
        (*TRAIN, "--model", "mlp3", "--model-option", "widths=abc"),
        2,
        ["argument --model-option", "widths", "not valid"],
    ),
    (
        "model option bool",
        (*TRAIN, "--model", "mnist_cnn", "--model-option", "dropout=maybe"),
        2,
        ["argument --model-option", "dropout"],
    ),
    (
        "model option unknown",
        (*TRAIN, "--model-option", "depth=3"),
        2,
        ["argument --model-option", "no option 'depth'"],
    ),
    ("model option syntax", (*TRAIN, "--model-option", "junk"), 2, ["KEY=VALUE"]),
    ("device name", (*TRAIN, "--device", "tpu7"), 2, ["argument --device", "tpu7"]),
    ("device cuda", (*TRAIN, "--device", "cuda"), 2, ["argument --device", "CUDA"]),
    ("one class", (*TRAIN, "--classes", "3"), 2, ["argument --classes", "two classes"]),
    ("unknown class", (*TRAIN, "--classes", "11", "12"), 2, ["argument --classes", "11"]),
    (
        "other run in out",
        ("train", "--no-progress", "--epochs", "2", "--train-size", "300", "--out", RUN),
        2,
        ["argument --out", "different settings"],
    ),
    ("out is a file", (*TRAIN[:-1], "{w}/a_file/sub"), 2, ["argument --out", "a_file is a file"]),
    ("out is empty", (*TRAIN[:-1], ""), 2, ["argument --out", "empty"]),
    ("kernel out is a file", (*KERNEL[:-1], "{w}/a_file"), 2, ["argument --out", "is a file"]),
    (
        "data dir missing",
        (*TRAIN, "--data-dir", "{w}/typo"),
        1,
        ["argument --data-dir", "does not exist"],
    ),
    (
        "data dir a file",
        (*TRAIN, "--data-dir", "{w}/a_file"),
        2,
        ["argument --data-dir", "is a file"],
    ),
    ("negative seed", (*TRAIN, "--seed", "-1"), 2, ["argument --seed", ">= 0"]),
    ("huge lr", (*TRAIN, "--lr", "1e300"), 2, ["argument --lr", "1e6"]),
    (
        "model option reserved",
        (*TRAIN, "--model-option", "num_classes=4"),
        2,
        ["argument --model-option", "set from the data"],
    ),
    (
        "resnet width zero",
        (*TRAIN, "--model", "resnet18", "--model-option", "width=0"),
        2,
        ["argument --model-option", "width=0"],
    ),
    (
        "mlp widths zero",
        (*TRAIN, "--model", "mlp3", "--model-option", "widths=[0,5]"),
        2,
        ["argument --model-option", "widths=[0, 5]"],
    ),
    (
        "corrupt per-sample log",
        (*RESUME, "{w}/bad_log"),
        1,
        ["per-sample log", "loss.npy"],
    ),
    (
        "binary clusters table",
        ("dynamics", "--runs", "{w}/run", "--clusters", "{w}/garbage.csv", "--out", "{w}/new"),
        1,
        ["garbage.csv is corrupt or not a .csv file"],
    ),
    (
        "empty clusters table",
        ("dynamics", "--runs", "{w}/run", "--clusters", "{w}/empty.csv", "--out", "{w}/new"),
        1,
        ["empty.csv is corrupt or not a .csv file"],
    ),
    (
        "garbage kept.npy",
        (
            "compare",
            "--checkpoint",
            "{w}/run",
            "--pruned",
            "{w}/pruned_garbage",
            "--out",
            "{w}/new",
        ),
        1,
        ["pruned_garbage", "kept.npy is corrupt or not a .npy file"],
    ),
    (
        "missing pruned folder",
        ("compare", "--checkpoint", "{w}/run", "--pruned", "{w}/nowhere", "--out", "{w}/new"),
        1,
        ["pruned folder", "nowhere does not exist"],
    ),
    (
        "infinite clusters",
        ("analyze", "--checkpoint", "{w}/run", "--clusters", "inf", "--out", "{w}/new"),
        2,
        ["argument --clusters", "'inf'"],
    ),
    (
        "missing scheduler file",
        (
            "analyze",
            "--checkpoint",
            "{w}/run",
            "--scheduler",
            "{w}/missing.json",
            "--out",
            "{w}/new",
        ),
        1,
        ["argument --scheduler", "missing.json does not exist"],
    ),
    (
        "scheduler file without .json",
        ("kernel", "--checkpoint", "{w}/run", "--scheduler", "{w}/gone", "--out", "{w}/new"),
        1,
        ["argument --scheduler", "gone does not exist"],
    ),
    (
        "scheduler file of garbage",
        ("kernel", "--checkpoint", "{w}/run", "--scheduler", "{w}/garbage.csv", "--out", "{w}/new"),
        1,
        ["scheduler file", "garbage.csv is corrupt or not a JSON file"],
    ),
    (
        "scheduler file without an address",
        ("kernel", "--checkpoint", "{w}/run", "--scheduler", "{w}/int.json", "--out", "{w}/new"),
        1,
        ["int.json holds no scheduler address"],
    ),
    (
        "feature store where no folder can be made",
        ("analyze", "--checkpoint", "{w}/run", "--out", "{w}/tensor.pt/sub"),
        2,
        ["argument --out", "tensor.pt is a file"],
    ),
    (
        "noise options without --label-noise",
        (*TRAIN, "--noise-pairs", "1:7"),
        2,
        ["--noise-pairs apply only with --label-noise"],
    ),
    (
        "noise pairs with uniform noise",
        (*TRAIN, "--label-noise", "0.1", "--noise-kind", "uniform", "--noise-pairs", "1:7"),
        2,
        ["--noise-pairs applies only with --noise-kind pairs"],
    ),
    (
        "negative prune seed",
        (*RANDOM, "--seed", "-1"),
        2,
        ["argument --seed", "integer >= 0"],
    ),
    (
        "--analysis for random",
        (*RANDOM, "--analysis", "x"),
        2,
        ["argument --analysis", "only to the kernel strategies"],
    ),
    (
        "unknown device where no model runs",
        (*RANDOM, "--device", "tpu"),
        2,
        ["argument --device", "unknown device 'tpu'"],
    ),
    (
        "experiment1 nan lr",
        ("experiment1", "--lr", "nan", "--out", "{w}/new"),
        2,
        ["argument --lr", "'nan'"],
    ),
    (
        "experiment1 zero width",
        ("experiment1", "--widths", "0", "8", "--out", "{w}/new"),
        2,
        ["argument --widths"],
    ),
    (
        "theorem1 zero hidden",
        ("theorem1", "--hidden", "0", "--out", "{w}/new"),
        2,
        ["argument --hidden"],
    ),
    ("limit zero", (*KERNEL, "--limit", "0"), 2, ["argument --limit"]),
    ("projection seed", (*KERNEL, "--proj-dim", "8", "--seed", "-1"), 2, ["argument --seed"]),
    (
        "projected without dim",
        (*KERNEL, "--strategy", "projected"),
        2,
        ["argument --proj-dim", "none was given"],
    ),
    ("entk top-k", (*KERNEL, "--kind", "entk", "--top-k", "3"), 2, ["argument --top-k", "scalar"]),
    ("checkpoint indices", (*KERNEL[:2], "{w}/no_indices.pt", *KERNEL[3:]), 1, ["train_indices"]),
    ("checkpoint config", (*KERNEL[:2], "{w}/bad_config.pt", *KERNEL[3:]), 1, ["config"]),
    (
        "checkpoint dataset",
        (*KERNEL[:2], "{w}/other_dataset.pt", *KERNEL[3:]),
        1,
        ["dataset 'svhn'"],
    ),
    (
        "store of another size",
        ("kernel", "--checkpoint", RUN, "--no-progress", "--limit", "40", "--out", "{w}/other_n"),
        2,
        ["argument --out", "n differ"],
    ),
    (
        "meta without pieces",
        ("kernel", "--checkpoint", RUN, "--no-progress", "--limit", "40", "--out", "{w}/no_pieces"),
        1,
        ["no_pieces/features", "no feature pieces"],
    ),
    ("top-k negative", (*KERNEL, "--top-k", "-1"), 2, ["argument --top-k"]),
    ("kernel batch", (*KERNEL, "--batch-size", "0"), 2, ["argument --batch-size"]),
    ("kind", (*KERNEL, "--kind", "ntk"), 2, ["argument --kind", "lpntk"]),
    (
        "proj-dim",
        (*KERNEL, "--proj-dim", "8", "--strategy", "factored"),
        2,
        ["argument --proj-dim"],
    ),
    ("proj-dim zero", (*KERNEL, "--proj-dim", "0"), 2, ["argument --proj-dim"]),
    (
        "against-limit alone",
        (*KERNEL, "--against-limit", "5"),
        2,
        ["argument --against-limit", "together with --against"],
    ),
    (
        "against itself",
        (*KERNEL, "--against", "train"),
        2,
        ["argument --against", "the split itself", "--top-k"],
    ),
    (
        "val of another dataset",
        (*KERNEL, "--split", "val", "--dataset", "cifar10"),
        2,
        ["argument --split", "validation"],
    ),
    ("kernel device", (*KERNEL, "--device", "gpu"), 2, ["argument --device"]),
    ("missing checkpoint", (*KERNEL[:2], "{w}/nope.pt", *KERNEL[3:]), 1, ["does not exist"]),
    ("folder without best.pt", (*KERNEL[:2], "{w}/k", *KERNEL[3:]), 1, ["without best.pt"]),
    ("bare tensor", (*KERNEL[:2], "{w}/tensor.pt", *KERNEL[3:]), 1, ["holds a Tensor"]),
    ("an int", (*KERNEL[:2], "{w}/int.pt", *KERNEL[3:]), 1, ["holds a int"]),
    ("dict missing keys", (*KERNEL[:2], "{w}/partial.pt", *KERNEL[3:]), 1, ["lacks", "config"]),
    ("junk bytes", (*KERNEL[:2], "{w}/junk.pt", *KERNEL[3:]), 1, ["could not be read"]),
    ("truncated", (*KERNEL[:2], "{w}/truncated.pt", *KERNEL[3:]), 1, ["could not be read"]),
    (
        "wrong weights",
        (*KERNEL[:2], "{w}/weights.pt", *KERNEL[3:]),
        1,
        ["do not fit", "missing classifier.1.bias"],
    ),
    ("model of checkpoint", (*KERNEL[:2], "{w}/unknown_model.pt", *KERNEL[3:]), 1, ["vgg"]),
    (
        "corrupt zarr.json",
        ("kernel", "--checkpoint", RUN, "--no-progress", "--limit", "40", "--out", "{w}/bad_meta"),
        1,
        ["zarr.json", "corrupt"],
    ),
    (
        "deleted feature array",
        ("kernel", "--checkpoint", RUN, "--no-progress", "--limit", "40", "--out", "{w}/no_array"),
        1,
        ["lacks the array 0.F"],
    ),
    (
        "deleted chunk",
        ("kernel", "--checkpoint", RUN, "--no-progress", "--limit", "40", "--out", "{w}/no_chunk"),
        1,
        ["1.A lacks 1 of its 1 chunks"],
    ),
    (
        "truncated feature array",
        (
            "kernel",
            "--checkpoint",
            RUN,
            "--no-progress",
            "--limit",
            "40",
            "--out",
            "{w}/short_array",
        ),
        1,
        ["0.F", "truncated"],
    ),
    (
        "prune random without size",
        ("prune", "--checkpoint", RUN, "--out", "{w}/new", "--strategy", "random"),
        2,
        ["argument --strategy", "needs --size"],
    ),
    (
        "prune el2n with no scoring runs",
        (
            "prune",
            "--checkpoint",
            RUN,
            "--out",
            "{w}/new",
            "--strategy",
            "el2n",
            "--size",
            "5",
            "--score-seeds",
            "0",
        ),
        2,
        ["argument --score-seeds", "integer >= 1"],
    ),
    (
        "prune kind of a strategy without a kernel",
        (
            "prune",
            "--checkpoint",
            RUN,
            "--out",
            "{w}/new",
            "--strategy",
            "random",
            "--size",
            "5",
            "--kind",
            "pntk",
        ),
        2,
        ["--kind does not apply to strategy random"],
    ),
    (
        "demo with one seed",
        ("demo", "--out", "{w}/new", "--seeds", "1"),
        2,
        ["argument --seeds", "at least 2 seeds"],
    ),
    (
        "prune option of another strategy",
        (
            "prune",
            "--checkpoint",
            RUN,
            "--out",
            "{w}/new",
            "--strategy",
            "random",
            "--size",
            "5",
            "--budget",
            "0.1",
        ),
        2,
        ["--budget does not apply to strategy random"],
    ),
    (
        "analyze zero clusters",
        ("analyze", "--checkpoint", RUN, "--out", "{w}/new_a", "--limit", "20", "--clusters", "0"),
        2,
        ["argument --clusters"],
    ),
    ("momentum one", (*TRAIN, "--momentum", "1"), 2, ["argument --momentum", "[0, 1)"]),
    (
        "predict-forgetting no seeds",
        ("predict-forgetting", "--out", "{w}/new", "--seeds", "0"),
        2,
        ["argument --seeds", "at least 1 seed"],
    ),
    (
        "predict-forgetting too many tracked",
        ("predict-forgetting", "--out", "{w}/new", "--train-size", "300", "--tracked", "301"),
        2,
        ["argument --tracked", "300 samples"],
    ),
    (
        "predict-forgetting zero iterations",
        ("predict-forgetting", "--out", "{w}/new", "--iterations", "0"),
        2,
        ["argument --iterations", "integer >= 1"],
    ),
    ("data command", ("data", "info", "svhn"), 2, ["invalid choice", "mnist"]),
    ("no command", (), 2, ["required"]),
    (
        "unknown option",
        ("kernel", "--checkpoint", "c", "--out", "o", "--bogus"),
        2,
        ["unrecognized arguments", "--bogus"],
    ),
]


@pytest.fixture(scope="module")
def results(work):
    def one(case):
        argv = [a.replace("{w}", str(work)) for a in case[1]]
        return case[0], lpntk(*argv)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("name, argv, status, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(results, work, name, argv, status, words):
    r = results[name]
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("lpntk: error: "), lines
    assert "bug in lpntk" not in lines[0], lines  # a typed error, not a bug report
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (work / "new").exists(), "a failed command left output behind"


def test_failed_runs_leave_their_folders_unchanged(results, work):
    """The broken stores and runs are reported, never rewritten or half-written."""
    assert (work / "bad_meta" / "features" / "zarr.json").read_text() == '{"n": 40, "pieces": ['
    assert not (work / "no_array" / "features" / "0.F").exists()
    for folder in ("bad_last", "bad_log", "bad_meta", "no_array", "no_chunk", "short_array", "k"):
        assert not list((work / folder).rglob(".*tmp")), folder
        assert not list((work / folder).rglob("*.partial")), folder


def test_debug_shows_the_traceback(work):
    r = lpntk("--debug", "kernel", "--checkpoint", work / "junk.pt", "--out", work / "new")
    assert r.returncode != 0 and "Traceback" in r.stderr and "CheckpointError" in r.stderr
    r = lpntk(
        "kernel", "--checkpoint", work / "junk.pt", "--out", work / "new", env={"LPNTK_DEBUG": "1"}
    )
    assert "Traceback" in r.stderr


def test_a_corrupt_summary_is_recomputed(work):
    k = work / "k_again"
    shutil.copytree(work / "k", k)
    (k / "summary.json").write_text("{ not json")
    r = lpntk("kernel", "--checkpoint", work / "run", "--limit", "40", "--out", k, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "40 train samples" in r.stdout


def test_a_damaged_run_is_trained_again_with_a_warning(work):
    """A truncated last.pt (a full disk, a kill) does not block reruns: it is moved aside."""
    run = work / "bad_last_again"
    shutil.copytree(work / "bad_last", run)
    r = lpntk(*RESUME, run, env={"PYTHONWARNINGS": "default"})
    assert r.returncode == 0, r.stderr
    assert "lpntk: warning: the run in" in r.stderr and "damaged" in r.stderr
    assert (run / "last.pt.damaged").exists() and (run / "best.pt").exists()


def test_a_one_class_idx_folder_is_blamed_on_the_data(tmp_path):
    import numpy as np

    from lpntk.data.idx import write_idx

    from .test_data_idx import write_split

    folder = tmp_path / "one"
    folder.mkdir()
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_split(folder, prefix, n)
        labels = folder / f"{prefix}-labels-idx1-ubyte"
        write_idx(labels, np.zeros(n, dtype=np.uint8))
    r = lpntk(
        "train",
        "--dataset",
        folder,
        "--model",
        "mlp3",
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
        "--no-progress",
    )
    assert r.returncode == 2 and "argument --dataset" in r.stderr, r.stderr
    assert "at least 2 classes" in r.stderr and "model-option" not in r.stderr
