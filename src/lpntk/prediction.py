"""Experiment 2 (Sec. 3.3, Eq. 1, App. D.3, Table 1): predicting forgetting events from the kernel.

One plain-SGD step (learning rate eta, no momentum, no weight decay) on a batch B changes the
logits of any sample x_o, to first order in eta, by

    Delta z(x_o) ~ -eta * (1/|B|) * sum_u K(x_o, x_u) (q(x_u) - onehot(y_u))        (Eq. 1)

with K the K x K eNTK block and q the softmax. Replacing K by kappa((x_o, y_o), (x_u, y_u)) I_K
(Theorem 1) gives the ``lpntk`` prediction, by pNTK(x_o, x_u) I_K the ``pntk`` one. A tracked
sample classified correctly before the step is predicted *forgotten* when argmax(z + Delta z) is no
longer its label; the real step decides whether it is (Toneva et al.'s forgetting event). Two
trivial baselines flag, at each step, the correct samples with the smallest margin
z_y - max_{j != y} z_j: ``margin`` as many as ``lpntk`` flags, ``margin_oracle`` as many as are
really forgotten (it is told the true count).

The ``entk`` prediction is exact without forming K: (1/|B|) sum_u K(x_o, x_u) r_u = J(x_o) g with
g the gradient of the batch-mean loss, so Delta z = J(x_o) (-eta g) is one Jacobian-vector product.
``lpntk`` and ``pntk`` are as exact and as light: see :func:`predicted_change`.

The paper's predictor is the eNTK: its text is a revision in which "lpNTK" is struck through
and replaced by "eNTK" (Sec. 3.3, App. D.3, Alg. 2; only Table 1's caption still says lpNTK), and
its public code predicts with the full eNTK times the softmax Jacobian (``entk_softmax`` here:
flagged when argmax(p + A dz) leaves the label, A = diag(p) - p p^T). lpNTK x I and pNTK x I
test the withdrawn claim: a finding beyond the paper.

Protocol (:func:`forgetting_prediction`): per seed, train with the given settings (the paper: plain
SGD at 5e-4) for ``cfg.epochs`` epochs; from the last weights, take the next ``iterations`` batches
of the training order at ``window_lr`` (default ``cfg.lr``) with the model in eval mode (frozen
batch-norm statistics, no dropout: the function Eq. 1 describes). Two regimes (``REGIMES``):

- ``plain`` (the paper's text): each step an exact plain gradient step on the batch-mean
  cross-entropy; ``tracked`` random training samples are followed (10 batches of 128 in the
  paper). Eq. 1 is then exact to first order, so the eNTK's F1 is close to 1 by construction.
- ``public`` (the public code's window): SGD with momentum 0.9 and weight decay 5e-4 while the
  prediction is still Eq. 1's plain step, and each step's tracked samples are the previous step's
  batch. The public code's momentum buffer is warm when its window starts: ours is warmed by
  ``warmup`` untracked steps first (30: 96% of a steady buffer's weight), and one more batch is
  taken before the first tracked step. The momentum and the decay the prediction ignores make
  this a real test of Eq. 1.
"""

from __future__ import annotations

import json
import numbers
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from ._errors import ConfigError, DataError
from ._io import atomic_path, output_folder, write_json
from ._progress import progress as progress_bar
from ._seed import derive_seed
from .kernel.extract import trainable
from .models import check_logits
from .training import (
    TrainConfig,
    epoch_order,
    load_checkpoint,
    predict_logits,
    prepare_data,
    train_seeds,
)

KERNELS = ("entk", "lpntk", "pntk")
VARIANTS = (*KERNELS, "entk_softmax", "margin", "margin_oracle")
REGIMES = {  # the window's update and what it tracks; see the module doc
    "plain": {"momentum": 0.0, "track": "fixed"},
    "public": {"momentum": 0.9, "weight_decay": 5e-4, "warmup": 30, "track": "previous"},
}
PAPER = {  # Table 1, mean and std over runs, in %
    "mnist": {"precision": (95.56, 8.14), "recall": (86.67, 13.67), "f1": (89.96, 7.10)},
    "cifar10": {"precision": (96.99, 3.99), "recall": (98.99, 1.61), "f1": (97.87, 2.08)},
}


