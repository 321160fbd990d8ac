"""Command line: a thin layer that parses arguments and calls the Python API.

Conventions every command follows: a mistake ends in one ``lpntk: error: ...`` line naming the
option (exit status 2 for usage errors, 1 for other failures, 130 after Ctrl-C, which keeps the
finished work); ``--debug`` or ``LPNTK_DEBUG=1`` shows the traceback instead; every option has
help text with its default; results go to files, stdout gets a short summary.

The package: this module holds the table of commands (:data:`COMMANDS`) and the conventions
above (errors, exit codes, Ctrl-C, --debug); ``_options`` the option groups and argument types
that several commands share; and one module per command (``lpntk.cli.train``,
``lpntk.cli.label_issues``, ...) with its options (``add_options``) and its handler (``run``).
A command's module is imported only when it is named.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings

from .._errors import LpntkError
from .._version import __version__
from ._options import Formatter, Parser, add_command

STARTS_OVER = ("dynamics", "experiment1", "theorem1", "report")  # they keep no partial work

DESCRIPTION = """\
lpntk measures how labelled training samples interact during learning, with the labelled
pseudo neural tangent kernel (lpNTK): train a classifier (or bring a checkpoint), compute the
exact lpNTK, pNTK or eNTK over its data, and see which samples are interchangeable, unrelated
or contradictory.

typical use:
  lpntk data fetch mnist
  lpntk train --dataset mnist --model lenet5 --out runs/lenet5
  lpntk kernel --checkpoint runs/lenet5 --top-k 10 --out runs/lenet5-kernel
  lpntk demo                      # all of the above, end to end, in runs/demo

Datasets are looked up in --data-dir, then $LPNTK_DATA_DIR, then the user cache, and are
downloaded when missing. Long runs resume when started again with the same command.
Run 'lpntk COMMAND --help' for a command's options."""


# name -> help: the one table of commands (the fast --help reads it too). Each has its module
# lpntk.cli.NAME (dashes as underscores) with add_options(parser) and run(args, client,
# progress), and may have check(args): the checks to make before a cluster or any data.
COMMANDS = {
    "data": "fetch or describe a dataset",
    "train": "train a classifier and keep its best-validation checkpoint (resumes)",
    "kernel": "the lpNTK / pNTK / eNTK / loss kernel of a checkpoint (resumes)",
    "analyze": (
        "redundant samples, relationship types and farthest point clustering of a checkpoint's "
        "lpNTK (per_sample.csv, clusters.json, cluster_sizes.png)"
    ),
    "label-issues": (
        "samples whose label disagrees with the samples that look like them: a label-error "
        "score, rank and suggested label for each (per_sample.csv, label_issues.png)"
    ),
    "prune": "a pruned training set of a checkpoint (kept.npy, kept.csv, manifest)",
    "compare": (
        "retrain on the full set and on pruned sets over seeds: t-tests and accuracy curves"
    ),
    "dynamics": (
        "learning difficulty and forgetting events of the training samples, from runs trained "
        "with --log-per-sample (per_sample.csv, summary.json)"
    ),
    "experiment1": (
        "learning difficulty on the whole set against on subsets of X samples (Sec. 3.2, Fig. "
        "1; results.json, per_sample.csv, figure1.png)"
    ),
    "predict-forgetting": (
        "predict forgetting events from the eNTK, lpNTK and pNTK over a window of plain SGD "
        "steps, against the real steps (Sec. 3.3, Table 1; results.json, per_seed.csv, "
        "prediction.png)"
    ),
    "theorem1": (
        "Theorem 1 at initialisation: the gap between lpNTK x identity and the eNTK against the"
        " width of the last hidden layer (results.json, theorem1.png)"
    ),
    "reproduce": (
        "reproduce a claim of the paper on a dataset, with statistics (OUT/CLAIM/results.json, "
        "table.md, plots; resumes and shares models, kernels and clusterings between claims). "
        "Each claim is judged under its faithful reading (clusters per class, redundancy within"
        " class, Table 1 by the eNTK) and every other plausible one (whole-set clusters, one-"
        "sided search, the public code's pruning and forgetting window), under three accuracy "
        "rules (best validation, last epoch, max test: test-selected) and three tests (Welch, "
        "Student, paired); results.json holds the verdict, the protocol and the sensitivity "
        "rows"
    ),
    "report": ("one self-contained HTML page of a results folder (tables, settings, plots inline)"),
    "demo": (
        "the main job, end to end (resumes): train, lpNTK, redundancy, relationships and "
        "clusters, a pruned training set, and full vs pruned retrained over seeds"
    ),
}


