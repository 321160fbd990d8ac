"""``lpntk report``: its options and its handler (one HTML page of a results folder)."""

from __future__ import annotations

from ._options import path_arg


def add_options(p) -> None:
    p.add_argument("folder", type=path_arg, help="a folder written by lpntk (reproduce, demo, ...)")
    p.add_argument(
        "--out", type=path_arg, metavar="FILE", help="the page (default: FOLDER/report.html)"
    )


def run(args, client, progress: bool) -> int:
    from ..report import build_report

    print(f"report: {build_report(args.folder, args.out)}")
    return 0