def _step_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The gradient of the batch-mean cross-entropy of ``model`` (eval mode) on ``(x, y)``."""
    params = trainable(model)
    z = model(x)
    check_logits(z, len(x), getattr(model, "num_classes", None))
    grads = torch.autograd.grad(F.cross_entropy(z, y), list(params.values()))
    return dict(zip(params, grads, strict=True))


def _signs(kind: str, y: torch.Tensor, k: int, dtype) -> torch.Tensor:
    """The label vectors c(y) of each kernel's features phi = c(y)^T dz/dw / sqrt(K): s(y) for
    lpNTK, all ones for pNTK; ``(n, K)``."""
    if kind == "lpntk":
        return (2 * F.one_hot(y, k) - 1).to(dtype)
    return torch.ones(len(y), k, dtype=dtype, device=y.device)


def predicted_change(
    model: torch.nn.Module,
    x_o: torch.Tensor,
    y_o: torch.Tensor,
    x_b: torch.Tensor,
    y_b: torch.Tensor,
    lr: float,
    chunk: int = 1024,
) -> dict[str, torch.Tensor]:
    """First-order change of the logits of ``x_o`` (labels ``y_o``) from one plain gradient step
    of size ``lr`` on the batch ``(x_b, y_b)``: ``{kernel: (n_o, K) float64}`` for the eNTK (Eq. 1),
    lpNTK x I and pNTK x I. ``model`` is used in eval mode and is not changed.

    No kernel matrix or per-sample gradient is formed (memory stays that of a few forward passes,
    whatever the model). eNTK: (1/B) sum_u K(x_o, x_u) r_u = J(x_o) g, g the batch gradient, one
    Jacobian-vector product. lpNTK and pNTK: kappa(x_o, x_u) = c_o^T J_o J_u^T c_u / K, so
    sum_u kappa(x_o, x_u) r_u[k] = c_o^T J_o v_k / K with v_k = sum_u J_u^T c_u r_u[k]: per class
    k one vector-Jacobian product over the batch and one Jacobian-vector product over x_o."""
    was_training = model.training
    model.eval()
    try:
        params = trainable(model)
        frozen = {k: v.detach() for k, v in model.named_parameters() if k not in params}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        fixed = {k: v.detach() for k, v in params.items()}

        def change(tangent: dict) -> torch.Tensor:
            """J(x_o) tangent, ``(n_o, K)``."""
            return torch.cat(
                [
                    jvp(
                        lambda p, x=x_o[i : i + chunk]: functional_call(
                            model, ({**p, **frozen}, buffers), (x,)
                        ),
                        (fixed,),
                        (tangent,),
                    )[1].detach()
                    for i in range(0, len(x_o), chunk)
                ]
            )

        z_b = model(x_b)
        k = z_b.shape[1]
        check_logits(z_b, len(x_b), getattr(model, "num_classes", None))
        residual = (F.softmax(z_b.detach(), 1) - F.one_hot(y_b, k).to(z_b.dtype)).detach()
        loss_grad = torch.autograd.grad(
            F.cross_entropy(z_b, y_b), list(params.values()), retain_graph=True
        )
        out = {"entk": change({n: -lr * g for n, g in zip(params, loss_grad, strict=True)})}
        for kind in ("lpntk", "pntk"):
            c_b, c_o = _signs(kind, y_b, k, z_b.dtype), _signs(kind, y_o, k, z_b.dtype)
            rows = []
            for cls in range(k):
                v = torch.autograd.grad(
                    z_b,
                    list(params.values()),
                    grad_outputs=c_b * residual[:, cls : cls + 1],
                    retain_graph=True,
                )
                jv = change(dict(zip(params, v, strict=True)))
                rows.append((jv * c_o).sum(1))
            out[kind] = -lr / (len(x_b) * k) * torch.stack(rows, 1)
    finally:
        model.train(was_training)
    return {name: v.double().cpu() for name, v in out.items()}


def sgd_window(
    model: torch.nn.Module,
    x_track: torch.Tensor | None,
    y_track: torch.Tensor | None,
    batches,
    lr: float,
    progress=None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    warmup: int = 0,
) -> dict[str, np.ndarray]:
    """Take one gradient step (eval mode, size ``lr``; SGD with ``momentum`` from a zero
    buffer and ``weight_decay``, as ``torch.optim.SGD`` steps; plain when both are 0) per
    ``(x, y)`` in ``batches`` and record each kernel's predicted change of the tracked samples'
    logits ``(T, n, K)`` (Eq. 1's plain step) and their logits: ``x_track`` / ``y_track``
    tracked at every step: ``logits`` ``(T + 1, n, K)`` before each step and after the last;
    ``None``: each step tracks the previous step's batch, the first ``warmup + 1`` batches only
    step (T = len(batches) - 1 - warmup), and ``before`` / ``after`` ``(T, n, K)`` hold the
    logits around each step. ``model`` is updated in place; ``progress`` (a bar) is advanced once
    per tracked step."""
    out = {"before": [], "after": [], **{f"predicted_{k}": [] for k in KERNELS}}
    model.eval()
    buffers = {}
    previous = None
    for i, (xb, yb) in enumerate(batches):
        track = (x_track, y_track) if x_track is not None else previous
        if x_track is None and i <= warmup:
            track = None
        if track is not None:
            out["before"].append(predict_logits(model, track[0]).double())
            for k, v in predicted_change(model, *track, xb, yb, lr).items():
                out[f"predicted_{k}"].append(v)
        grads = _step_gradient(model, xb, yb)
        with torch.no_grad():
            for name, p in trainable(model).items():
                g = grads[name]
                if weight_decay:
                    g = g + weight_decay * p
                if momentum:
                    g = buffers[name] = momentum * buffers[name] + g if name in buffers else g
                p.sub_(lr * g)
        if track is not None:
            out["after"].append(predict_logits(model, track[0]).double())
            if progress is not None:
                progress.update(1)
        previous = (xb, yb)
    if x_track is not None:  # one tracked set: the logits before each step and after the last
        out["logits"] = [out["before"][0], *out["after"]]
        del out["before"], out["after"]
    return {k: torch.stack(v).numpy() for k, v in out.items()}


def margins(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """z_y - max_{j != y} z_j for logits ``z`` ``(..., n, K)`` and labels ``y`` ``(n,)`` (or any
    shape that broadcasts to ``z.shape[:-1]``)."""
    y = np.broadcast_to(y, z.shape[:-1])[..., None]
    own = np.take_along_axis(z, y, -1)[..., 0]
    other = z.copy()
    np.put_along_axis(other, y, -np.inf, -1)
    return own - other.max(-1)


def _scores(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def flip_scores(logits: np.ndarray, predicted: dict, labels: np.ndarray) -> dict:
    """Score the predictions of one window that tracks the same samples at every step:
    ``logits`` ``(T + 1, n, K)``, ``predicted`` ``{kernel: (T, n, K)}``, ``labels`` ``(n,)``; see
    :func:`step_scores`."""
    return step_scores(logits[:-1], logits[1:], predicted, labels)


def window_scores(window: dict) -> dict:
    """:func:`step_scores` of a window as :func:`run_window` returns it (either regime)."""
    predicted = {k: window[f"predicted_{k}"] for k in KERNELS}
    if "logits" in window:  # the plain regime, one tracked set
        return flip_scores(window["logits"], predicted, window["labels"])
    return step_scores(window["before"], window["after"], predicted, window["labels"])


def step_scores(before, after, predicted: dict, labels: np.ndarray) -> dict:
    """Score the predictions of one window: the tracked samples' logits ``before`` and ``after``
    each step ``(T, n, K)``, ``predicted`` ``{kernel: (T, n, K)}``, ``labels`` ``(n,)`` or
    ``(T, n)``. Per variant (the kernels, ``entk_softmax`` and the margin baselines):
    true/false positives, false negatives, precision, recall, F1 (NaN when undefined), the number
    of flagged samples and, for the kernels, how the predicted change of the logits compares with
    the true one, both centred over the classes (a shift of all logits changes nothing): their
    Pearson correlation, the relative error and the ratio of their norms."""
    labels = np.broadcast_to(labels, before.shape[:-1])
    correct = before.argmax(-1) == labels  # (T, n)
    forgotten = correct & (after.argmax(-1) != labels)
    out = {"events": int(forgotten.sum()), "at_risk": int(correct.sum())}
    flags = {k: correct & ((before + v).argmax(-1) != labels) for k, v in predicted.items()}
    if "entk" in predicted:  # the public code's: first order in the probabilities
        q = np.exp(before - before.max(-1, keepdims=True))
        q /= q.sum(-1, keepdims=True)
        dz = predicted["entk"]
        dq = q * (dz - (q * dz).sum(-1, keepdims=True))
        flags["entk_softmax"] = correct & ((q + dq).argmax(-1) != labels)
    margin = np.where(correct, margins(before, labels), np.inf)
    counts = {"margin_oracle": forgotten.sum(1)}
    if "lpntk" in flags:
        counts["margin"] = flags["lpntk"].sum(1)
    for name, count in counts.items():  # the baselines: the smallest margins, so many per step
        flags[name] = np.zeros_like(correct)
        for t, c in enumerate(count):
            flags[name][t, np.argsort(margin[t], kind="stable")[:c]] = True
    true = after - before
    true = true - true.mean(-1, keepdims=True)
    for name, flag in flags.items():
        row = _scores(
            int((flag & forgotten).sum()),
            int((flag & ~forgotten).sum()),
            int((~flag & forgotten).sum()),
        )
        row["flagged"] = int(flag.sum())
        if name in predicted:
            guess = predicted[name] - predicted[name].mean(-1, keepdims=True)
            row["correlation"] = _pearson(guess.ravel(), true.ravel())
            row["relative_error"] = float(np.linalg.norm(guess - true) / np.linalg.norm(true))
            row["norm_ratio"] = float(np.linalg.norm(guess) / np.linalg.norm(true))
        out[name] = row
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / scale) if scale > 0 else float("nan")


def _warmup(regime: str, warmup: int | None) -> int:
    """The untracked warm-up steps of a window: none in the plain regime; else ``warmup``,
    by default the regime's."""
    r = REGIMES[regime]
    return 0 if r["track"] == "fixed" else r["warmup"] if warmup is None else warmup


def _window_config(
    cfg: TrainConfig, iterations: int, tracked: int, lr: float, regime: str = "plain", warmup=0
) -> dict:
    config = {"train": cfg.to_dict(), "iterations": iterations, "tracked": tracked}
    if lr != cfg.lr:  # windows stepped at the training's rate keep their old settings key
        config["window_lr"] = lr
    if regime != "plain":  # so do plain windows
        config["regime"] = {**REGIMES[regime], "warmup": warmup}
    return config


def run_window(
    cfg: TrainConfig,
    run: Path,
    train_set,
    iterations: int,
    tracked: int,
    device,
    bar=None,
    lr: float | None = None,
    path: Path | None = None,
    regime: str = "plain",
    warmup: int | None = None,
) -> dict:
    """The tracked window of one training run (``run``: its folder, trained with ``cfg``),
    stepped at ``lr`` (default ``cfg.lr``) in ``regime`` (:data:`REGIMES`; ``public`` tracks
    each step's previous batch, not ``tracked`` samples, after ``warmup`` untracked steps,
    default the regime's) and kept in ``path`` (default ``run/window.npz``); a finished window
    with the same settings is read back."""
    path = run / "window.npz" if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lr = cfg.lr if lr is None else lr
    r = REGIMES[regime]
    fixed = r["track"] == "fixed"
    warmup = _warmup(regime, warmup)
    config = _window_config(cfg, iterations, tracked, lr, regime, warmup)
    if path.exists():
        try:
            with np.load(path) as f:
                saved = {k: f[k] for k in f.files}
            same = json.loads(str(saved.pop("config"))) == config
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path} is unreadable or corrupt ({e}); delete it to redo") from None
        if not same:
            raise ConfigError(
                f"{path} was made with other settings; choose another output folder or delete it",
                param="out_dir",
            )
        if bar is not None:
            bar.update(iterations)
        return saved
    model, _ = load_checkpoint(run / "last.pt", device)
    n, b = len(train_set), cfg.batch_size
    steps = iterations + (0 if fixed else 1 + warmup)  # the warm-up and a first previous batch
    order = epoch_order(cfg.seed, cfg.epochs, n)[: steps * b]  # the batches training takes next
    x, y = train_set.tensors(next(model.parameters()).device)
    batches = [(x[order[i : i + b]], y[order[i : i + b]]) for i in range(0, len(order), b)]
    positions = order.numpy().reshape(steps, b)
    if fixed:
        rng = np.random.default_rng(derive_seed(cfg.seed, 5))
        track = np.sort(rng.choice(n, size=tracked, replace=False))
        window = sgd_window(model, x[track], y[track], batches, lr, progress=bar)
    else:
        window = sgd_window(
            model,
            None,
            None,
            batches,
            lr,
            bar,
            momentum=r["momentum"],
            weight_decay=r["weight_decay"],
            warmup=warmup,
        )
        track = positions[warmup:-1]
    window.update(
        labels=train_set.labels[track],
        tracked=train_set.indices[track],
        batches=train_set.indices[positions],
    )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, config=json.dumps(config), **window)
    return window


