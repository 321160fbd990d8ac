"""``lpntk reproduce``: its options and its handler (reproduce a claim of the paper)."""

from __future__ import annotations

from ._options import add_proj_dim_option, add_run_options, dataset_arg, path_arg


def add_options(p) -> None:
    from ..models import MODELS
    from ..reproduce import CLAIMS, SEEDS, SETTINGS

    p.add_argument("claim", choices=(*CLAIMS, "all"), help="what to reproduce")
    p.add_argument(
        "--dataset",
        default="mnist",
        type=dataset_arg,
        help="mnist, cifar10, or a folder of MNIST-format IDX files",
    )
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        help="architecture (default: lenet5; resnet18 on cifar10)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        help="runs per claim (default: " + ", ".join(f"{c} {n}" for c, n in SEEDS.items()) + ")",
    )
    p.add_argument(
        "--setting",
        choices=SETTINGS,
        default="paper",
        help="paper: the paper's text (LeNet-5 on MNIST, its recipe); public: the paper's "
        "public code's network (mnist_cnn, 1.2M parameters) and recipe (SGD 0.1, momentum 0.9, "
        "StepLR 2 x 0.7, 30 epochs), MNIST-format data only; its Table 1 window starts from "
        "that training at 1e-3, and theorem1 and fig1 (their own MLPs) are the paper "
        "setting's. Either way the checkpoint is chosen on a validation split, never on the "
        "test set. On a GPU: lpntk reproduce all --setting public --device cuda",
    )
    p.add_argument(
        "--reduced",
        action="store_true",
        help="sized for a CPU, always labelled reduced: CIFAR-10 with 2,000 training and 2,000 "
        "test images, ResNet-18 of width 8, 10 epochs, a 256-sample 10-step Table 1 window; "
        "--setting public with 10,000 training images, 6 epochs and a 256-sample 10-step "
        "window (default: the full setting)",
    )
    p.add_argument("--train-size", type=int, metavar="N", help="train on N samples (default: all)")
    p.add_argument("--epochs", type=int, help="epochs of every training (default: the setting's)")
    p.add_argument(
        "--out",
        dest="out_dir",
        type=path_arg,
        metavar="DIR",
        help="output folder (default: runs/reproduce/DATASET-MODEL-HASH of the whole setting)",
    )
    add_proj_dim_option(p)
    add_run_options(p)


def run(args, client, progress: bool) -> int:
    from ..report import build_report
    from ..reproduce import Reproduction, setup

    s = setup(
        args.dataset,
        args.model,
        args.reduced,
        args.train_size,
        args.epochs,
        args.proj_dim,
        args.setting,
    )
    r = Reproduction(s, args.out_dir, args.data_dir, args.device, progress)
    results = r.run(args.claim, args.seeds)
    done = results if args.claim == "all" else {args.claim: results}
    for claim, res in done.items():
        if "error" in res:
            print(f"{claim}: not run: {res['error']}")
        else:
            verdict = res.get("verdict", {}).get("verdict")
            note = f"{verdict}; " if verdict else ""
            print(f"{claim}: {note}{res['seconds']} s, {r.root / claim / 'table.md'}")
    if any("error" not in res for res in done.values()):
        print(f"report: {build_report(r.root)}")
    if any("error" in res for res in done.values()):
        return 1
    return 0
