"""Ctrl-C (SIGINT) during a real run: the finished work is saved, the exit status is 130, and
the same command resumes to the result of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
import zarr

from lpntk.kernel import Features

from .test_cli import DATA_DIR, needs_mnist


def interrupt_when(argv, ready, env) -> str:
    """Start ``lpntk argv``, send SIGINT once ``ready()`` holds, return its stderr. No clock
    decides when: on a loaded machine the first finished range may take minutes (a deadline
    that sent the signal anyway once interrupted a run with nothing done yet)."""
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    while not ready():
        if proc.poll() is not None:  # ended before it was ready: the test cannot interrupt it
            raise AssertionError(f"lpntk ended before its interrupt: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "run the same command again to resume" in stderr
    return stderr


@needs_mnist
def test_ctrl_c_keeps_finished_rows_and_resumes_to_the_same_result(checkpoint, tmp_path):
    env = {**os.environ, "LPNTK_DATA_DIR": DATA_DIR}
    base = [sys.executable, "-m", "lpntk", "kernel", "--checkpoint", str(checkpoint)]
    base += ["--split", "test", "--batch-size", "2", "--no-progress", "--out"]
    out = tmp_path / "stopped"

    def some_ranges_done() -> bool:
        try:
            return bool(zarr.open_group(str(out / "features"), mode="r")["done"][:].any())
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            return False

    interrupt_when([*base, str(out)], some_ranges_done, env)
    group = zarr.open_group(str(out / "features"), mode="r")
    meta, done = group.attrs["lpntk"], group["done"][:]
    assert 0 < done.sum() < len(done) and not meta["complete"], (meta, done)
    assert not (out / "per_sample.csv").exists() and not (out / "summary.json").exists()
    first = int(np.argmin(done)) * meta["chunk_rows"]  # the finished rows before the first gap
    kept = group["labels"][:first].copy()
    done = subprocess.run([*base, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    whole = tmp_path / "whole"
    assert subprocess.run([*base, str(whole)], env=env, capture_output=True).returncode == 0
    resumed, fresh = Features.load(out / "features"), Features.load(whole / "features")
    np.testing.assert_array_equal(resumed.labels[: len(kept)], kept)
    for key in fresh.arrays:
        np.testing.assert_array_equal(resumed.arrays[key], fresh.arrays[key])
    assert (out / "per_sample.csv").read_text() == (whole / "per_sample.csv").read_text()


@needs_mnist
def test_ctrl_c_saves_training_and_resumes_to_the_same_weights(tmp_path):
    env = {**os.environ, "LPNTK_DATA_DIR": DATA_DIR}
    base = [sys.executable, "-m", "lpntk", "train", "--model", "mnist_cnn", "--epochs", "3"]
    base += ["--train-size", "3000", "--batch-size", "16", "--no-progress", "--out"]
    out = tmp_path / "stopped"
    stderr = interrupt_when([*base, str(out)], (out / "last.pt").exists, env)  # in training
    assert "training stopped at epoch" in stderr and "last.pt" in stderr
    state = torch.load(out / "last.pt", weights_only=True)["state"]
    assert not state["finished"] and state["global_step"] > 0
    assert subprocess.run([*base, str(out)], env=env, capture_output=True).returncode == 0
    whole = tmp_path / "whole"
    assert subprocess.run([*base, str(whole)], env=env, capture_output=True).returncode == 0
    a = torch.load(out / "best.pt", weights_only=True)["model_state"]
    b = torch.load(whole / "best.pt", weights_only=True)["model_state"]
    for key in b:
        assert torch.equal(a[key], b[key]), key
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (out, whole)]
    assert [r["val_acc"] for r in metrics[0]] == [r["val_acc"] for r in metrics[1]]