def forgetting_prediction(
    cfg: TrainConfig,
    seeds=range(10),
    iterations: int = 30,
    tracked: int = 1280,
    out_dir="runs/forgetting_prediction",
    data_dir=None,
    device="auto",
    progress: bool = True,
    window_lr: float | None = None,
    runs_dir=None,
    regime: str = "plain",
    warmup: int | None = None,
) -> dict:
    """Table 1 over ``seeds`` (see the module doc): one training run and one tracked window per
    seed under ``out_dir/seed_<s>/`` (resumable); writes ``results.json``, ``per_seed.csv`` and
    ``prediction.png`` in ``out_dir`` and returns the results. ``window_lr``: the size of the
    window's gradient steps (default: ``cfg.lr``, the training's own update when ``cfg`` is
    plain SGD); ``regime``: ``plain`` (the paper's text) or ``public`` (the public code's
    window: momentum 0.9, each step's previous batch tracked after ``warmup`` untracked steps,
    default the regime's; :data:`REGIMES`). ``runs_dir``:
    where the training runs are, ``runs_dir/seed_<s>`` (trained there
    when missing; default ``out_dir``), to share finished runs of the same settings; the windows
    stay in ``out_dir/seed_<s>/window.npz``."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"expected one or more distinct seeds; got {seeds}", param="seeds")
    for name, value in (("iterations", iterations), ("tracked", tracked)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"expected an integer >= 1; got {value!r}", param=name)
    if regime not in REGIMES:
        raise ConfigError(
            f"unknown regime {regime!r}; expected one of {', '.join(REGIMES)}", param="regime"
        )
    cfg = cfg.with_fixed_split()
    cfg.validate()
    if window_lr is None:
        window_lr = cfg.lr
    elif isinstance(window_lr, bool) or not (
        isinstance(window_lr, numbers.Real) and 0 < window_lr < 1e6
    ):
        raise ConfigError(f"expected a positive step size; got {window_lr!r}", param="window_lr")
    window_lr = float(window_lr)
    out = output_folder(out_dir)
    train_set, _, _ = prepare_data(cfg, data_dir)
    n = len(train_set)
    warmup = _warmup(regime, warmup)
    if not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ConfigError(f"expected an integer >= 0; got {warmup!r}", param="warmup")
    steps = iterations + (0 if regime == "plain" else 1 + warmup)
    if tracked > n or steps * cfg.batch_size > n:
        raise ConfigError(
            f"the training split has {n} samples; {tracked} tracked and {steps} batches of "
            f"{cfg.batch_size} need at most that many",
            param="tracked" if tracked > n else "iterations",
        )
    t0 = time.time()
    per_seed = []
    runs_dir = out if runs_dir is None else output_folder(runs_dir)
    runs = list(train_seeds(cfg, seeds, runs_dir, data_dir, device, progress))
    bar = progress_bar(len(seeds) * iterations, "forgetting prediction", "step", enabled=progress)
    windows = []
    for seed, run in zip(seeds, runs, strict=True):
        run_cfg = TrainConfig.from_dict({**cfg.to_dict(), "seed": seed})
        path = out / f"seed_{seed}" / "window.npz"
        w = run_window(
            run_cfg,
            run,
            train_set,
            iterations,
            tracked,
            device,
            bar,
            window_lr,
            path,
            regime,
            warmup,
        )
        per_seed.append({"seed": seed, **window_scores(w)})
        windows.append(w)
    bar.close()
    result = summarise(per_seed)
    result.update(
        config=cfg.to_dict(),
        seeds=seeds,
        iterations=iterations,
        tracked=tracked,
        window_lr=window_lr,
        regime=regime,
        paper=PAPER.get(cfg.dataset),
        seconds=round(time.time() - t0, 1),
    )
    write_json(out / "results.json", result)
    _write_csv(per_seed, out / "per_seed.csv")
    plot(result, windows[0], out / "prediction.png")
    return result


def summarise(per_seed: list[dict]) -> dict:
    """Mean and std (over seeds, NaNs left out) of each variant's scores, the pooled scores, and
    the events; ``per_seed``: one :func:`flip_scores` dict per seed, with its ``seed``."""
    result = {
        "per_seed": per_seed,
        "events": [r["events"] for r in per_seed],
        "at_risk": [r["at_risk"] for r in per_seed],
    }
    for name in VARIANTS:
        rows = [r[name] for r in per_seed if name in r]
        if not rows:
            continue
        summary = {"pooled": _scores(*(sum(r[k] for r in rows) for k in ("tp", "fp", "fn")))}
        for metric in ("precision", "recall", "f1", "correlation", "relative_error", "norm_ratio"):
            values = np.array([r[metric] for r in rows if metric in r], float)
            values = values[np.isfinite(values)]
            if len(values):
                summary[metric] = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                    "seeds": len(values),
                }
        result[name] = summary
    return result


def _write_csv(per_seed: list[dict], path) -> None:
    import csv

    keys = ("flagged", "tp", "fp", "fn", "precision", "recall", "f1", "correlation")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("seed", "variant", "events", "at_risk", *keys))
        for r in per_seed:
            for name in VARIANTS:
                if name in r:
                    w.writerow(
                        (r["seed"], name, r["events"], r["at_risk"])
                        + tuple(r[name].get(k, "") for k in keys)
                    )


def plot(result: dict, window: dict, path) -> None:
    """Predicted against true change of the margin to the runner-up class (first seed, samples
    correct before the step), per kernel; and precision / recall / F1 per variant over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "logits" in window:
        before, after = window["logits"][:-1], window["logits"][1:]
    else:
        before, after = window["before"], window["after"]
    y = np.broadcast_to(window["labels"], before.shape[:-1])  # (T, n)
    correct = before.argmax(-1) == y
    runner = np.where(np.eye(before.shape[-1], dtype=bool)[y], -np.inf, before).argmax(-1)

    def gap(d):  # change of z_y - z_runner
        own = np.take_along_axis(d, y[..., None], -1)[..., 0]
        return own - np.take_along_axis(d, runner[..., None], -1)[..., 0]

    true = gap(after - before)[correct]
    fig, axes = plt.subplots(1, len(KERNELS) + 1, figsize=(4 * (len(KERNELS) + 1), 3.8), dpi=110)
    lim = np.abs(true).max() * 1.1 if true.size else 1.0
    for ax, k in zip(axes, KERNELS, strict=False):
        guess = gap(window[f"predicted_{k}"])[correct]
        ax.scatter(true, guess, s=3, alpha=0.3)
        ax.plot([-lim, lim], [-lim, lim], color="gray", lw=0.8)
        r = result[k].get("correlation", {}).get("mean", np.nan)
        ax.set_title(f"{k}: r(dz) = {r:.3f}, mean over seeds", fontsize=9)
        ax.set_xlabel("true change of the margin")
        ax.set_ylabel("predicted change")
    ax = axes[-1]
    width = 0.25
    for i, metric in enumerate(("precision", "recall", "f1")):
        means = [result[v].get(metric, {}).get("mean", np.nan) for v in VARIANTS]
        stds = [result[v].get(metric, {}).get("std") or 0.0 for v in VARIANTS]
        ax.bar(np.arange(len(VARIANTS)) + (i - 1) * width, means, width, yerr=stds, label=metric)
    ax.set_xticks(np.arange(len(VARIANTS)), VARIANTS, rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title(f"forgetting events: {sum(result['events'])} over {len(result['seeds'])} seeds")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
