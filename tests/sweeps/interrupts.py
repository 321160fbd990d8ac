"""Ctrl-C at several moments of every long command, then the same command to the end.

For each command: SIGINT at each of ``MOMENTS`` seconds after the start (each run resuming the
folder the one before left), then one run to the end. ``ok``: exit 130 with a last line that
says it was interrupted (or exit 0 when it had finished), no traceback; the final run exits 0.

    LPNTK_DATA_DIR=../shared/data python tests/sweeps/interrupts.py WORK [COMMAND ...]

WORK must hold bad_inputs.py's small runs (``run``, ``pruned``); ``MOMENTS="1.5 6 15"`` by
default. Not a test: timing decides where each Ctrl-C lands. The moments that matter (a run's
last evaluation and save, a finished range of features) are tested exactly in
``tests/test_train.py`` and ``tests/test_cli_interrupt.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

W = Path(sys.argv[1])
ENV = {k: v for k, v in os.environ.items() if k != "LPNTK_DEBUG"} | {"PYTHONWARNINGS": "ignore"}
RUN = str(W / "run")
COMMANDS = {
    "train": ["train", "--model", "mnist_cnn", "--train-size", "3000", "--epochs", "2"],
    "kernel": ["kernel", "--checkpoint", RUN, "--split", "test", "--limit", "3000"],
    "analyze": ["analyze", "--checkpoint", RUN, "--split", "test", "--limit", "3000"],
    "label-issues": ["label-issues", "--checkpoint", RUN, "--split", "test", "--limit", "2000"],
    "prune-el2n": ["prune", "--checkpoint", RUN, "--strategy", "el2n", "--size", "100"],
    "compare": ["compare", "--checkpoint", RUN, "--pruned", str(W / "pruned"), "--seeds", "3"],
    "predict-forgetting": ["predict-forgetting", "--train-size", "1000", "--epochs", "2"],
    "experiment1": ["experiment1", "--per-class", "20", "--sizes", "1", "4", "--epochs", "200"],
    "theorem1": ["theorem1", "--widths", "64", "256", "1024", "--seeds", "2", "--pairs", "8"],
    "reproduce": ["reproduce", "fig2", "--train-size", "600", "--epochs", "1"],
}
EXTRA = {  # the rest of each command line
    "train": ["--batch-size", "16"],
    "kernel": ["--batch-size", "4"],
    "analyze": ["--clusters", "30"],
    "prune-el2n": ["--score-seeds", "3", "--score-epochs", "2"],
    "predict-forgetting": ["--batch-size", "16", "--seeds", "2", "--iterations", "20"],
    "experiment1": ["--split-seeds", "2"],
    "reproduce": ["--seeds", "2"],
}
EXTRA["predict-forgetting"] += ["--tracked", "64"]
MOMENTS = [float(x) for x in os.environ.get("MOMENTS", "1.5 6 15").split()]


def _default_sigint() -> None:
    """A job started in the background (``cmd &``) ignores SIGINT, and so would its children:
    lpntk is given Ctrl-C as a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(argv: list) -> subprocess.Popen:
    argv = [sys.executable, "-m", "lpntk", *argv]
    pipe = subprocess.PIPE
    return subprocess.Popen(
        argv, env=ENV, stdout=pipe, stderr=pipe, text=True, preexec_fn=_default_sigint
    )


def last_line(err: str) -> str:
    return ([line for line in err.splitlines() if line.strip()] or [""])[-1][:200]


def main() -> None:
    (W / "interrupted").mkdir(parents=True, exist_ok=True)
    for name in sys.argv[2:] or list(COMMANDS):
        out = W / "interrupted" / name
        argv = [*COMMANDS[name], *EXTRA.get(name, []), "--out", str(out), "--no-progress"]
        for moment in MOMENTS:
            proc = start(argv)
            time.sleep(moment)
            proc.send_signal(signal.SIGINT)
            try:
                err = proc.communicate(timeout=180)[1]
            except subprocess.TimeoutExpired:
                proc.kill()
                print(f"HANG     {name} at {moment} s: no exit 180 s after Ctrl-C", flush=True)
                continue
            stopped = proc.returncode == 130 and "interrupted" in last_line(err)
            ok = (stopped or proc.returncode == 0) and "Traceback" not in err
            print(
                f"{'ok' if ok else 'BAD':8} {name} at {moment} s: exit {proc.returncode}: "
                f"{last_line(err)}",
                flush=True,
            )
        t0 = time.time()
        proc = start(argv)
        err = proc.communicate(timeout=1800)[1]
        tag = "ok" if proc.returncode == 0 else "BAD"
        tail = last_line(err) if proc.returncode else ""
        print(
            f"{tag:8} {name} resumed to the end: exit {proc.returncode} in "
            f"{time.time() - t0:.0f} s {tail}",
            flush=True,
        )


if __name__ == "__main__":
    main()
