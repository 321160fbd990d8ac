"""Seeded, resumable training with best-validation checkpoints and optional per-sample logs.

Determinism: every random choice (initialisation, shuffling, augmentation, dropout) is derived from
``TrainConfig.seed``; the shuffle of epoch ``e`` and the augmentation of step ``s`` are drawn from
generators seeded by ``(seed, e, s)``, so a run resumed from a checkpoint replays exactly the same
updates and ends with bit-identical weights (on CPU, same thread count).

Outputs in ``out_dir``: ``config.json``, ``metrics.json`` (one row per epoch), ``best.pt`` (weights
of the epoch with the highest validation accuracy, with config and metrics), ``last.pt`` (everything
needed to resume), and with ``log_per_sample`` the arrays
``per_sample/{loss,correct,step,margin}.npy`` of shape ``(epochs, N)``: each training sample's
loss, correctness and margin (:func:`label_margin`) in the minibatch that trained it, column ``j``
being the sample ``per_sample/indices.npy[j]`` of the original dataset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._device import resolve_device
from ._errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    MissingFileError,
)
from ._interrupt import deferred_interrupt
from ._io import atomic_path, output_folder, torch_save, write_json
from ._progress import Stages
from ._progress import progress as progress_bar
from ._seed import derive_seed
from .data import ArrayDataset, is_idx_folder, load_dataset, stratified_subset, train_val_split
from .models import Classifier, build_model, check_input, check_logits, count_parameters
from .noise import check_noise, noisy_dataset

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "step", "cosine")


@dataclass
class TrainConfig:
    """Everything that determines a training run (defaults: LeNet-5 on MNIST)."""

    dataset: str = "mnist"
    model: str = "lenet5"
    model_options: dict = field(default_factory=dict)
    classes: list | None = None  # keep only these classes (relabelled 0..k-1)
    train_size: int | None = None  # stratified random subset of the training split
    test_size: int | None = None  # stratified random subset of the test split
    val_fraction: float = 0.1  # held out from the training split; selects the best checkpoint
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 2  # epochs between decays, "step" schedule
    gamma: float = 0.7  # decay factor, "step" schedule
    augment: bool = False  # random crop (pad 4) + horizontal flip, for CIFAR
    seed: int = 0
    split_seed: int | None = None  # seed of the validation split and train_size subset (None: seed)
    log_per_sample: bool = False
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: at epoch ends only)
    keep_epochs: bool = False  # also keep each epoch's weights as checkpoints/epoch_NNN.pt
    label_noise: dict | None = None  # flip labels of the training file: see lpntk.noise

    def __post_init__(self):
        if is_idx_folder(self.dataset):  # one name per folder, wherever the run starts from
            self.dataset = str(Path(self.dataset).resolve())

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}",
                param="optimizer",
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}",
                param="schedule",
            )
        minimum = {"epochs": 1, "batch_size": 1, "step_size": 1, "checkpoint_every": 0, "seed": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"expected an integer >= {low}; got {value!r}", param=name)
        if self.split_seed is not None and (
            not isinstance(self.split_seed, (int, np.integer)) or self.split_seed < 0
        ):
            raise ConfigError(
                f"expected an integer >= 0; got {self.split_seed!r}", param="split_seed"
            )
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ConfigError(
                    f"expected a positive number of samples; got {value!r}", param=name
                )
        for name in ("lr", "gamma", "momentum", "weight_decay"):
            if not math.isfinite(getattr(self, name)) or abs(getattr(self, name)) > 1e6:
                raise ConfigError(
                    f"expected a finite number of at most 1e6; got {getattr(self, name)}",
                    param=name,
                )
        for name in ("lr", "gamma"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"expected a positive number; got {getattr(self, name)}", param=name
                )
        if self.momentum >= 1:
            raise ConfigError(f"expected a number in [0, 1); got {self.momentum}", param="momentum")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"expected a number >= 0; got {getattr(self, name)}", param=name)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"expected a fraction strictly between 0 and 1; got {self.val_fraction}",
                param="val_fraction",
            )
        if not isinstance(self.model_options, dict):
            raise ConfigError(
                f"expected a dict of KEY=VALUE options; got {self.model_options!r}",
                param="model_options",
            )
        for key in ("input_shape", "num_classes"):
            if key in self.model_options:
                raise ConfigError(
                    f"{key} is not an option: it is set from the data", param="model_options"
                )
        check_noise(self.label_noise, self.dataset)
        if self.classes is not None and len(self.classes) < 2:
            raise ConfigError(
                f"a classifier needs at least two classes; got {list(self.classes)}",
                param="classes",
            )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("test_size", "label_noise"):
            if d[name] is None:  # the default, as older runs had it
                del d[name]
        return d

    def with_fixed_split(self) -> TrainConfig:
        """This config with ``split_seed`` set (to ``seed`` when unset), so that runs with other
        seeds keep the same validation split and training samples."""
        split_seed = self.seed if self.split_seed is None else self.split_seed
        return dataclasses.replace(self, split_seed=split_seed)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_val_acc: float
    test_acc: float | None  # test accuracy of the best-validation checkpoint
    history: list


def random_crop_flip(x: torch.Tensor, pad_value: torch.Tensor, gen: torch.Generator, pad: int = 4):
    """Random crop after ``pad`` pixels of padding, and random horizontal flip. ``x``: (B, C, H, W);
    ``pad_value``: (C,) the normalised value of a black pixel."""
    b, c, h, w = x.shape
    padded = pad_value.view(1, c, 1, 1).expand(b, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = x
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen).to(x.device)
    rows = (off[:, 0:1] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (off[:, 1:2] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    out = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]
    out = out.permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    return torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out).contiguous()


def label_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logit of the label minus the largest other logit, per row (Pleiss et al. 2020's
    margin; its mean over epochs is the area under the margin, AUM)."""
    rows = torch.arange(len(labels), device=labels.device)
    given = logits[rows, labels]
    other = logits.clone()
    other[rows, labels] = -torch.inf
    return given - other.max(1).values


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The logits of ``model`` in eval mode for ``x`` ``(N, ...)``: ``(N, K)``, on the CPU."""
    was_training = model.training
    model.eval()
    k = getattr(model, "num_classes", None)
    out = []
    try:
        for i in range(0, len(x), batch_size):
            z = model(x[i : i + batch_size])
            check_logits(z, len(x[i : i + batch_size]), k)
            out.append(z.detach().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024):
    """Each sample's prediction and cross-entropy under ``model`` in eval mode: two ``(N,)``
    tensors (int64, float32), for ``x`` ``(N, ...)`` and labels ``y`` ``(N,)``."""
    z = predict_logits(model, x, batch_size)
    return z.argmax(1), F.cross_entropy(z, y.cpu(), reduction="none").float()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024):
    """Accuracy and mean cross-entropy of ``model`` (eval mode) on ``x`` (N, ...), ``y`` (N,)."""
    pred, loss = predict(model, x, y, batch_size)
    return (pred == y.cpu()).double().mean().item(), loss.double().mean().item()


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _epoch: 1.0)
    return opt, sched


def _checkpoint_payload(model: Classifier, cfg: TrainConfig, train_set, val_set) -> dict:
    """What every checkpoint carries so it can be rebuilt without the run's code or arguments."""
    return {
        "model": cfg.model,
        "model_options": dict(cfg.model_options),
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "classes": list(train_set.classes),
        "dataset": train_set.name,
        "train_indices": train_set.indices.tolist(),
        "val_indices": val_set.indices.tolist(),
        "config": cfg.to_dict(),
    }


