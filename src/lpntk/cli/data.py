"""``lpntk data``: its options and its handler (fetch or describe a dataset)."""

from __future__ import annotations

import json

from ._options import add_command, add_data_options


def add_options(p) -> None:
    actions = p.add_subparsers(
        dest="data_command", required=True, metavar="ACTION", help="fetch or info"
    )
    for name, text in (
        ("fetch", "download a dataset if needed and verify its checksums"),
        ("info", "where a dataset's files are, their sizes and class counts (never downloads)"),
    ):
        action = add_command(actions, name, text)
        action.add_argument("name", choices=("mnist", "cifar10"), help="dataset name")
        add_data_options(action, downloads=name == "fetch")


def run(args, client, progress: bool) -> int:
    from ..data import dataset_info, fetch

    if args.data_command == "fetch":
        print(f"{args.name}: files verified in {fetch(args.name, args.data_dir)}")
    else:
        print(json.dumps(dataset_info(args.name, args.data_dir), indent=2, default=str))
    return 0
