"""Finding injected label flips: lpntk's label-issue score against confident learning (cleanlab)
and the training-dynamics scores; prints markdown tables (recorded in docs/RESULTS.md).

    pip install -c constraints.txt -e '.[bench]'          # cleanlab, scikit-learn
    python benchmarks/label_noise.py --out runs/label_noise                 # every setting
    python benchmarks/label_noise.py --out runs/label_noise --datasets mnist --part 1/2
    python benchmarks/label_noise.py --out runs/label_noise --summary       # tables only
    python benchmarks/label_noise.py --out runs/label_dev --development     # chose the design
    python benchmarks/label_noise.py --out runs/label_noise --real          # MNIST's own labels

For each dataset, noise kind (uniform; class-dependent ``pairs``, see lpntk.noise), rate and seed
the training file's labels are flipped (the validation split carved from it is as noisy; the test
split is clean), one network is trained on them, and every training sample is scored:

- lpntk: ``label_issues`` on the eNTK features of that network (every design; the column
  "lpntk" is the default, ``vote`` with 40 neighbours, chosen with ``--development``);
- cleanlab: ``get_label_quality_scores`` and ``find_label_issues`` on 5-fold out-of-sample
  predicted probabilities of the same network and recipe (5 more trainings);
- the network's loss and its margin (given logit minus the largest other; Pleiss et al.'s
  margin at the best-validation checkpoint, the one scored) under the given labels, EL2N (Paul
  et al. 2021) of its epoch-2 weights (one run, not their average over initialisations),
  forgetting counts over its run (Toneva et al. 2018) and the area under the margin (AUM,
  Pleiss et al. 2020) over its run.

AUROC and average precision against the flips; wall time (one thread). Then "clean and retrain":
the top suspects of lpntk and of cleanlab (as many as there are flips) and the flips themselves
(the oracle) are dropped and the network trained again; test accuracy against the noisy full set.
Every run is a folder under ``--out`` with its ``result.json``; finished work is reused.

``--development`` runs the setting the score's design was chosen on (MNIST, 5,000 training images
drawn with split seed 7, 15% noise of both kinds, noise seed 100); no benchmark setting has that
draw, rate or noise seed (832 of the 5,000 images are among the benchmark's 10,000, and the test
set is MNIST's for both).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from lpntk import load_checkpoint
from lpntk._io import write_json
from lpntk.analysis.label_issues import DESIGN, DESIGNS, NEIGHBOURS, label_issues
from lpntk.dynamics import forgetting_events
from lpntk.kernel import compute_features
from lpntk.kernel_stage import checkpoint_data
from lpntk.scores import el2n
from lpntk.training import (
    TrainConfig,
    epoch_checkpoint,
    label_margin,
    predict_logits,
    run_training,
)

CONFIGS = {  # the networks and recipes; sized for 2 CPU cores
    "mnist": TrainConfig(
        dataset="mnist", model="lenet5", train_size=10000, epochs=10, split_seed=0
    ),
    "cifar10": TrainConfig(  # lpntk reproduce --reduced's CIFAR-10 (ResNet-18 of width 8)
        dataset="cifar10",
        model="resnet18",
        model_options={"width": 8},
        train_size=2000,
        test_size=2000,
        epochs=10,
        lr=0.1,
        augment=True,
        split_seed=0,
    ),
}
DEVELOPMENT = dataclasses.replace(CONFIGS["mnist"], train_size=5000, split_seed=7)
METHODS = ("lpntk", "cleanlab", "loss", "margin", "el2n", "forgetting", "aum")
FOLDS = 5


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def auroc(score, positive) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score))


def average_precision(score, positive) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(positive, score))


def train(cfg: TrainConfig, out: Path, data_dir, kept=None):
    """A finished run of ``cfg`` in ``out`` (reused when there) and its training time: the sum
    of its epochs' wall times as the run recorded them (each epoch with its evaluation), so a
    reused or resumed run counts what it cost."""
    result = run_training(cfg, out, data_dir=data_dir, progress=False, train_indices=kept)
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    return result, float(sum(row["seconds"] for row in metrics))


def probabilities(checkpoint, data) -> np.ndarray:
    model, _ = load_checkpoint(checkpoint)
    x, _ = data.tensors()
    return F.softmax(predict_logits(model, x).double(), dim=1).numpy()


def cleanlab_scores(cfg, data, out: Path, data_dir, seed: int) -> tuple[dict, float]:
    """Out-of-sample probabilities from ``FOLDS``-fold training, then cleanlab's scores."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(data), data.num_classes))
    seconds = 0.0
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    plain = dataclasses.replace(cfg, log_per_sample=False, keep_epochs=False)
    for f, (fit, held) in enumerate(folds.split(np.zeros(len(data)), data.labels)):
        result, t = train(plain, out / f"fold_{f}", data_dir, kept=data.indices[fit])
        t0 = time.perf_counter()
        probs[held] = probabilities(result.best_checkpoint, data.subset(held))
        seconds += t + time.perf_counter() - t0
    t0 = time.perf_counter()
    quality = get_label_quality_scores(data.labels, probs)
    found = find_label_issues(data.labels, probs)
    seconds += time.perf_counter() - t0
    return {"quality": quality, "found": found, "probs": probs}, seconds