def train(
    model: Classifier,
    train_set: ArrayDataset,
    val_set: ArrayDataset,
    test_set: ArrayDataset | None,
    cfg: TrainConfig,
    out_dir: str | Path,
    device: str | torch.device = "auto",
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_set``; keep the checkpoint with the best accuracy on ``val_set``.

    If ``out_dir`` holds an unfinished run with the same settings, it is resumed; a finished one is
    returned as it is. ``stop_after_steps`` stops (after checkpointing) once that many optimisation
    steps have been taken in total, as if the run had been killed; it exists for resume tests.
    """
    cfg.validate()
    for ds, what in ((train_set, "training"), (val_set, "validation")):
        if len(ds) == 0:
            raise ConfigError(f"the {what} set is empty")
        check_input(model, ds.input_shape, ds.num_classes)
    out_dir = output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    model.to(device)
    opt, sched = make_optimizer(model, cfg)
    meta = _checkpoint_payload(model, cfg, train_set, val_set)

    x_tr, y_tr = train_set.tensors(device)
    x_va, y_va = val_set.tensors(device)
    x_te, y_te = test_set.tensors(device) if test_set is not None else (None, None)
    n = len(x_tr)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    pad_value = ((0.0 - torch.tensor(train_set.mean)) / torch.tensor(train_set.std)).to(device)

    state = {
        "epoch": 0,
        "step": 0,
        "global_step": 0,
        "loss_sum": 0.0,
        "correct": 0,
        "seen": 0,
        "history": [],
        "best_val_acc": -1.0,
        "best_epoch": -1,
        "finished": False,
    }
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    ckpt = _resume_state(last_path, best_path)
    if ckpt is not None:
        if _comparable(ckpt["meta"]) != _comparable(meta):
            raise ConfigError(
                f"{out_dir} holds a run with different settings or data; choose another output "
                f"folder or delete {last_path} to start again",
                param="out_dir",
            )
        try:
            model.load_state_dict(ckpt["model_state"])
            opt.load_state_dict(ckpt["optimizer_state"])
            sched.load_state_dict(ckpt["scheduler_state"])
            torch.set_rng_state(ckpt["rng_state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"cannot resume from {last_path}: its saved state does not fit this run ({e}); "
                "delete it to start again"
            ) from None
        if device.type == "cuda" and ckpt.get("cuda_rng_state") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng_state"], device)
        elif device.type == "cuda" and _uses_dropout(model):
            warnings.warn(
                "resuming on CUDA a run checkpointed on the CPU: dropout draws differ "
                "from an uninterrupted run",
                stacklevel=2,
            )
        state = ckpt["state"]
    else:
        torch.manual_seed(derive_seed(cfg.seed, 1))  # dropout draws from the global generator
        write_json(
            out_dir / "config.json",
            {
                **meta,
                "train_indices": None,  # the lists are in best.pt and last.pt
                "val_indices": None,
                "n_train": len(train_set),
                "n_val": len(val_set),
                "parameters": count_parameters(model),
            },
        )
    logs = None
    if cfg.log_per_sample and not state["finished"]:
        logs = _open_logs(out_dir, cfg, train_set, fresh=not last_path.exists())

    def checkpoint():
        state["epoch_seconds"] = time.time() - t0 if state["seen"] else 0.0
        if logs is not None:
            for arr in logs.values():
                arr.flush()
        torch_save(
            {
                "meta": meta,
                "model_state": model.state_dict(),
                "optimizer_state": opt.state_dict(),
                "scheduler_state": sched.state_dict(),
                "rng_state": torch.get_rng_state(),
                "cuda_rng_state": torch.cuda.get_rng_state(device)
                if device.type == "cuda"
                else None,
                "state": state,
            },
            last_path,
        )

    def stop_here():
        checkpoint()
        bar.close()
        raise Interrupted(
            f"training stopped at epoch {state['epoch'] + 1}, step {state['step']}, saved in "
            f"{last_path}"
        )

    bar = progress_bar(
        cfg.epochs * n,
        "train",
        initial=state["epoch"] * n + state["seen"],
        enabled=progress and not state["finished"],
    )
    model.train()
    with deferred_interrupt() as interrupt:
        while not state["finished"]:
            epoch = state["epoch"]
            perm = epoch_order(cfg.seed, epoch, n)
            t0 = time.time() - state.get("epoch_seconds", 0.0)  # time already spent on this epoch
            while state["step"] < steps_per_epoch:
                step = state["step"]
                pos = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size].to(device)
                xb, yb = x_tr[pos], y_tr[pos]
                if cfg.augment:
                    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 3, epoch, step))
                    xb = random_crop_flip(xb, pad_value, gen)
                logits = model(xb)
                check_logits(logits, len(pos), model.num_classes)
                losses = F.cross_entropy(logits, yb, reduction="none")
                opt.zero_grad(set_to_none=True)
                losses.mean().backward()
                opt.step()
                hit = logits.argmax(1) == yb
                state["loss_sum"] += losses.sum().item()
                state["correct"] += hit.sum().item()
                state["seen"] += len(pos)
                if logs is not None:
                    p = pos.cpu().numpy()
                    logs["loss"][epoch, p] = losses.detach().cpu().numpy()
                    logs["correct"][epoch, p] = hit.cpu().numpy()
                    logs["step"][epoch, p] = state["global_step"]
                    logs["margin"][epoch, p] = label_margin(logits.detach(), yb).cpu().numpy()
                state["step"] += 1
                state["global_step"] += 1
                bar.update(len(pos))
                if interrupt.requested or (
                    stop_after_steps is not None and state["global_step"] >= stop_after_steps
                ):
                    stop_here()
                if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
                    checkpoint()
            val_acc, val_loss = evaluate(model, x_va, y_va)
            test_acc = evaluate(model, x_te, y_te)[0] if x_te is not None else None
            row = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": state["loss_sum"] / state["seen"],
                "train_acc": state["correct"] / state["seen"],
                "val_acc": val_acc,
                "val_loss": val_loss,
                "test_acc": test_acc,
                "seconds": time.time() - t0,
            }
            state["history"].append(row)
            sched.step()
            if val_acc > state["best_val_acc"]:
                state["best_val_acc"], state["best_epoch"] = val_acc, epoch + 1
                torch_save({**meta, "model_state": model.state_dict(), "metrics": row}, best_path)
            if cfg.keep_epochs:
                torch_save(
                    {**meta, "model_state": model.state_dict(), "metrics": row},
                    epoch_checkpoint(out_dir, epoch + 1),
                )
            state.update(
                epoch=epoch + 1,
                step=0,
                loss_sum=0.0,
                correct=0,
                seen=0,
                finished=epoch + 1 >= cfg.epochs,
            )
            write_json(out_dir / "metrics.json", state["history"])
            checkpoint()
            test_txt = f" test_acc {test_acc:.4f}" if test_acc is not None else ""
            bar.write(
                f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
                f"val_acc {val_acc:.4f}{test_txt} ({row['seconds']:.1f}s)"
            )
            if interrupt.requested and not state["finished"]:
                stop_here()
    bar.close()
    best = state["history"][state["best_epoch"] - 1]
    return TrainResult(
        out_dir,
        best_path,
        state["best_epoch"],
        state["best_val_acc"],
        best["test_acc"],
        state["history"],
    )


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which a run with ``seed`` visits its ``n`` training samples in ``epoch``
    (0-based): positions in the training set, batch ``b`` being ``[b * B : (b + 1) * B]``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, 2, epoch)))


def _uses_dropout(model: nn.Module) -> bool:
    """Whether the model draws random numbers in training mode (dropout layers)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def _comparable(meta: dict) -> dict:
    """The settings that must match to resume (as JSON sees them; checkpointing may change)."""
    meta = json.loads(json.dumps(meta))
    for key in ("checkpoint_every", "keep_epochs"):
        meta["config"].pop(key, None)
    if meta["config"].get("split_seed") is None:  # the default, as older runs had it
        meta["config"].pop("split_seed", None)
    return meta


def epoch_checkpoint(out_dir: str | Path, epoch: int) -> Path:
    """Where ``keep_epochs`` keeps the weights at the end of ``epoch`` (1-based)."""
    return Path(out_dir) / "checkpoints" / f"epoch_{epoch:03d}.pt"


def _torch_load(path: Path, device="cpu"):
    """``torch.load`` of tensors and plain containers only (no code runs), with clear errors."""
    if not path.exists():
        raise MissingFileError(f"checkpoint {path} does not exist")
    if path.is_dir():
        hint = (
            f"; {path / 'last.pt'} holds its latest weights" if (path / "last.pt").exists() else ""
        )
        raise MissingFileError(
            f"{path} is a folder without best.pt{hint}; expected a checkpoint file or a run folder"
        )
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unsupported pickle content, ...
        if "Weights only load failed" in str(e):
            reason = (
                "it holds Python objects, while lpntk checkpoints hold tensors and plain values"
            )
        elif "zip archive" in str(e) or "central directory" in str(e):
            reason = "not a complete PyTorch file: truncated or of another format"
        else:
            first = (str(e).strip().splitlines() or [""])[0][:120]
            reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({reason}); expected a .pt file "
            "written by lpntk train"
        ) from None


