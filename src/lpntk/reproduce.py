"""One command per claim of the paper: ``lpntk reproduce CLAIM --dataset D``.

Claims (``CLAIMS``):

- ``fig1``: learning difficulty on the whole set against on subsets (Sec. 3.2, Fig. 1);
- ``table1``: predicting forgetting events (Sec. 3.3, Table 1);
- ``clusters``: the farthest-point cluster sizes (M = 10% of N) and the share of the 10% easiest
  samples in the largest cluster against chance (Sec. 3.4);
- ``fig2``: full set against redundant samples removed by lpNTK and by pNTK (Sec. 4.2);
- ``fig3``: full set against redundant samples and 10% of the largest cluster removed (Sec. 4.3);
- ``fig7``: budgets of 1% and 5%, random against drawn from the largest cluster (App. E);
- ``theorem1``: the gap between lpNTK x I and the eNTK against the last layer's width;
- ``strategies`` (beyond the paper): at 90%, 80% and 50% kept, lpNTK pruning (most redundant
  first) against pNTK, EL2N, forgetting counts and random.

``all`` runs them in that order. Every claim writes ``OUT/CLAIM/results.json`` (the numbers, the
paper's where it gives them, the settings, seeds, software versions, machine and wall time),
``table.md`` and PNG plots. What claims share is computed once in ``OUT``, and every stage resumes:
``compare/<set>/seed_<s>/`` the training runs (``compare/full`` the full set's, with per-sample
logs: also the forgetting counts and difficulty), ``analysis/`` the seed-0 model's lpNTK store,
redundancy, relationships and clusters, ``pruned/<set>/`` the pruned sets, ``el2n/`` the EL2N
scoring runs. The default ``OUT`` holds a hash of the whole setup, so other settings never reuse
these results.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ._device import resolve_device
from ._errors import ConfigError, LpntkError
from ._io import atomic_path, output_folder, read_csv, read_json, read_npy, write_json
from ._progress import Stages
from ._version import __version__
from .compare import FULL, compare_training
from .data import load_dataset
from .training import TrainConfig, prepare_data, train_seeds
from .verdicts import ALPHA, Check, headline, judge_comparison, judge_simple, pivot

CLAIMS = ("theorem1", "fig1", "table1", "clusters", "fig2", "fig3", "fig7", "strategies")
PROTOCOL = {  # what each claim runs, beside the setting (see Reproduction.protocol)
    "table1": {
        "predictor": "eNTK (the paper's, as revised); also eNTK x softmax Jacobian (the public "
        "code's), lpNTK x I and pNTK x I (the withdrawn claim, beyond the paper)",
        "windows": "plain SGD over fixed tracked samples (the paper's text); SGD momentum 0.9 "
        "at 1e-3 over each step's previous batch (the public code)",
    },
    "clusters": {
        "readings": "per class, M = 10% of each class (faithful); whole set (variant)",
        "difficulty": "training loss summed over epochs, mean over the full set's runs",
        "chance": "the heads' share of all samples; exact hypergeometric p-value",
    },
    "fig2": {
        "readings": "redundancy within class two-sided (faithful); within class one-sided "
        "(the public code); whole set (variant); cover rule",
    },
    "fig3": {
        "readings": "redundant removed within class, then 10% of each class's head (faithful); "
        "50% of each class's head without redundancy removal (the public code); whole set",
    },
    "fig7": {
        "readings": "budgets from the union of the classes' heads, balanced per class "
        "(faithful); from the whole set's largest cluster (variant); random of the same size",
    },
    "strategies": {"redundancy": "budgeted cover, most redundant first"},
}
SEEDS = {  # the paper's number of runs where it gives one
    "fig1": 3,
    "table1": 10,
    "clusters": 3,
    "fig2": 10,
    "fig3": 10,
    "fig7": 10,
    "theorem1": 3,
    "strategies": 5,
}
# The reduced CIFAR-10 configuration: 2,000 training images (a stratified draw from the 45,000
# left by the usual 5,000-image validation split), 2,000 test images, ResNet-18 of width 8 (176k
# parameters), 10 epochs; Table 1's window tracks 256 samples
# over 10 plain SGD steps of 5e-4 taken after the reduced training (its own optimiser, not the
# paper's plain SGD at 5e-4, which leaves the model at chance within a CPU's budget).
REDUCED = {
    "train_size": 2000,
    "test_size": 2000,
    "width": 8,
    "epochs": 10,
    "window": {"iterations": 10, "tracked": 256, "window_lr": 5e-4},
}
# The paper's public code's MNIST setting (its network and recipe; Shawn-Guo-CN/lpNTK, read for
# the protocol): the 1.2M-parameter CNN it calls LeNet, SGD lr 0.1, momentum 0.9, weight decay
# 5e-4, batch 128, StepLR every 2 epochs by 0.7, 30 epochs, no augmentation. Our validation split
# chooses every checkpoint (the code chooses on the test set). Reduced: 10,000 training images
# and 6 epochs, sized for 2 CPU cores, always labelled reduced.
PUBLIC = {
    "model": "mnist_cnn",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "batch_size": 128,
    "schedule": "step",
    "step_size": 2,
    "gamma": 0.7,
    "epochs": 30,
}
PUBLIC_REDUCED = {"train_size": 10000, "epochs": 6}
# The reduced public setting's Table 1 windows: 10 steps, 256 tracked samples (the 1.2M CNN's
# matrix-free window costs about 30 times LeNet-5's per step)
PUBLIC_REDUCED_WINDOW = {"iterations": 10, "tracked": 256}
SETTINGS = ("paper", "public")
PUBLIC_WINDOW_LR = {"mnist": 1e-3, "cifar10": 5e-4}  # the public code's forgetting windows
WINDOWS = {
    "plain": "plain SGD steps, fixed tracked samples (the paper's text)",
    "public": "SGD momentum 0.9, weight decay 5e-4, warm buffer, the previous batch (the public "
    "code)",
}
# The order in which ``all`` runs the claims: those that share the full set's runs and the
# seed-0 kernel first, then those that train networks of their own.
ORDER = ("clusters", "fig2", "fig3", "fig7", "theorem1", "fig1", "table1", "strategies")
# The claims that train the setting's network; theorem1 and fig1 train their own MLPs on the
# dataset, the same in every setting, so the public setting leaves them to the paper's.
SETTING_CLAIMS = {
    "paper": CLAIMS,
    "public": tuple(c for c in CLAIMS if c not in ("theorem1", "fig1")),
}
PREDICTORS = {
    "entk": "eNTK (the paper's predictor, as revised)",
    "entk_softmax": "eNTK x softmax Jacobian (the public code's)",
    "lpntk": "lpNTK x I (the withdrawn claim; beyond the paper)",
    "pntk": "pNTK x I (beyond the paper)",
    "margin": "smallest margins, as many as lpNTK flags (baseline)",
    "margin_oracle": "smallest margins, told the true count (baseline)",
}
F1_BAR = {"mnist": 0.8996 - 2 * 0.0710, "cifar10": 0.9787 - 2 * 0.0208}  # Table 1: mean - 2 std
CLUSTER_READINGS = {
    True: "per class, M = 10% of each class (the public code)",
    False: "whole set, M = 10% of N (the paper's text read literally)",
}
FIG7_READINGS = {
    True: "the classes' own heads, balanced per class, against random (the public code's clusters)",
    "balanced": "the classes' own heads against a class-balanced random draw (like for like)",
    False: "the whole set's largest cluster against random (the paper's text read literally)",
}
PAPER = {
    "fig2": {
        "mnist": "lpNTK: t(19) = 0.293, p = 0.774 (no difference); pNTK: t(19) = 13.718, p << 0.01",
        "cifar10": "lpNTK: t(19) = 1.562, p = 0.153; pNTK: t(19) = 26.252, p << 0.01",
    },
    "fig3": {
        "mnist": "pruned better than full: t(19) = -3.205, p = 0.005",
        "cifar10": "pruned better than full: t(19) = -3.996, p = 0.003",
    },
    "clusters": {
        "mnist": "most samples in the largest cluster, 5-20 more clusters of more than one sample, "
        "the rest singletons; 72% of the 10% easiest in the largest cluster",
        "cifar10": "as MNIST; 80% of the 10% easiest in the largest cluster",
    },
    "table1": {
        "mnist": "lpNTK: precision 95.56 +- 8.14%, recall 86.67 +- 13.67%, F1 89.96 +- 7.10%; "
        "more than 5,000 events",
        "cifar10": "lpNTK: precision 96.99 +- 3.99%, recall 98.99 +- 1.61%, F1 97.87 +- 2.08%",
    },
    "fig7": {"any": "sampling from the largest cluster beats random at 1% and 5% (a plot only)"},
    "fig1": {"any": "rho falls as the subsets get smaller (a plot only)"},
    "theorem1": {"any": "||kappa I - K||_F / sqrt(w) in O(w^-1/2)"},
}
QUESTIONS = {  # the question each claim answers, for the report's opening table
    "theorem1": "Does lpNTK x I approach the eNTK as the last layer widens (Theorem 1)?",
    "fig1": "Is learning difficulty on a subset like that on the whole set (Fig. 1)?",
    "table1": "Does the first-order prediction find the forgetting events (Table 1)?",
    "clusters": "Do most samples fall in one cluster, with the easiest among them (Sec. 3.4)?",
    "fig2": "Does removing redundant samples keep the test accuracy, for lpNTK not pNTK (Fig. 2)?",
    "fig3": "Does removing redundant samples and part of the largest cluster improve it (Fig. 3)?",
    "fig7": "At a budget of 1% or 5%, does the largest cluster beat random (Fig. 7)?",
    "strategies": "How does lpNTK pruning compare with pNTK, EL2N, forgetting and random?",
}


def paper_says(claim: str, dataset: str) -> str | None:
    """The paper's number for ``claim`` on ``dataset``; for a dataset the paper did not use,
    its numbers on the datasets it did, each named."""
    paper = PAPER.get(claim, {})
    if dataset in paper or "any" in paper:
        return paper.get(dataset, paper.get("any"))
    names = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
    return "; ".join(f"on {names.get(k, k)}: {v}" for k, v in paper.items()) or None


@dataclass
class Setup:
    """Everything a reproduction depends on. ``train``: the full-set runs (per-sample logs on);
    ``table1``: the runs the forgetting prediction's windows start from (the paper: plain SGD at
    5e-4; the reduced setting: ``train`` itself, whose runs are then shared); ``window``: the
    window's settings; the other dicts: each claim's own parameters."""

    name: str
    train: TrainConfig
    table1: TrainConfig
    reduced: bool = False
    proj_dim: int | None = None  # the kernel claims from randomly projected features
    setting: str = "paper"  # or "public": the public code's network and recipe
    # the protocol (PROTOCOL): clusters made within each class (the public code), redundancy
    # searched within each class (App. E.1), both sides (the paper's definition)
    per_class: bool = True
    within_class: bool = True
    whole_set_readings: bool = True  # also train the whole-set variants of fig2, fig3, fig7
    clusters: float = 0.1
    fig1: dict = field(
        default_factory=lambda: {
            "classes": 4,
            "per_class": 500,
            "sizes": [1, 5, 10, 40, 200, 1000],
            "epochs": 100,
            "lr": 0.1,
            "widths": [256, 128],
        }
    )
    window: dict = field(default_factory=lambda: {"iterations": 30, "tracked": 1280})
    theorem1: dict = field(
        default_factory=lambda: {"widths": [64, 256, 1024, 4096], "pairs": 100, "hidden": 512}
    )
    fig7_budgets: tuple = (0.01, 0.05)
    budgets: tuple = (0.9, 0.8, 0.5)
    el2n: dict = field(default_factory=lambda: {"seeds": 5, "epochs": 2})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"], d["table1"] = self.train.to_dict(), self.table1.to_dict()
        if d["proj_dim"] is None:  # exact, as older settings were
            del d["proj_dim"]
        if d["whole_set_readings"]:  # the default keeps the settings key
            del d["whole_set_readings"]
        return json.loads(json.dumps(d))  # tuples as lists, as read back

    def key(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def setup(
    dataset: str = "mnist",
    model: str | None = None,
    reduced: bool = False,
    train_size: int | None = None,
    epochs: int | None = None,
    proj_dim: int | None = None,
    setting: str = "paper",
) -> Setup:
    """The paper's configuration for ``dataset`` (``mnist``, ``cifar10`` or a folder of IDX
    files) and ``model`` (default: LeNet-5, or ResNet-18 on CIFAR-10). ``setting``: ``paper``
    (the paper's text) or ``public`` (the paper's public code's network and recipe, ``PUBLIC``;
    MNIST-format data only). ``reduced``: a configuration that runs on a CPU: CIFAR-10's
    (``REDUCED``: 2,000 training and 2,000 test images, ResNet-18 of width 8, 10 epochs, a smaller
    Table 1 window) or the public setting's (``PUBLIC_REDUCED``: 10,000 training images, 6
    epochs); ``train_size`` / ``epochs`` override the training set's size and the number of
    epochs; ``proj_dim`` makes the kernel claims approximate, from features randomly projected to
    that many dimensions (exact features of the paper's ResNet-18 take 44 MB a sample)."""
    cifar = dataset == "cifar10"
    if setting not in SETTINGS:
        raise ConfigError(
            f"unknown setting {setting!r}; expected one of {', '.join(SETTINGS)}", param="setting"
        )
    public = setting == "public"
    if public and cifar:
        raise ConfigError("the public code's setting is MNIST's", param="setting")
    if reduced and not (cifar or public):
        raise ConfigError(
            "the reduced configurations are CIFAR-10's and the public setting's", param="reduced"
        )
    if public and model not in (None, PUBLIC["model"]):
        raise ConfigError(f"the public setting's network is {PUBLIC['model']}", param="model")
    model = model or ("resnet18" if cifar else PUBLIC["model"] if public else "lenet5")
    if cifar:  # the paper's settings; it gives no number of epochs (ours: 100)
        train = TrainConfig(
            dataset=dataset,
            model=model,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            batch_size=128,
            schedule="cosine",
            augment=True,
            epochs=100,
        )
        if reduced:  # REDUCED: sized for 2 CPU cores, never the paper's setting
            options = {"width": REDUCED["width"]} if model == "resnet18" else {}
            train = dataclasses.replace(
                train,
                train_size=REDUCED["train_size"],
                test_size=REDUCED["test_size"],
                epochs=REDUCED["epochs"],
                model_options=options,
            )
    elif public:
        train = TrainConfig(dataset=dataset, **PUBLIC)
        if reduced:
            train = dataclasses.replace(train, **PUBLIC_REDUCED)
    else:
        train = TrainConfig(dataset=dataset, model=model)
    table1_epochs = 20
    if train_size is not None:
        train = dataclasses.replace(train, train_size=train_size)
    if epochs is not None:
        train = dataclasses.replace(train, epochs=epochs)
        table1_epochs = epochs
    train = dataclasses.replace(train, log_per_sample=True).with_fixed_split()
    table1 = dataclasses.replace(
        train,
        optimizer="sgd",
        lr=5e-4,
        momentum=0.0,
        weight_decay=0.0,
        schedule="none",
        augment=False,
        epochs=table1_epochs,
        log_per_sample=False,
    )
    train.validate()
    table1.validate()
    short = Path(dataset).name if dataset not in ("mnist", "cifar10") else dataset
    name = f"{short}-{model}" + ("-public" if public else "") + ("-reduced" if reduced else "")
    if proj_dim is not None and (not isinstance(proj_dim, int) or proj_dim < 1):
        raise ConfigError(f"expected an integer >= 1; got {proj_dim!r}", param="proj_dim")
    if proj_dim is not None:
        name += f"-proj{proj_dim}"
    s = Setup(
        name=name, train=train, table1=table1, reduced=reduced, proj_dim=proj_dim, setting=setting
    )
    if public:  # the public code's window starts from its own training, at its own step size
        s.table1 = train
        s.window = {**s.window, "window_lr": PUBLIC_WINDOW_LR["mnist"]}
    if public and reduced:  # sized for 2 cores: the whole-set readings run on LeNet-5 only
        s.whole_set_readings = False
        s.window.update(PUBLIC_REDUCED_WINDOW)
    if reduced and cifar:  # plain SGD at 5e-4 leaves ResNet-18 at chance on a CPU's budget:
        # the window starts from the reduced training instead, and steps at the paper's 5e-4
        s.table1 = train
        s.window = dict(REDUCED["window"])
    return s


def _environment(device) -> dict:
    import scipy
    import torch

    dev = resolve_device(device)
    return {
        "versions": {
            "lpntk": __version__,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "device": str(dev)
            + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        },
    }


def _table_md(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    from .report import cell

    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _pm(stat: dict | None, seeds: int) -> str:
    """mean +- std, and on how many of the ``seeds`` when the value is undefined on others."""
    if not stat:
        return "undefined"
    std = "" if stat["std"] is None else f" +- {stat['std']:.4f}"
    part = f" ({stat['seeds']} of {seeds} seeds)" if stat["seeds"] < seeds else ""
    return f"{stat['mean']:.4f}{std}{part}"


class Reproduction:
    """The claims of one :class:`Setup` in ``out_dir``; see the module doc."""

    def __init__(self, s: Setup, out_dir=None, data_dir=None, device="auto", progress=True):
        self.setup = s
        self.root = output_folder(out_dir or Path("runs") / "reproduce" / f"{s.name}-{s.key()}")
        self.options = {"data_dir": data_dir, "device": device, "progress": progress}
        self.data_dir = data_dir
        self._kernels: dict = {}

    def describe(self) -> str:
        """The setting in words, for verdicts."""
        t = self.setup.train
        size = f"{t.train_size:,} training images" if t.train_size else "the full training split"
        kind = {"paper": "the paper's setting", "public": "the public code's network and recipe"}
        text = f"{Path(t.dataset).name}, {t.model}, {kind[self.setup.setting]}, {size}, "
        text += f"{t.epochs} epoch" + ("" if t.epochs == 1 else "s")
        if self.setup.reduced:
            text += ", reduced"
        if self.setup.proj_dim:
            text += f", features projected to {self.setup.proj_dim} dimensions (approximate)"
        return text

    def protocol(self, claim: str) -> dict:
        """The protocol choices a claim's results rest on (recorded in its results.json)."""
        from .compare import RULES
        from .verdicts import TESTS

        t = self.setup.train
        out = {
            "setting": self.setup.setting,
            "recipe": {
                k: getattr(t, k)
                for k in (
                    "model",
                    "optimizer",
                    "lr",
                    "momentum",
                    "weight_decay",
                    "schedule",
                    "epochs",
                    "batch_size",
                    "train_size",
                )
            },
            "checkpoint": "best validation accuracy (the test set is never used to choose)",
            "kernel": "exact" if not self.setup.proj_dim else f"projected to {self.setup.proj_dim}",
        }
        out.update(PROTOCOL.get(claim, {}))
        if claim in ("fig2", "fig3", "fig7", "strategies"):
            out["accuracy_rules"] = list(RULES)
            out["tests"] = list(TESTS)
            out["judged_with"] = "best_val rule, Welch's test, alpha 0.05"
        if claim in ("clusters", "fig3", "fig7"):
            out["clusters"] = {"m": self.setup.clusters, "per_class_default": self.setup.per_class}
        if claim in ("fig2", "fig3", "strategies", "clusters"):
            out["redundancy_within_class_default"] = self.setup.within_class
        return out

    # --- shared stages -------------------------------------------------------------------
    def full_runs(self, seeds) -> list[Path]:
        """The full set's runs (per-sample logs), shared by every claim that needs them."""
        return list(
            train_seeds(self.setup.train, seeds, self.root / "compare" / FULL, **self.options)
        )

    @functools.cached_property
    def checkpoint(self) -> Path:
        """The seed-0 full-set model, which the kernel claims analyse."""
        return self.full_runs([0])[0] / "best.pt"

    def _kernel_stage(self, record: Path) -> dict | None:
        """A kernel stage's finished record for this checkpoint, refused when it was made with
        another ``proj_dim`` (a folder given twice with other settings)."""
        from .pipeline import stage_done

        done = stage_done(record, self.checkpoint)
        if done is not None and done.get("proj_dim") != self.setup.proj_dim:
            raise ConfigError(
                f"{record.parent} was made with proj_dim {done.get('proj_dim')}, not "
                f"{self.setup.proj_dim}; choose another output folder",
                param="out_dir",
            )
        return done

    def analysis(self) -> dict:
        from .analysis_stage import analyze_checkpoint

        ckpt = self.checkpoint
        done = self._kernel_stage(self.root / "analysis" / "summary.json")
        if done is not None:
            return done
        return analyze_checkpoint(
            ckpt,
            self.root / "analysis",
            clusters=self.setup.clusters,
            per_class=self.setup.per_class,
            within_class=self.setup.within_class,
            features_dir=self.root / "analysis" / "features",
            proj_dim=self.setup.proj_dim,
            **self.options,
        )

    def kernel(self, kind: str = "lpntk"):
        """The seed-0 model's ``kind`` SampleKernel (store ``analysis/features`` for lpNTK,
        ``analysis/features_<kind>`` else), opened once: its redundancy searches and
        clusterings are shared by every pruned set and budget."""
        from .analysis_stage import _kernel

        if kind not in self._kernels:
            store = self.root / "analysis" / ("features" if kind == "lpntk" else f"features_{kind}")
            self._kernels[kind] = _kernel(
                self.checkpoint,
                store,
                "train",
                None,
                self.data_dir,
                self.options["progress"],
                kind,
                self.options["device"],
                self.setup.proj_dim,
            )[0]
        return self._kernels[kind]

    @functools.cached_property
    def train_set(self):
        return prepare_data(self.setup.train, self.data_dir)[0]

    def classes_in(self, kept) -> int:
        """How many classes the training samples ``kept`` (original indices) hold."""
        t = self.train_set
        return len(np.unique(t.labels[t.positions_of(np.asarray(kept))]))

    def pruned(self, name: str, strategy: str, kind: str = "lpntk", **options) -> np.ndarray:
        """The kept indices of pruned set ``name`` (``pruned/<name>/``), made when missing by
        ``strategy`` with ``options`` (those of :mod:`lpntk.prune`; ``random`` also takes
        ``balanced=True``, per class) from the ``kind`` kernel; a finished set made with other
        options is refused."""
        from .analysis_stage import checkpoint_sha256
        from .pipeline import stage_done
        from .prune import random_subset, write_pruned

        folder, ckpt = self.root / "pruned" / name, self.checkpoint
        record = folder / "manifest.json"
        done = stage_done(record, ckpt) if strategy == "random" else self._kernel_stage(record)
        made_by = {"strategy": strategy, "kind": kind, **options}
        if done is not None and done.get("made_by", made_by) != made_by:
            raise ConfigError(
                f"{folder} was made with {done.get('made_by')}, not {made_by}; choose another "
                "output folder or delete it",
                param="out_dir",
            )
        if done is None:
            if strategy == "random":
                if options.pop("balanced", False):
                    options["labels"] = self.train_set.labels
                pruned = random_subset(self.train_set.indices, **options)
            else:
                pruned = self.kernel(kind).prune(strategy, **options)
                pruned.manifest["proj_dim"] = self.setup.proj_dim
            pruned.manifest.update(
                checkpoint=str(ckpt.resolve()),
                checkpoint_sha256=checkpoint_sha256(ckpt),
                made_by=made_by,
            )
            write_pruned(pruned, folder)  # its manifest last: it marks the set finished
        return read_npy(folder / "kept.npy", "the pruned set", "delete its folder to redo it")

    def scored(self, name: str, score: str, size: int) -> np.ndarray:
        """The ``size`` hardest samples by ``score`` (el2n or forgetting) as pruned set ``name``."""
        from .analysis_stage import checkpoint_sha256, write_scores
        from .pipeline import stage_done
        from .prune import hardest, write_pruned
        from .scores import el2n_scores, forgetting_scores

        folder, ckpt = self.root / "pruned" / name, self.checkpoint
        if stage_done(folder / "manifest.json", ckpt) is None:
            if score == "el2n":
                e = self.setup.el2n
                scores = el2n_scores(
                    self.setup.train,
                    range(e["seeds"]),
                    e["epochs"],
                    out_dir=self.root / "el2n",
                    **self.options,
                )
            else:  # the full set's runs, with their per-sample logs
                scores = forgetting_scores(
                    self.setup.train,
                    range(self.setup.el2n["seeds"]),
                    out_dir=self.root / "compare" / FULL,
                    **self.options,
                )
            pruned = hardest(scores, size)
            pruned.manifest.update(
                checkpoint=str(ckpt.resolve()), checkpoint_sha256=checkpoint_sha256(ckpt)
            )
            write_scores(scores, folder / "scores.csv")
            write_pruned(pruned, folder)  # its manifest last: it marks the set finished
        return read_npy(folder / "kept.npy", "the pruned set", "delete its folder to redo it")

    def compare(self, sets: dict, seeds, claim_dir: Path):
        """Full set against ``sets`` (name -> kept indices), sharing runs in ``compare/``."""
        return compare_training(
            self.setup.train,
            sets,
            seeds,
            self.root / "compare",
            summary_dir=claim_dir,
            **self.options,
        )

    def n_train(self) -> int:
        return len(self.train_set)

    # --- running claims ------------------------------------------------------------------
    def run(self, claim: str, seeds: int | None = None) -> dict:
        """Run ``claim`` and return its results; ``all``: every claim, a dict of their results,
        where a claim that fails (too few samples for a budget, say) holds ``{"error": message}``
        and the others still run."""
        if claim == "all":
            results = {}
            claims = [c for c in ORDER if c in SETTING_CLAIMS[self.setup.setting]]
            stages = Stages(len(claims), enabled=self.options["progress"])
            for c in claims:
                stages.start(f"claim {c}")
                finished = (self.root / c / "results.json").exists()
                try:
                    results[c] = self.run(c, seeds)
                except LpntkError as e:
                    results[c] = {"claim": c, "error": str(e)}
                stages.finish(trained=not finished)
            return results
        if claim not in CLAIMS:
            raise ConfigError(
                f"unknown claim {claim!r}; expected one of {', '.join(CLAIMS)}, all", param="claim"
            )
        if claim not in SETTING_CLAIMS[self.setup.setting]:
            raise ConfigError(
                f"{claim} trains its own networks on the dataset, the same in every setting; "
                "run it with --setting paper",
                param="claim",
            )
        n = SEEDS[claim] if seeds is None else int(seeds)
        low = 2 if claim in ("fig2", "fig3", "fig7", "strategies") else 1
        if n < low:
            raise ConfigError(f"expected at least {low} seeds for {claim}; got {n}", param="seeds")
        out = output_folder(self.root / claim)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "results.json"
        if path.exists():
            try:
                done = read_json(path, "a claim's results", "it is made again")
            except LpntkError:
                done = None
            if done and done.get("setup_key") == self.setup.key() and done.get("seeds") == n:
                return done
        t0 = time.time()
        table, details = getattr(self, f"_{claim}")(out, n)
        judged = {k: details.pop(k) for k in ("verdict", "sensitivity", "checks") if k in details}
        if "verdict" in judged:
            judged["verdict"]["setting"] = self.describe()
        dataset = self.setup.train.dataset
        result = {
            **judged,
            "protocol": self.protocol(claim),
            "claim": claim,
            "dataset": dataset,
            "model": self.setup.train.model,
            "reduced": self.setup.reduced,
            "proj_dim": self.setup.proj_dim,
            "seeds": n,
            "table": table,
            "table_columns": list(dict.fromkeys(k for r in table for k in r)),  # JSON sorts keys
            "question": QUESTIONS[claim],
            "ours": headline(claim, table, judged["verdict"]) if "verdict" in judged else None,
            "paper": paper_says(claim, dataset),
            "details": details,
            "setup": self.setup.to_dict(),
            "setup_key": self.setup.key(),
            "seconds": round(time.time() - t0, 1),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            **_environment(self.options["device"]),
        }
        text = f"# {claim}: {self.setup.name}, {n} seeds\n\n" + _table_md(table)
        if "verdict" in judged:
            v = judged["verdict"]
            text += f"\nVerdict: **{v['verdict']}** ({v.get('reading')}; {v['setting']})\n"
        if "sensitivity" in judged:
            text += "\n## The verdict under each reading\n\n" + _table_md(
                pivot(judged["sensitivity"])
            )
        with atomic_path(out / "table.md") as tmp:
            tmp.write_text(text)
        write_json(path, result)
        return result

    def _theorem1(self, out: Path, n: int):
        from .theorem import theorem1

        t = self.setup.theorem1
        data = load_dataset(self.setup.train.dataset, "train", self.data_dir)
        r = theorem1(
            data,
            t["widths"],
            range(n),
            t["pairs"],
            t["hidden"],
            out_dir=out,
            progress=self.options["progress"],
        )
        rows = [
            {"width": w, "scaled gap": a, "relative gap": b}
            for w, a, b in zip(
                r["widths"], r["scaled_mean_per_width"], r["relative_mean_per_width"], strict=True
            )
        ]
        rows.append(
            {
                "width": "fitted slope",
                "scaled gap": r["scaled_slope"],
                "relative gap": r["relative_slope"],
            }
        )
        readings = {}
        for group, what in (
            ("", "all pairs"),
            ("_same_label", "same-label pairs"),
            ("_other_label", "pairs of other labels"),
        ):
            slope = r.get(f"scaled_slope{group}")
            if slope is not None:
                readings[what] = [
                    (f"slope {slope:.2f} <= -0.5", slope <= -0.5),
                    (f"slope {slope:.2f} < 0", slope < 0),
                ]
        judged = judge_simple(readings)
        judged["verdict"]["test"] = "the fitted log-log slope of Eq. 4's gap against the width"
        return rows, {**r, **judged}

    def _fig1(self, out: Path, n: int):
        from .difficulty import experiment1, per_class_subset

        f = self.setup.fig1
        data = load_dataset(self.setup.train.dataset, "train", self.data_dir)
        data = data.filter_classes(list(range(min(f["classes"], data.num_classes))))
        data = per_class_subset(data, f["per_class"], seed=0)
        r = experiment1(
            data,
            f["sizes"],
            range(n),
            f["epochs"],
            f["lr"],
            f["widths"],
            out_dir=out,
            progress=self.options["progress"],
        )
        rows = [
            {"X": int(k), "rho": v["mean"], **{k2: v[k2] for k2 in v if k2 != "mean"}}
            for k, v in r["rho"].items()
        ]
        rho = [v["mean"] for _, v in sorted(r["rho"].items(), key=lambda kv: -int(kv[0]))]
        judged = judge_simple(
            {
                "rho against subset size X": [
                    ("rho at the smallest X below rho at the largest", rho[-1] < rho[0]),
                    ("rho falls at every smaller X", bool(np.all(np.diff(rho) < 0))),
                ]
            }
        )
        judged["verdict"]["test"] = "the mean rho over split seeds, from the largest X down"
        return rows, {**r, **judged}

    def _table1(self, out: Path, n: int):
        from .prediction import forgetting_prediction

        shared = self.setup.table1 == self.setup.train  # the reduced setting: no runs of its own
        runs_dir = self.root / "compare" / FULL if shared else out
        windows = {}
        for window, regime, lr in (
            ("plain", "plain", self.setup.window.get("window_lr")),
            ("public", "public", PUBLIC_WINDOW_LR[self._paper_key()]),
        ):
            options = {**self.setup.window, "window_lr": lr, "regime": regime}
            windows[window] = forgetting_prediction(
                self.setup.table1,
                range(n),
                out_dir=out if window == "plain" else out / "public_window",
                runs_dir=runs_dir,
                **options,
                **self.options,
            )
        rows, readings = [], {}
        for window, r in windows.items():
            for v in ("entk", "entk_softmax", "lpntk", "pntk", "margin", "margin_oracle"):
                rows.append(
                    {
                        "window": WINDOWS[window],
                        "predictor": PREDICTORS[v],
                        **{m: _pm(r[v].get(m), n) for m in ("precision", "recall", "f1")},
                        "pooled F1": r[v]["pooled"]["f1"],
                        "events": sum(r["events"]),
                    }
                )
                if v in ("entk", "entk_softmax", "lpntk", "pntk"):
                    f1 = r[v].get("f1", {}).get("mean", float("nan"))
                    bar = F1_BAR[self._paper_key()]
                    readings[f"{PREDICTORS[v]}, {WINDOWS[window]}"] = [
                        (
                            f"F1 {f1:.3f} >= {bar:.3f}",
                            bool(f1 >= bar) if np.isfinite(f1) else None,  # no events: untested
                        )
                    ]
        paper = windows["plain"].get("paper")
        if paper:
            rows.append(
                {
                    "window": "the paper",
                    "predictor": "Table 1 (its caption says lpNTK; its text, eNTK)",
                    **{m: f"{a:.2f} +- {b:.2f} %" for m, (a, b) in paper.items()},
                }
            )
        judged = judge_simple(readings)
        judged["verdict"]["test"] = (
            "F1 (mean over seeds) at least the paper's mean - 2 std; the verdict is the eNTK's, "
            "the paper's predictor as revised, in the paper's plain window, where Eq. 1 is exact "
            "to first order (F1 near 1 by construction); the public code's window, whose "
            "momentum and weight decay the prediction ignores, is the real test; lpNTK x I and "
            "pNTK x I test the withdrawn claim"
        )
        return rows, {"plain": windows["plain"], "public_window": windows["public"], **judged}

    def _paper_key(self) -> str:
        return "cifar10" if self.setup.train.dataset == "cifar10" else "mnist"

    def _clusters(self, out: Path, n: int):
        from .analysis import class_cluster_stats, cluster_stats
        from .dynamics import easy_in_largest_cluster, write_dynamics

        a = self.analysis()
        shutil.copyfile(self.root / "analysis" / "cluster_sizes.png", out / "cluster_sizes.png")
        d = write_dynamics(
            self.full_runs(range(n)),
            out / "dynamics",
            self.root / "analysis" / "per_sample.csv",
            data_dir=self.data_dir,
        )
        fix = "delete the dynamics folder to redo it"
        table = read_csv(out / "dynamics" / "per_sample.csv", "the dynamics table", fix)
        difficulty, labels = table["difficulty"].to_numpy(), table["label"].to_numpy()
        sk = self.kernel("lpntk")
        order = np.argsort(sk.features.indices, kind="stable")  # store -> original order
        readings, rows, details = {}, [], {}
        for reading, per_class in (
            (CLUSTER_READINGS[True], True),
            (CLUSTER_READINGS[False], False),
        ):
            c = sk.clusters(self.setup.clusters, "lpntk", per_class)
            cluster = c.cluster[order]
            whole = cluster_stats(c, sk.features.labels)
            easy = easy_in_largest_cluster(
                difficulty, cluster, labels=labels if per_class else None
            )
            per = class_cluster_stats(cluster, labels)
            head = per["head_share_mean"] if per_class else whole["largest_share"]
            others = (
                per["more_than_one_besides_head_median"]
                if per_class
                else whole["more_than_one"] - 1
            )
            rows.append(
                {
                    "reading": reading,
                    "clusters (M)": whole["clusters"],
                    "head's share": head,
                    "heads' share of all": per["heads_share_of_all"] if per_class else head,
                    "clusters of >1 besides the head": others,
                    "singletons": whole["singletons"],
                    "easiest 10% in the head": easy["share_in_largest"],
                    "chance": easy["expected_share"],
                    "p": easy["p_value"],
                }
            )
            readings[reading] = [
                ("most samples in the head", head > 0.5),
                ("5-20 more clusters of more than one sample", 5 <= others <= 20),
                (
                    "the easiest 10% in the head more than by chance",
                    easy["p_value"] < ALPHA,
                ),
            ]
            details[reading] = {"clusters": whole, "per_class": per, "easy": easy}
        judged = judge_simple(readings)
        judged["verdict"]["test"] = (
            "head share > 0.5 (per class: the mean of the classes' own largest clusters), "
            f"5-20 further clusters of more than one sample (per class: the median), and the "
            f"easiest 10% (difficulty over {n} runs) in the head with hypergeometric p < {ALPHA}"
        )
        return rows, {"analysis": a, "dynamics": d, "readings": details, **judged}

    def _compare_rows(self, c, sizes: dict) -> list:
        total = self.n_train()
        rows = []
        for row in c.summary:
            kept = sizes.get(row["subset"])
            rows.append(
                {
                    "training set": row["subset"],
                    "kept": "all" if kept is None else f"{kept} ({kept / total:.1%})",
                    "test accuracy": f"{row['mean']:.4f} +- {row['std']:.4f}",
                    "t (Welch)": row.get("welch_t"),
                    "p (Welch)": row.get("welch_p"),
                    "p (Student)": row.get("student_p"),
                    "p (paired)": row.get("paired_p"),
                }
            )
        return rows

    def _comparison(self, out: Path, n: int, sets: dict, readings: dict | None = None):
        c = self.compare(sets, range(n), out)
        sizes = {k: len(v) for k, v in sets.items()}
        total = self.n_train()
        details = {
            "summary": c.summary,
            "rules": c.rules,
            "runs": c.runs,
            "kept": sizes,
            "test_acc_per_epoch": {k: v.tolist() for k, v in c.curves.items()},
        }
        if readings:
            one_class = {k for k, v in sets.items() if self.classes_in(v) < 2}
            kept = {k: v / total for k, v in sizes.items()}
            details.update(judge_comparison(c.runs, readings, kept, one_class))
        return self._compare_rows(c, sizes), details

    def _fig2(self, out: Path, n: int):
        variants = {  # name -> kind, one_sided, within_class
            "redundant_lpntk": ("lpntk", False, True),
            "redundant_pntk": ("pntk", False, True),
            "redundant_lpntk_one_sided": ("lpntk", True, True),
            "redundant_pntk_one_sided": ("pntk", True, True),
        }
        if self.setup.whole_set_readings:
            variants["redundant_lpntk_whole"] = ("lpntk", False, False)
            variants["redundant_pntk_whole"] = ("pntk", False, False)
        sets = {
            name: self.pruned(
                name, "redundant", kind, rule="cover", one_sided=one, within_class=within
            )
            for name, (kind, one, within) in variants.items()
        }

        def parts(lp, pn):
            return [
                Check("lpNTK-pruned not worse than full", lp, "kept"),
                Check("pNTK-pruned worse than full", pn, "worse"),
            ]

        readings = {
            "within class, two-sided (App. E.1; the paper's definition)": parts(
                "redundant_lpntk", "redundant_pntk"
            ),
            "within class, one-sided (the public code's search)": parts(
                "redundant_lpntk_one_sided", "redundant_pntk_one_sided"
            ),
        }
        if self.setup.whole_set_readings:
            readings["whole set, two-sided (the paper's text read literally)"] = parts(
                "redundant_lpntk_whole", "redundant_pntk_whole"
            )
        return self._comparison(out, n, sets, readings)

    def _fig3(self, out: Path, n: int):
        m = self.setup.clusters
        sets = {
            "redundant_head": self.pruned(
                "redundant_head",
                "redundant_head",
                fraction=0.1,
                clusters=m,
                per_class=True,
                within_class=True,
            ),
            "head_public": self.pruned(
                "head_public",
                "redundant_head",
                fraction=0.5,
                clusters=m,
                per_class=True,
                redundant=False,
            ),
        }
        if self.setup.whole_set_readings:
            sets["redundant_head_whole"] = self.pruned(
                "redundant_head_whole", "redundant_head", fraction=0.1, clusters=m
            )

        def parts(name):
            return [
                Check("pruned not worse than full", name, "kept"),
                Check("pruned better than full", name, "better"),
            ]

        readings = {
            "redundant removed within class, then 10% of each class's head (the paper's text, "
            "the public code's per-class clusters)": parts("redundant_head"),
            "50% of each class's head, redundant samples kept (the public code)": parts(
                "head_public"
            ),
        }
        if self.setup.whole_set_readings:
            readings[
                "whole set: redundant removed, then 10% of the largest cluster (the paper's "
                "text read literally)"
            ] = parts("redundant_head_whole")
        return self._comparison(out, n, sets, readings)

    def _fig7(self, out: Path, n: int):
        m, sets = self.setup.clusters, {}
        kinds = (True, False) if self.setup.whole_set_readings else (True,)
        readings = {FIG7_READINGS[k]: [] for k in (*kinds, "balanced")}
        for b in self.setup.fig7_budgets:
            for per_class in kinds:
                name = f"head_{b:g}" if per_class else f"head_whole_{b:g}"
                sets[name] = self.pruned(
                    name, "head_budget", budget=b, clusters=m, per_class=per_class
                )
                readings[FIG7_READINGS[per_class]].append(
                    Check(f"head beats random at {b:.0%}", name, "better", f"random_{b:g}")
                )
            size = len(sets[f"head_{b:g}"])
            sets[f"random_{b:g}"] = self.pruned(f"random_{b:g}", "random", size=size)
            sets[f"random_balanced_{b:g}"] = self.pruned(
                f"random_balanced_{b:g}", "random", size=size, balanced=True
            )
            readings[FIG7_READINGS["balanced"]].append(
                Check(
                    f"head beats balanced random at {b:.0%}",
                    f"head_{b:g}",
                    "better",
                    f"random_balanced_{b:g}",
                )
            )
        return self._comparison(out, n, sets, readings)

    def _strategies(self, out: Path, n: int):
        total = self.n_train()
        sets, impossible = {}, {}
        within = self.setup.within_class
        for b in self.setup.budgets:
            size = int(round(b * total))
            makers = {
                f"lpntk_{b:g}": lambda s=size, b=b: self.pruned(
                    f"lpntk_{b:g}", "redundant", rule="cover", size=s, within_class=within
                ),
                f"pntk_{b:g}": lambda s=size, b=b: self.pruned(
                    f"pntk_{b:g}", "redundant", "pntk", rule="cover", size=s, within_class=within
                ),
                f"el2n_{b:g}": lambda s=size, b=b: self.scored(f"el2n_{b:g}", "el2n", s),
                f"forgetting_{b:g}": lambda s=size, b=b: self.scored(
                    f"forgetting_{b:g}", "forgetting", s
                ),
                f"random_{b:g}": lambda s=size, b=b: self.pruned(f"random_{b:g}", "random", size=s),
            }
            for name, make in makers.items():
                try:
                    sets[name] = make()
                except ConfigError as e:  # e.g. too few redundant samples for this budget
                    if e.param != "size":
                        raise
                    impossible[name] = e.message
        rows, details = self._comparison(out, n, sets)
        rows += [
            {"training set": k, "kept": "not possible", "test accuracy": v}
            for k, v in impossible.items()
        ]
        details["not_possible"] = impossible
        details["verdict"] = {"verdict": "beyond the paper", "reading": "no claim of the paper"}
        return rows, details
