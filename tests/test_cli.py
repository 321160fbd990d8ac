import json
import os
from pathlib import Path

import pytest

from lpntk.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_DIR = os.environ.get("LPNTK_DATA_DIR") or (str(SHARED) if SHARED.exists() else None)
needs_mnist = pytest.mark.skipif(
    DATA_DIR is None or not (Path(DATA_DIR) / "mnist").exists(), reason="MNIST files not available"
)


def test_unknown_names_give_clear_errors(capsys, tmp_path):
    assert main(["train", "--dataset", "imagenet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "imagenet" in err and "mnist" in err and "cifar10" in err
    assert main(["data", "info", "svhn"]) == 2
    err = capsys.readouterr().err
    assert "svhn" in err and "mnist" in err and "cifar10" in err


@needs_mnist
def test_train_on_a_real_mnist_slice_end_to_end(capsys, tmp_path):
    out = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        "mnist",
        "--model",
        "lenet5",
        "--epochs",
        "2",
        "--train-size",
        "2000",
        "--batch-size",
        "32",
        "--seed",
        "1",
        "--out",
        str(out),
        "--data-dir",
        DATA_DIR,
        "--no-progress",
        "--log-per-sample",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(out / "best.pt") in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == 2 and metrics[-1]["test_acc"] > 0.8
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "lenet5" and config["parameters"] == 61_706
    # a finished run is not trained again
    assert main(argv) == 0


@needs_mnist
def test_unknown_model_and_wrong_class_filter(capsys, tmp_path):
    assert (
        main(["train", "--model", "vgg", "--out", str(tmp_path / "a"), "--data-dir", DATA_DIR]) == 2
    )
    assert "invalid choice: 'vgg'" in capsys.readouterr().err
    assert (
        main(["train", "--classes", "11", "--out", str(tmp_path / "b"), "--data-dir", DATA_DIR])
        == 2
    )
    assert "11" in capsys.readouterr().err


@needs_mnist
def test_data_info_describes_mnist(capsys):
    assert main(["data", "info", "mnist", "--data-dir", DATA_DIR]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "60000" in json.dumps(info)


def test_version_and_help_answer_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom lpntk.cli import main\n"
        "for argv in (['--version'], ['--help'], [], ['trian']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout
    assert "lpntk 0." in done.stdout and "label-issues" in done.stdout
    assert "invalid choice: 'trian'" in done.stderr


def test_the_fast_help_lists_the_commands_of_the_full_parser():
    import argparse

    from lpntk.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {a.dest: a.help for a in sub._choices_actions} == COMMANDS


def test_prune_options_are_checked_before_the_checkpoint_is_read(capsys, tmp_path):
    argv = ["prune", "--checkpoint", str(tmp_path / "nowhere"), "--strategy", "random"]
    assert main([*argv, "--out", str(tmp_path / "p")]) == 2
    assert "strategy random needs --size" in capsys.readouterr().err


def test_the_command_ignores_ctrl_c_once_it_has_finished(monkeypatch):
    """After main, the interpreter's shutdown (seconds under load) ignores SIGINT: the command
    has finished and saved, and its exit status must say so."""
    import signal

    import lpntk.cli as cli

    monkeypatch.setattr(cli, "main", lambda: 0)
    before = signal.getsignal(signal.SIGINT)
    try:
        assert cli.entry() == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