def _read_resume_state(path: Path) -> dict:
    """The contents of a run's ``last.pt``, checked enough to resume from."""
    try:
        ckpt = _torch_load(path)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume: {e}; delete {path} to start the run again") from None
    keys = ("meta", "model_state", "optimizer_state", "scheduler_state", "rng_state", "state")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise CheckpointError(
            f"cannot resume: {path} is not the resume state of an lpntk training run; "
            f"delete it to start the run again"
        )
    return ckpt


def _resume_state(last_path: Path, best_path: Path) -> dict | None:
    """The resume state in ``last_path``, or None to train from the start: there is none, or
    the run's files are damaged (a truncated ``last.pt``, or a finished run whose ``best.pt``
    cannot be read). Damaged files are moved aside (``*.damaged``) with a warning, so that the
    run is trained again instead of blocking every rerun."""
    if not last_path.exists():
        return None
    try:
        ckpt = _read_resume_state(last_path)
        if ckpt["state"].get("finished"):
            best = _torch_load(best_path)
            if not isinstance(best, dict) or "model_state" not in best:
                raise CheckpointError(f"{best_path} holds no model weights")
        return ckpt
    except CheckpointError as e:
        reason = str(e)
    except MissingFileError:
        reason = f"{best_path} is missing"
    for path in (last_path, best_path):
        if path.exists():
            os.replace(path, path.with_name(path.name + ".damaged"))
    warnings.warn(
        f"the run in {last_path.parent} is damaged ({reason}); its files are moved aside as "
        "*.damaged and the run is trained again from the start",
        stacklevel=3,
    )
    return None