def _top_parser():
    """The parser of ``lpntk`` itself and its (empty) subparsers action: enough to answer
    ``--help`` and ``--version`` without importing torch."""
    parser = Parser(prog="lpntk", description=DESCRIPTION, formatter_class=Formatter)
    parser.add_argument(
        "--version", action="version", version=f"lpntk {__version__}", help="print the version"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also LPNTK_DEBUG=1; default: off)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    return parser, sub


def _fast_answer(argv: list) -> None:
    """When no command is named (``--help``, ``--version``, a typo): answer from the command
    table alone, in milliseconds; always exits."""
    parser, sub = _top_parser()
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text)
    parser.parse_args(argv)


def handler(name: str):
    """The module of command ``name``: its options and its handler."""
    return importlib.import_module("." + name.replace("-", "_"), __name__)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``only`` the options of that command alone (the
    others named, without options): a command's modules are imported only when it runs."""
    parser, sub = _top_parser()
    for name, text in COMMANDS.items():
        p = add_command(sub, name, text)
        if only in (None, name):
            handler(name).add_options(p)
    return parser


def run(args) -> int:
    """Run the command of ``args``; on a Dask cluster when ``--scheduler`` or ``--workers``
    asks for one."""
    command = handler(args.command)
    if hasattr(command, "check"):  # options that do not fit: before a cluster or any data
        command.check(args)
    if getattr(args, "device", None) is not None:  # a device no step of the command uses, too
        from .._device import resolve_device

        resolve_device(args.device)
    from ..kernel.distributed import close, connect

    client = connect(getattr(args, "scheduler", None), getattr(args, "workers", None))
    try:
        return command.run(args, client, not getattr(args, "no_progress", True))
    finally:
        close(client)


def _flag(parser: argparse.ArgumentParser | None, param: str | None) -> str | None:
    """The option string of the command's argument stored as ``param``."""
    for action in parser._actions if parser is not None and param else ():
        if action.dest == param:
            return action.option_strings[0] if action.option_strings else action.dest
    return None


def _message(e: BaseException, parser) -> str:
    if isinstance(e, LpntkError):
        text = e.render(lambda name: _flag(parser, name) or name)
        flag = _flag(parser, e.param)
        return f"argument {flag}: {text}" if flag else (f"{e.param}: {text}" if e.param else text)
    if isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and ("alloc" in str(e) or "out of memory" in str(e))
    ):
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return (
            f"out of memory ({first}); ask for less: fewer samples (--limit), a smaller "
            "--batch-size, --top-k or --proj-dim"
        )
    if isinstance(e, OSError):  # the user's files or disk: permissions, a file where a folder was
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or e}{where}"
    return (
        f"unexpected {type(e).__name__}: {e}. This is a bug in lpntk; run again with --debug "
        "(or LPNTK_DEBUG=1) and report the traceback"
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # building the parser imports torch: Ctrl-C may come already
        named = next((a for a in argv if a in COMMANDS), None)  # top options are flags
        if named is None:
            _fast_answer(argv)
        args = build_parser(named).parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("lpntk: interrupted", file=sys.stderr)
        return 130
    debug = getattr(args, "debug", False) or _env_debug()
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            return run(args)
    except KeyboardInterrupt as e:
        if debug:
            raise
        saved = f"{e}; " if str(e) else ""
        again = "start over" if args.command in STARTS_OVER else "resume"
        print(f"lpntk: interrupted: {saved}run the same command again to {again}", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        message = " ".join(_message(e, getattr(args, "parser", None)).split())  # one line
        print(f"lpntk: error: {message}", file=sys.stderr)
        return e.exit_code if isinstance(e, LpntkError) else 1


def entry() -> int:
    """The ``lpntk`` command: :func:`main`, then Ctrl-C is ignored while the interpreter shuts
    down (seconds under load, with torch loaded): the command has finished, saved and printed
    its result, and its exit status says so (a SIGINT there ended it with -2 and no message).
    An interrupted command leaves with 130 at once: CPython exits with -2 instead when the
    Ctrl-C landed in code run by ``exec`` (a dataclass being made, during an import), even
    though lpntk caught it; everything was saved and flushed by then."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return code


def _env_debug() -> bool:
    return os.environ.get("LPNTK_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"lpntk: warning: {message}", file=sys.stderr)