def other_argmax(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The most probable label other than the given one (cleanlab's suggestion, on the terms of
    lpntk's, which never suggests the given label)."""
    p = probs.copy()
    p[np.arange(len(labels)), labels] = -np.inf
    return p.argmax(1)


def dynamics_scores(run: Path) -> dict:
    logs = run / "per_sample"
    correct, margin = np.load(logs / "correct.npy"), np.load(logs / "margin.npy")
    events, _, never = forgetting_events(correct)
    forgetting = np.where(never, correct.shape[0] + 1.0, events)  # never learned: most forgotten
    return {"forgetting": forgetting, "aum": -np.nanmean(margin, axis=0)}


def one_run(base: TrainConfig, kind, rate, seed, out: Path, data_dir, retrain: bool) -> dict:
    """Every score of one noisy training set, and (``retrain``) the clean-and-retrain runs."""
    done = out / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if result.get("lpntk_default") == [DESIGN, NEIGHBOURS]:
            return result  # else scored under other defaults: score again (trainings reused)
    noise = {"rate": rate, "kind": kind, "seed": seed}
    cfg = dataclasses.replace(
        base, seed=seed, label_noise=noise, log_per_sample=True, keep_epochs=True
    ).with_fixed_split()
    noisy, t_train = train(cfg, out / "noisy", data_dir)
    model, ckpt = load_checkpoint(noisy.best_checkpoint)
    data = checkpoint_data(ckpt, "train", data_dir=data_dir)
    clean_ckpt = dict(ckpt, config=dict(ckpt["config"], label_noise=None))
    clean = checkpoint_data(clean_ckpt, "train", data_dir=data_dir).labels
    flips = data.labels != clean
    E, t_features = timed(compute_features, model, data, "entk", progress=False)
    li, t_issues = timed(label_issues, E, k=NEIGHBOURS, progress=False)
    x, y = data.tensors()
    logits = predict_logits(model, x).double()
    scores = {f"lpntk_{d}": li.scores[d] for d in DESIGNS}
    scores["lpntk"] = li.score
    scores["loss"] = F.cross_entropy(logits, y, reduction="none").numpy()
    early, _ = load_checkpoint(epoch_checkpoint(out / "noisy", 2))
    scores["el2n"] = el2n(early, x, y)
    scores.update(dynamics_scores(out / "noisy"))
    cl, t_cleanlab = cleanlab_scores(cfg, data, out, data_dir, seed)
    scores["cleanlab"] = 1.0 - cl["quality"]
    scores["margin"] = -label_margin(logits, y).numpy()  # the scored network's own margin
    np.savez_compressed(  # per sample, for later analysis (the real-label grids, new designs)
        out / "scores.npz",
        indices=data.indices,
        labels=data.labels,
        clean=clean,
        suggested=li.suggested,
        probs=cl["probs"],
        **scores,
    )
    result = {
        "dataset": base.dataset,
        "kind": kind,
        "rate": rate,
        "seed": seed,
        "lpntk_default": [DESIGN, NEIGHBOURS],
        "n": int(len(data)),
        "flips": int(flips.sum()),
        "auroc": {m: auroc(s, flips) for m, s in scores.items()},
        "ap": {m: average_precision(s, flips) for m, s in scores.items()},
        "seconds": {
            "train": t_train,
            "lpntk": t_features + t_issues,
            "lpntk_features": t_features,
            "lpntk_issues": t_issues,
            "cleanlab": t_cleanlab,
        },
        "suggested_correct": {
            "lpntk": float((li.suggested[flips] == clean[flips]).mean()),
            "cleanlab": float(
                (other_argmax(cl["probs"], data.labels)[flips] == clean[flips]).mean()
            ),
        },
        "cleanlab_found": {
            "count": int(cl["found"].sum()),
            "precision": float(flips[cl["found"]].mean()) if cl["found"].any() else None,
            "recall": float(cl["found"][flips].mean()),
        },
        "test_acc": {"noisy_full": noisy.test_acc},
    }
    if retrain:
        drop = {
            "lpntk": li.top(int(flips.sum())),
            "cleanlab": np.argsort(cl["quality"], kind="stable")[: int(flips.sum())],
            "oracle": np.flatnonzero(flips),
        }
        plain = dataclasses.replace(cfg, log_per_sample=False, keep_epochs=False)
        for name, positions in drop.items():
            kept = np.delete(data.indices, positions)
            folder = f"retrain_{name}" + (f"_{DESIGN}_k{NEIGHBOURS}" if name == "lpntk" else "")
            r, _ = train(plain, out / folder, data_dir, kept=kept)
            result["test_acc"][name] = r.test_acc
            result.setdefault("dropped_flips", {})[name] = float(flips[positions].mean())
    write_json(done, result)
    return result


def real_labels(base: TrainConfig, out: Path, data_dir, top: int = 50) -> dict:
    """MNIST's own labels (no injected noise): the top ``top`` suspects of lpntk and of
    cleanlab as image grids (``lpntk_top.png``, ``cleanlab_top.png``) and their overlap."""
    from lpntk.report import sample_grid

    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = dataclasses.replace(base, train_size=None).with_fixed_split()
    run, t_train = train(cfg, out / "model", data_dir)
    model, ckpt = load_checkpoint(run.best_checkpoint)
    data = checkpoint_data(ckpt, "train", data_dir=data_dir)
    torch.set_num_threads(1)
    E, t_features = timed(compute_features, model, data, "entk", progress=False)
    li, t_issues = timed(label_issues, E, k=NEIGHBOURS, progress=False)
    cl, t_cleanlab = cleanlab_scores(cfg, data, out, data_dir, cfg.seed)
    picks = {
        "lpntk": (li.top(top), li.suggested),
        "cleanlab": (np.argsort(cl["quality"], kind="stable")[:top], cl["probs"].argmax(1)),
    }
    classes = list(data.classes)
    for name, (positions, suggested) in picks.items():
        indices = [int(data.indices[p]) for p in positions]
        captions = {
            int(data.indices[p]): f"#{data.indices[p]} y={classes[data.labels[p]]}"
            f"\n-> {classes[suggested[p]]}"
            for p in positions
        }
        groups = [
            (f"ranks {r + 1}-{min(r + 10, top)}", indices[r : r + 10]) for r in range(0, top, 10)
        ]
        sample_grid(
            data,
            groups,
            f"MNIST's own labels: {name}'s top {top} suspects (given label, then suggested)",
            out / f"{name}_top.png",
            per_row=10,
            captions=captions,
        )
    shared = set(data.indices[picks["lpntk"][0]]) & set(data.indices[picks["cleanlab"][0]])
    result = {
        "n": int(len(data)),
        "top": top,
        "overlap": len(shared),
        "shared_indices": sorted(int(i) for i in shared),
        "top_indices": {m: [int(data.indices[p]) for p in v[0]] for m, v in picks.items()},
        "cleanlab_found": int(cl["found"].sum()),
        "seconds": {"train": t_train, "lpntk": t_features + t_issues, "cleanlab": t_cleanlab},
        "test_acc": run.test_acc,
    }
    write_json(done, result)
    return result


def neighbour_sweep(out: Path, data_dir, ks=(5, 10, 20, 40, 80, 160)) -> str:
    """The development setting's AUROC / AP of each design against the number of neighbours,
    on the networks its runs trained; then rank averages of two designs with the network's
    margin (is a combined score better than the margin alone?)."""
    sweep = [
        "\nDevelopment setting: AUROC / AP by number of neighbours k\n",
        "| setting | design | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|" + " --- |" * (len(ks) + 2),
    ]
    combined = [
        "\nRank averages with the network's margin (AUROC / AP)\n",
        "| setting | margin | "
        + " | ".join(f"{d} + margin, k = {k}" for d in ("agreement", "vote") for k in (10, 40))
        + " |",
        "|" + " --- |" * 6,
    ]

    def cell(score, flips):
        return f"{auroc(score, flips):.4f} / {average_precision(score, flips):.3f}"

    for folder in sorted(out.glob("mnist_*/seed_*")):
        model, ckpt = load_checkpoint(folder / "noisy")
        data = checkpoint_data(ckpt, "train", data_dir=data_dir)
        z = np.load(folder / "scores.npz")
        flips, margin = z["labels"] != z["clean"], z["margin"]
        E = compute_features(model, data, "entk", progress=False)
        found = {k: label_issues(E, k=k, progress=False).scores for k in sorted({*ks, 10, 40})}
        for d in DESIGNS:
            cells = [cell(found[k][d], flips) for k in ks]
            sweep.append(f"| {folder.parent.name} | {d} | " + " | ".join(cells) + " |")
        cells = [cell(margin, flips)] + [
            cell(rankdata(found[k][d]) + rankdata(margin), flips)
            for d in ("agreement", "vote")
            for k in (10, 40)
        ]
        combined.append(f"| {folder.parent.name} | " + " | ".join(cells) + " |")
    return "\n".join(sweep + combined)


def runs(datasets, kinds, rates, seeds):
    return [(d, k, r, s) for d in datasets for k in kinds for r in rates for s in seeds]


def summarise(results: list[dict]) -> str:
    """Markdown tables: mean +- std over seeds of AUROC and AP per method, times, retraining."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["dataset"], r["kind"], r["rate"]), []).append(r)

    def ms(values, digits=3):
        v = np.array([np.nan if x is None else x for x in values], dtype=float)
        m, s = np.nanmean(v), np.nanstd(v)
        return f"{m:.{digits}f} ± {s:.{digits}f}" if len(v) > 1 else f"{m:.{digits}f}"

    methods = list(METHODS) + [f"lpntk_{d}" for d in DESIGNS]
    lines = []
    for metric in ("auroc", "ap"):
        lines += [
            f"\n{metric.upper()} against the flips (mean ± std over seeds)\n",
            "| setting | seeds | " + " | ".join(methods) + " |",
            "|" + " --- |" * (len(methods) + 2),
        ]
        for (d, k, rate), rs in sorted(groups.items()):
            cells = [ms([r[metric][m] for r in rs], 4) for m in methods]
            lines.append(f"| {d} {k} {rate:.0%} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += [
        "\nWall time (s, one thread) and suggested labels\n",
        "| setting | train one model | lpntk features + score | lpntk in all (one training "
        "+ features + score) | cleanlab in all (5 fold trainings + scoring) "
        "| lpntk suggestion right | cleanlab's (best other label) right "
        "| cleanlab found (precision, recall) |",
        "|" + " --- |" * 8,
    ]
    for (d, k, rate), rs in sorted(groups.items()):
        s = [r["seconds"] for r in rs]
        found = [r["cleanlab_found"] for r in rs]
        lines.append(
            f"| {d} {k} {rate:.0%} | {ms([x['train'] for x in s], 0)} | "
            f"{ms([x['lpntk'] for x in s], 0)} | {ms([x['train'] + x['lpntk'] for x in s], 0)} | "
            f"{ms([x['cleanlab'] for x in s], 0)} | "
            f"{ms([r['suggested_correct']['lpntk'] for r in rs])} | "
            f"{ms([r['suggested_correct']['cleanlab'] for r in rs])} | "
            f"{ms([f['count'] for f in found], 0)} ({ms([f['precision'] for f in found])}, "
            f"{ms([f['recall'] for f in found])}) |"
        )
    if any("oracle" in r["test_acc"] for r in results):
        lines += [
            "\nClean and retrain: test accuracy (dropping as many suspects as flips)\n",
            "| setting | noisy full set | lpntk | cleanlab | oracle (flips dropped) "
            "| flips among lpntk's drops | among cleanlab's |",
            "|" + " --- |" * 7,
        ]
        for (d, k, rate), rs in sorted(groups.items()):
            rs = [r for r in rs if "oracle" in r["test_acc"]]
            if not rs:
                continue
            acc = [ms([r["test_acc"][m] for r in rs]) for m in ("noisy_full", "lpntk", "cleanlab")]
            lines.append(
                f"| {d} {k} {rate:.0%} | "
                + " | ".join(acc)
                + f" | {ms([r['test_acc']['oracle'] for r in rs])} | "
                f"{ms([r['dropped_flips']['lpntk'] for r in rs])} | "
                f"{ms([r['dropped_flips']['cleanlab'] for r in rs])} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/label_noise")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--kinds", nargs="+", default=["uniform", "pairs"])
    p.add_argument("--rates", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--part", default="1/1", help="I/N: every N-th run from the I-th (parallel)")
    p.add_argument("--no-retrain", action="store_true", help="skip clean and retrain")
    p.add_argument("--development", action="store_true", help="the design-choosing setting")
    p.add_argument("--summary", action="store_true", help="only print the tables")
    p.add_argument("--real", action="store_true", help="MNIST's own labels: top-50 grids")
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(1)  # every timing on one thread
    if args.real:
        r = real_labels(CONFIGS["mnist"], out / "mnist_real", args.data_dir)
        print(
            f"MNIST's own labels ({r['n']} training images): top {r['top']} of lpntk and of "
            f"cleanlab share {r['overlap']}; grids in {out / 'mnist_real'}; "
            f"cleanlab's find_label_issues flags {r['cleanlab_found']}"
        )
        return
    if args.development:
        todo = [("mnist", k, 0.15, 100) for k in ("uniform", "pairs")]
        configs = {"mnist": DEVELOPMENT}
    else:
        todo = runs(args.datasets, args.kinds, args.rates, args.seeds)
        configs = CONFIGS
    i, n = (int(v) for v in args.part.split("/"))
    results = []
    for number, (d, k, rate, seed) in enumerate(todo):
        folder = out / f"{d}_{k}_{rate:g}" / f"seed_{seed}"
        if args.summary or number % n != i - 1:
            if (folder / "result.json").exists():
                results.append(json.loads((folder / "result.json").read_text()))
            continue
        t = time.perf_counter()
        results.append(
            one_run(configs[d], k, rate, seed, folder, args.data_dir, not args.no_retrain)
        )
        r = results[-1]
        print(
            f"[{number + 1}/{len(todo)}] {d} {k} {rate:g} seed {seed}: AUROC lpntk "
            f"{r['auroc']['lpntk']:.4f}, cleanlab {r['auroc']['cleanlab']:.4f} "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    if results:
        print(summarise(results))
    if args.development and not args.summary:
        print(neighbour_sweep(out, args.data_dir))


if __name__ == "__main__":
    main()