def _open_logs(out_dir: Path, cfg: TrainConfig, train_set: ArrayDataset, fresh: bool) -> dict:
    """Per-sample logs as memory-mapped ``(epochs, N)`` arrays: bounded memory, survive a crash.
    A fresh run starts new logs; a resumed one reopens them."""
    d = out_dir / "per_sample"
    d.mkdir(exist_ok=True)
    shape = (cfg.epochs, len(train_set))
    specs = {
        "loss": (np.float32, np.nan),
        "correct": (np.int8, -1),
        "step": (np.int64, -1),
        "margin": (np.float32, np.nan),
    }
    logs = {}
    for name, (dtype, fill) in specs.items():
        path = d / f"{name}.npy"
        if not fresh and path.exists():
            try:
                logs[name] = np.load(path, mmap_mode="r+")
            except (OSError, ValueError) as e:
                raise DataError(
                    f"cannot resume: the per-sample log {path} is corrupt ({e}); "
                    f"delete {out_dir / 'last.pt'} to start the run again"
                ) from None
            if logs[name].shape != shape:
                raise DataError(
                    f"cannot resume: {path} has shape {logs[name].shape}, expected {shape}; "
                    f"delete {out_dir / 'last.pt'} to start the run again"
                )
        else:
            logs[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            logs[name][:] = fill
    with atomic_path(d / "indices.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, train_set.indices)
    return logs


def prepare_data(cfg: TrainConfig, data_dir=None):
    """The training, validation (carved from train) and test sets that ``cfg`` describes."""
    train_full = load_dataset(cfg.dataset, "train", data_dir)
    test = load_dataset(cfg.dataset, "test", data_dir)
    if cfg.classes is not None:
        try:
            train_full = train_full.filter_classes(cfg.classes)
            test = test.filter_classes(cfg.classes)
        except ConfigError as e:
            raise ConfigError(e.message, param="classes") from None
    train_full = noisy_dataset(train_full, cfg.label_noise, cfg.dataset)
    split_seed = cfg.with_fixed_split().split_seed
    train_set, val_set = train_val_split(train_full, cfg.val_fraction, seed=split_seed)
    train_set = _subset(
        train_set, cfg.train_size, split_seed, "train_size", "training split (after validation)"
    )
    test = _subset(test, cfg.test_size, split_seed, "test_size", "test split")
    return train_set, val_set, test


def _subset(ds: ArrayDataset, size: int | None, seed: int, param: str, name: str) -> ArrayDataset:
    """A seeded stratified subset of ``size`` samples of ``ds`` (the ``name``; all when None)."""
    if size is None:
        return ds
    if size > len(ds):
        raise ConfigError(
            f"{size} samples asked for, but the {name} has only {len(ds)}; "
            f"expected at most {len(ds)}",
            param=param,
        )
    return stratified_subset(ds, size, seed=seed)


def run_training(
    cfg: TrainConfig, out_dir, data_dir=None, device="auto", progress=True, train_indices=None
) -> TrainResult:
    """Load the data ``cfg`` names, build the model, and :func:`train` it.

    ``train_indices``: optionally train only on these original-dataset indices (a pruned set).
    """
    cfg.validate()
    resolve_device(device)  # a bad device name or output folder fails before the data is loaded
    output_folder(out_dir)
    train_set, val_set, test = prepare_data(cfg, data_dir)
    if train_indices is not None:  # every index must be a training sample of this split
        train_set = train_set.subset(np.sort(train_set.positions_of(train_indices)))
    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = build_model(
        cfg.model, train_set.input_shape, train_set.num_classes, **cfg.model_options
    )
    return train(model, train_set, val_set, test, cfg, out_dir, device=device, progress=progress)


def train_seeds(cfg: TrainConfig, seeds, out_dir, data_dir=None, device="auto", progress=True):
    """Train ``cfg`` once per seed under ``out_dir/seed_<s>/`` (finished runs are reused, an
    unfinished one resumes); yield each run's folder. Each run's ``[k/N]`` line names it."""
    out, seeds = output_folder(out_dir), list(seeds)
    stages = Stages(len(seeds), enabled=progress)
    for seed in seeds:
        stages.start(f"training {cfg.model} on {cfg.dataset}, seed {seed}")
        ran_before = (out / f"seed_{seed}" / "metrics.json").exists()
        result = run_training(
            dataclasses.replace(cfg, seed=int(seed)),
            out / f"seed_{seed}",
            data_dir=data_dir,
            device=device,
            progress=progress,
        )
        stages.finish(trained=not ran_before)
        yield Path(result.out_dir)


CHECKPOINT_KEYS = ("model", "model_options", "input_shape", "num_classes", "dataset", "config")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the model saved in a checkpoint; returns ``(model in eval mode, checkpoint dict)``.

    ``path``: a training run's folder (its ``best.pt``), or any checkpoint it wrote: ``best.pt``,
    ``last.pt`` (the latest weights, also mid-epoch) or ``checkpoints/epoch_NNN.pt``. The dict
    holds the run's settings (``config``), ``classes``, ``train_indices`` and ``val_indices``.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ConfigError(f"expected the path of a checkpoint; got {path!r}", param="checkpoint")
    path = Path(path)
    if path.is_dir() and (path / "best.pt").exists():  # a training run's folder
        path = path / "best.pt"
    device = resolve_device(device)
    ckpt = _torch_load(path, device)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("meta"), dict) and "state" in ckpt:
        ckpt = {**ckpt["meta"], "model_state": ckpt.get("model_state"), "state": ckpt["state"]}
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} holds a {type(ckpt).__name__}, not an lpntk checkpoint; expected best.pt, "
            "last.pt or checkpoints/epoch_NNN.pt written by lpntk train"
        )
    missing = [k for k in (*CHECKPOINT_KEYS, "model_state") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not an lpntk checkpoint: it lacks {', '.join(missing)}; expected best.pt, "
            "last.pt or checkpoints/epoch_NNN.pt written by lpntk train"
        )
    _check_fields(ckpt, path)
    try:
        model = build_model(
            ckpt["model"], ckpt["input_shape"], ckpt["num_classes"], **ckpt["model_options"]
        )
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: the saved model cannot be rebuilt ({e})") from None
    _load_weights(model, ckpt["model_state"], path)
    model.to(device).eval()
    return model, ckpt


