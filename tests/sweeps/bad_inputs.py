"""Bad values for every option of every command, through the real command line.

Each case runs ``lpntk`` in a subprocess with one option of a valid command line changed to a
bad value (nan, inf, -1 and 0 for numbers; a missing path, a folder, garbage and an empty file
for paths; a file and an unwritable place for ``--out``) and prints one line: ``ok`` (exit 1 or
2 with one ``lpntk: error:`` line), ``BAD`` (a traceback, a bug report, another exit status) or
``ACCEPTED`` (exit 0, or still running after 40 s: read it, the value may be valid, such as
``--momentum 0``). ``WORK/results.json`` holds every case.

    LPNTK_DATA_DIR=../shared/data python tests/sweeps/bad_inputs.py WORK

``ONLY=names.txt`` reruns the cases named there (one per line, or a command name). Not a test:
about 400 subprocesses, 50 minutes on 2 cores; the cases it found are in
``tests/test_cli_errors.py``. WORK keeps the small runs it trains first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lpntk.cli import build_parser

W = Path(sys.argv[1])
ENV = {k: v for k, v in os.environ.items() if k != "LPNTK_DEBUG"} | {"PYTHONWARNINGS": "ignore"}
NUMBERS = ["nan", "inf", "-1", "0"]
NUMERIC = {"int", "float", "_positive_int", "_positive_float", "_count_or_fraction", "_seed"}


def lpntk(args: list, timeout: float = 40):
    """Exit status (or "timeout"), stderr, seconds."""
    t0 = time.time()
    argv = [sys.executable, "-m", "lpntk", *map(str, args)]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=timeout)
        return r.returncode, r.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return "timeout", err, time.time() - t0


def prepare() -> None:
    """The small runs the command lines need, trained once."""
    W.mkdir(parents=True, exist_ok=True)
    small = ["--train-size", "200", "--test-size", "100", "--no-progress"]
    steps = {
        "run": ["train", *small, "--epochs", "1", "--out", W / "run"],
        "logrun": ["train", *small, "--epochs", "2", "--log-per-sample", "--out", W / "logrun"],
        "pruned": ["prune", "--checkpoint", W / "run", "--strategy", "random", "--size", "100"],
        "an": ["analyze", "--checkpoint", W / "run", "--clusters", "5", "--no-progress"],
    }
    steps["pruned"] += ["--out", W / "pruned", "--no-progress"]
    steps["an"] += ["--out", W / "an"]
    for name, argv in steps.items():
        done = W / name / ("manifest.json" if name == "pruned" else "metrics.json")
        if name == "an":
            done = W / name / "summary.json"
        if not done.exists():
            rc, err, _ = lpntk(argv, 600)
            assert rc == 0, err
    (W / "garbage.bin").write_bytes(b"\x00\x01\xff\xfe garbage")
    (W / "empty.txt").write_text("")
    (W / "adir").mkdir(exist_ok=True)


def base_lines() -> dict:
    run = str(W / "run")
    return {
        "train": ["--train-size", "200", "--test-size", "100", "--epochs", "1"],
        "kernel": ["--checkpoint", run, "--limit", "40"],
        "analyze": ["--checkpoint", run, "--limit", "60", "--clusters", "5"],
        "label-issues": ["--checkpoint", run, "--limit", "60"],
        "prune": ["--checkpoint", run, "--strategy", "random", "--size", "50"],
        "compare": ["--checkpoint", run, "--pruned", str(W / "pruned"), "--seeds", "2"],
        "dynamics": ["--runs", str(W / "logrun")],
        "experiment1": ["--per-class", "4", "--sizes", "1", "4", "--split-seeds", "1"],
        "predict-forgetting": [
            *("--train-size", "200", "--test-size", "100", "--epochs", "1", "--batch-size", "16"),
            *("--seeds", "1", "--iterations", "2", "--tracked", "16"),
        ],
        "theorem1": ["--widths", "8", "16", "--seeds", "1", "--pairs", "4", "--hidden", "8"],
        "reproduce": ["theorem1", "--reduced"],
        "report": [str(W / "an")],
        "demo": ["--seeds", "2"],
    }


def bad_values(action) -> list:
    name = getattr(action.type, "__name__", "str") if action.type else "str"
    paths = ["/nonexistent/x", W / "adir", W / "garbage.bin", W / "empty.txt"]
    special = {
        "_model_option": ["zzz", "width=", "width=abc"],
        "_class_id": ["-1", "99"],
        "_class_pair": ["1", "1:1", "a:b", "1:99"],
        "_dataset": ["zzz", W / "adir", W / "garbage.bin"],
    }
    if action.option_strings[-1] == "--out":
        return [W / "garbage.bin", "/proc/lpntk_out"]
    if name == "_path" or action.dest == "scheduler":
        return paths
    if name in special:
        return special[name]
    if action.choices:
        return []  # argparse's own check
    return NUMBERS if name in NUMERIC else ["zzz"]


def with_value(argv: list, option: str, value) -> list:
    """``argv`` with ``option``'s values replaced by ``value`` (or it added)."""
    argv = list(argv)
    if option not in argv:
        return [*argv, option, str(value)]
    i = j = argv.index(option)
    j += 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    argv[i:j] = [option, str(value)]
    return argv


def cases() -> list:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for command, base in base_lines().items():
        for action in sub.choices[command]._actions:
            if (
                not action.option_strings
                or action.nargs == 0
                or action.dest in ("help", "data_dir")
            ):
                continue
            option = action.option_strings[-1]
            for value in bad_values(action):
                name = f"{command} {option} {value}"
                argv = [command, *with_value(base, option, value)]
                if option != "--out":
                    where = W / "out" / name.replace(" ", "_").replace("/", "_")
                    argv += ["--out", f"{where}.html" if command == "report" else where]
                if command not in ("report", "dynamics"):
                    argv.append("--no-progress")
                out.append((name, argv))
    if os.environ.get("ONLY"):
        keep = set(Path(os.environ["ONLY"]).read_text().split("\n"))
        out = [c for c in out if c[0] in keep or c[0].split()[0] in keep]
    return out


def check(case) -> dict:
    name, argv = case
    rc, err, seconds = lpntk(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    one_line = any(line.startswith("lpntk: error:") or ": error:" in line for line in lines)
    ok = rc in (1, 2) and one_line and "Traceback" not in err and "bug in lpntk" not in err
    tag = "ok" if ok else ("ACCEPTED" if rc in (0, "timeout") else "BAD")
    return {"name": name, "tag": tag, "rc": rc, "seconds": round(seconds, 1), "tail": lines[-3:]}


def main() -> None:
    prepare()
    todo = cases()
    print(f"{len(todo)} cases", flush=True)
    results = []
    with ThreadPoolExecutor(2) as pool:
        for r in pool.map(check, todo):
            results.append(r)
            last = (r["tail"] or [""])[-1][:200]
            print(f"{r['tag']:8} {r['rc']!s:7} {r['seconds']:5} {r['name']} :: {last}", flush=True)
    (W / "results.json").write_text(json.dumps(results, indent=1))
    tags = [r["tag"] for r in results]
    print({t: tags.count(t) for t in ("ok", "BAD", "ACCEPTED")})


if __name__ == "__main__":
    main()
