"""Seeded, resumable training with best-validation checkpoints and optional per-sample logs.

Determinism: every random choice (initialisation, shuffling, augmentation, dropout) is derived from
``TrainConfig.seed``; the shuffle of epoch ``e`` and the augmentation of step ``s`` are drawn from
generators seeded by ``(seed, e, s)``, so a run resumed from a checkpoint replays exactly the same
updates and ends with bit-identical weights (on CPU, same thread count).

Outputs in ``out_dir``: ``config.json``, ``metrics.json`` (one row per epoch), ``best.pt`` (weights
of the epoch with the highest validation accuracy, with config and metrics), ``last.pt`` (everything
needed to resume), and with ``log_per_sample`` the arrays ``per_sample/{loss,correct,step}.npy`` of
shape ``(epochs, N)``: each training sample's loss and correctness in the minibatch that trained it,
column ``j`` being the sample ``per_sample/indices.npy[j]`` of the original dataset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._errors import ConfigError, LpntkError
from ._io import atomic_path, write_json
from ._progress import progress as progress_bar
from ._seed import derive_seed
from .data import ArrayDataset, load_dataset, stratified_subset, train_val_split
from .models import Classifier, build_model, check_input, count_parameters

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
    log_per_sample: bool = False
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: at epoch ends only)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.step_size < 1 or self.gamma <= 0:
            raise ConfigError(
                f"step_size must be >= 1 and gamma > 0; got {self.step_size}, {self.gamma}"
            )
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(
                f"momentum and weight_decay must be >= 0; got {self.momentum}, {self.weight_decay}"
            )
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError(f"train_size must be at least 1, got {self.train_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available; use 'cpu'")
    return device


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


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024):
    """Accuracy and mean cross-entropy of ``model`` (eval mode) on ``x`` (N, ...), ``y`` (N,)."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        loss += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(x), loss / len(x)


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


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
    out_dir = Path(out_dir)
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
    if last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        if _comparable(ckpt["meta"]) != _comparable(meta):
            raise ConfigError(
                f"{out_dir} holds a run with different settings or data; choose another output "
                f"directory or delete {last_path} to start again"
            )
        model.load_state_dict(ckpt["model_state"])
        opt.load_state_dict(ckpt["optimizer_state"])
        sched.load_state_dict(ckpt["scheduler_state"])
        torch.set_rng_state(ckpt["rng_state"])
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
        _save(
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

    bar = progress_bar(
        cfg.epochs * n,
        "train",
        initial=state["epoch"] * n + state["seen"],
        enabled=progress and not state["finished"],
    )
    model.train()
    while not state["finished"]:
        epoch = state["epoch"]
        perm = torch.randperm(
            n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, 2, epoch))
        )
        t0 = time.time() - state.get("epoch_seconds", 0.0)  # time already spent on this epoch
        while state["step"] < steps_per_epoch:
            step = state["step"]
            pos = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size].to(device)
            xb, yb = x_tr[pos], y_tr[pos]
            if cfg.augment:
                gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 3, epoch, step))
                xb = random_crop_flip(xb, pad_value, gen)
            logits = model(xb)
            if logits.ndim != 2 or logits.shape != (len(pos), model.num_classes):
                raise LpntkError(
                    f"the model returned shape {tuple(logits.shape)}; expected "
                    f"logits of shape (batch, {model.num_classes})"
                )
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
            state["step"] += 1
            state["global_step"] += 1
            bar.update(len(pos))
            if stop_after_steps is not None and state["global_step"] >= stop_after_steps:
                checkpoint()
                bar.close()
                raise KeyboardInterrupt(f"stopped after {stop_after_steps} steps (checkpointed)")
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
            _save({**meta, "model_state": model.state_dict(), "metrics": row}, best_path)
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


def _uses_dropout(model: nn.Module) -> bool:
    """Whether the model draws random numbers in training mode (dropout layers)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def _comparable(meta: dict) -> dict:
    """The settings that must match to resume (as JSON sees them; checkpointing may change)."""
    meta = json.loads(json.dumps(meta))
    meta["config"].pop("checkpoint_every", None)
    return meta


def _open_logs(out_dir: Path, cfg: TrainConfig, train_set: ArrayDataset, fresh: bool) -> dict:
    """Per-sample logs as memory-mapped ``(epochs, N)`` arrays: bounded memory, survive a crash.
    A fresh run starts new logs; a resumed one reopens them."""
    d = out_dir / "per_sample"
    d.mkdir(exist_ok=True)
    shape = (cfg.epochs, len(train_set))
    specs = {"loss": (np.float32, np.nan), "correct": (np.int8, -1), "step": (np.int64, -1)}
    logs = {}
    for name, (dtype, fill) in specs.items():
        path = d / f"{name}.npy"
        if not fresh and path.exists():
            logs[name] = np.load(path, mmap_mode="r+")
            if logs[name].shape != shape:
                raise ConfigError(
                    f"{path} has shape {logs[name].shape}, expected {shape}; "
                    f"delete {out_dir / 'last.pt'} to start again"
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
        train_full = train_full.filter_classes(cfg.classes)
        test = test.filter_classes(cfg.classes)
    train_set, val_set = train_val_split(train_full, cfg.val_fraction, seed=cfg.seed)
    if cfg.train_size is not None:
        train_set = stratified_subset(train_set, cfg.train_size, seed=cfg.seed)
    return train_set, val_set, test


def run_training(
    cfg: TrainConfig, out_dir, data_dir=None, device="auto", progress=True, train_indices=None
) -> TrainResult:
    """Load the data ``cfg`` names, build the model, and :func:`train` it.

    ``train_indices``: optionally train only on these original-dataset indices (a pruned set).
    """
    cfg.validate()
    train_set, val_set, test = prepare_data(cfg, data_dir)
    if train_indices is not None:  # every index must be a training sample of this split
        train_set = train_set.subset(np.sort(train_set.positions_of(train_indices)))
    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = build_model(
        cfg.model, train_set.input_shape, train_set.num_classes, **cfg.model_options
    )
    return train(model, train_set, val_set, test, cfg, out_dir, device=device, progress=progress)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model saved in ``best.pt`` (or a run folder holding one); returns
    ``(model in eval mode, checkpoint dict)``."""
    path = Path(path)
    if path.is_dir():  # a training run's folder: its best-validation checkpoint
        path = path / "best.pt"
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=resolve_device(device), weights_only=False)
    except Exception as e:
        raise ConfigError(
            f"checkpoint {path} could not be read ({e}); expected a best.pt written by lpntk train"
        ) from e
    if "model_state" not in ckpt or "model" not in ckpt:
        raise ConfigError(
            f"{path} is not an lpntk model checkpoint (expected best.pt from lpntk train)"
        )
    model = build_model(
        ckpt["model"], ckpt["input_shape"], ckpt["num_classes"], **ckpt["model_options"]
    )
    model.load_state_dict(ckpt["model_state"])
    model.to(resolve_device(device)).eval()
    return model, ckpt


def summary(result: TrainResult) -> str:
    test = f", test accuracy {result.test_acc:.4f}" if result.test_acc is not None else ""
    return (
        f"best validation accuracy {result.best_val_acc:.4f} at epoch {result.best_epoch}{test}\n"
        f"checkpoint: {result.best_checkpoint}\nmetrics:    {result.out_dir / 'metrics.json'}"
    )


__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "run_training",
    "prepare_data",
    "evaluate",
    "load_checkpoint",
    "derive_seed",
    "summary",
]