def _check_fields(ckpt: dict, path: Path) -> None:
    """The settings a checkpoint carries have the types lpntk wrote (edited files are caught)."""
    kinds = {
        "model": str,
        "dataset": str,
        "model_options": dict,
        "config": dict,
        "input_shape": (list, tuple),
        "num_classes": int,
        "train_indices": list,
        "val_indices": list,
        "classes": (list, tuple),
    }
    for key, kind in kinds.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise CheckpointError(
                f"{path}: {key} is a {type(ckpt[key]).__name__}; this checkpoint was not written "
                "by lpntk train or was edited"
            )
    for key in ("train_indices", "val_indices"):
        if key in ckpt and not all(isinstance(i, int) for i in ckpt[key]):
            raise CheckpointError(f"{path}: {key} must hold integers; the checkpoint was edited")
    if "classes" in ckpt and len(ckpt["classes"]) != ckpt["num_classes"]:
        raise CheckpointError(
            f"{path}: {len(ckpt['classes'])} class names for {ckpt['num_classes']} logits; "
            "the checkpoint was edited"
        )


def _load_weights(model: nn.Module, state, path: Path) -> None:
    """``model.load_state_dict(state)`` with a short message naming the mismatched weights."""
    want = model.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: model_state is a {type(state).__name__}, not weights")
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    wrong = [
        k
        for k in set(want) & set(state)
        if not isinstance(state[k], torch.Tensor) or state[k].shape != want[k].shape
    ]
    if missing or extra or wrong:
        parts = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", extra), ("misshaped", wrong))
            if keys
        ]
        raise CheckpointError(
            f"{path}: the saved weights do not fit model {model.__class__.__name__} "
            f"({'; '.join(parts)})"
        )
    model.load_state_dict(state)


def summary(result: TrainResult) -> str:
    test = f", test accuracy {result.test_acc:.4f}" if result.test_acc is not None else ""
    return (
        f"best validation accuracy {result.best_val_acc:.4f} at epoch {result.best_epoch}{test}\n"
        f"checkpoint: {result.best_checkpoint}\nmetrics:    {result.out_dir / 'metrics.json'}"
    )


__all__ = [
    "TrainConfig",
    "TrainResult",
    "epoch_checkpoint",
    "epoch_order",
    "train_seeds",
    "predict",
    "train",
    "run_training",
    "prepare_data",
    "evaluate",
    "load_checkpoint",
    "derive_seed",
    "summary",
]
