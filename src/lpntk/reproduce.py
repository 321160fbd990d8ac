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
from ._io import atomic_path, output_folder, read_json, write_json
from ._version import __version__
from .compare import FULL, compare_training
from .data import load_dataset
from .training import TrainConfig, prepare_data, train_seeds

CLAIMS = ("theorem1", "fig1", "table1", "clusters", "fig2", "fig3", "fig7", "strategies")
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
) -> Setup:
    """The paper's configuration for ``dataset`` (``mnist``, ``cifar10`` or a folder of IDX
    files) and ``model`` (default: LeNet-5, or ResNet-18 on CIFAR-10). ``reduced``: a CIFAR-10
    configuration that runs on a CPU (``REDUCED``: 2,000 training and 2,000 test images, ResNet-18
    of width 8, 10 epochs, a smaller Table 1 window);
    ``train_size`` / ``epochs`` override the training set's size and the number of epochs;
    ``proj_dim`` makes the kernel claims approximate, from features randomly projected to that
    many dimensions (exact features of the paper's ResNet-18 take 44 MB a sample)."""
    cifar = dataset == "cifar10"
    if reduced and not cifar:
        raise ConfigError("the reduced configuration is CIFAR-10's", param="reduced")
    model = model or ("resnet18" if cifar else "lenet5")
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
    name = f"{short}-{model}" + ("-reduced" if reduced else "")
    if proj_dim is not None and (not isinstance(proj_dim, int) or proj_dim < 1):
        raise ConfigError(f"expected an integer >= 1; got {proj_dim!r}", param="proj_dim")
    if proj_dim is not None:
        name += f"-proj{proj_dim}"
    s = Setup(name=name, train=train, table1=table1, reduced=reduced, proj_dim=proj_dim)
    if reduced:  # plain SGD at 5e-4 leaves ResNet-18 at chance on a CPU's budget: the window
        # starts from the reduced training instead, and steps at the paper's 5e-4
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
            features_dir=self.root / "analysis" / "features",
            proj_dim=self.setup.proj_dim,
            **self.options,
        )

    def pruned(self, name: str, strategy: str, **options) -> np.ndarray:
        """The kept indices of pruned set ``name`` (``pruned/<name>/``), made when missing."""
        from .analysis_stage import prune_checkpoint
        from .pipeline import stage_done

        folder, ckpt = self.root / "pruned" / name, self.checkpoint
        record = folder / "manifest.json"
        done = stage_done(record, ckpt) if strategy == "random" else self._kernel_stage(record)
        if done is None:
            kind = options.get("kind", "lpntk")
            store = self.root / "analysis" / ("features" if kind == "lpntk" else f"features_{kind}")
            if strategy != "random":
                options["proj_dim"] = self.setup.proj_dim
            prune_checkpoint(ckpt, folder, strategy, features_dir=store, **options, **self.options)
        return np.load(folder / "kept.npy")

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
        return np.load(folder / "kept.npy")

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
        return len(prepare_data(self.setup.train, self.data_dir)[0])

    # --- running claims ------------------------------------------------------------------
    def run(self, claim: str, seeds: int | None = None) -> dict:
        """Run ``claim`` and return its results; ``all``: every claim, a dict of their results,
        where a claim that fails (too few samples for a budget, say) holds ``{"error": message}``
        and the others still run."""
        if claim == "all":
            results = {}
            for c in CLAIMS:
                try:
                    results[c] = self.run(c, seeds)
                except LpntkError as e:
                    results[c] = {"claim": c, "error": str(e)}
            return results
        if claim not in CLAIMS:
            raise ConfigError(
                f"unknown claim {claim!r}; expected one of {', '.join(CLAIMS)}, all", param="claim"
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
        dataset = self.setup.train.dataset
        paper = PAPER.get(claim, {})
        result = {
            "claim": claim,
            "dataset": dataset,
            "model": self.setup.train.model,
            "reduced": self.setup.reduced,
            "proj_dim": self.setup.proj_dim,
            "seeds": n,
            "table": table,
            "paper": paper.get(dataset, paper.get("any")),
            "details": details,
            "setup": self.setup.to_dict(),
            "setup_key": self.setup.key(),
            "seconds": round(time.time() - t0, 1),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            **_environment(self.options["device"]),
        }
        with atomic_path(out / "table.md") as tmp:
            tmp.write_text(f"# {claim}: {self.setup.name}, {n} seeds\n\n" + _table_md(table))
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
        return rows, r

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
        return rows, r

    def _table1(self, out: Path, n: int):
        from .prediction import VARIANTS, forgetting_prediction

        shared = self.setup.table1 == self.setup.train  # the reduced setting: no runs of its own
        r = forgetting_prediction(
            self.setup.table1,
            range(n),
            out_dir=out,
            runs_dir=self.root / "compare" / FULL if shared else None,
            **self.setup.window,
            **self.options,
        )
        rows = [
            {
                "predictor": v,
                **{m: _pm(r[v].get(m), n) for m in ("precision", "recall", "f1")},
                "pooled F1": r[v]["pooled"]["f1"],
            }
            for v in VARIANTS
        ]
        if r.get("paper"):
            rows.append(
                {
                    "predictor": "paper, lpNTK",
                    **{m: f"{a:.2f} +- {b:.2f} %" for m, (a, b) in r["paper"].items()},
                }
            )
        return rows, r

    def _clusters(self, out: Path, n: int):
        from .dynamics import write_dynamics

        a = self.analysis()
        stats = json.loads((self.root / "analysis" / "clusters.json").read_text())
        shutil.copyfile(self.root / "analysis" / "cluster_sizes.png", out / "cluster_sizes.png")
        d = write_dynamics(
            self.full_runs(range(n)),
            out / "dynamics",
            self.root / "analysis" / "per_sample.csv",
            data_dir=self.data_dir,
        )
        easy = d["easy_in_largest_cluster"]
        rows = [
            {"quantity": "samples", "value": a["n"]},
            {"quantity": "clusters (M)", "value": stats["clusters"]},
            {"quantity": "largest cluster's share", "value": stats["largest_share"]},
            {"quantity": "clusters of more than one sample", "value": stats["more_than_one"]},
            {"quantity": "singletons", "value": stats["singletons"]},
            {"quantity": "10% easiest in the largest cluster", "value": easy["share_in_largest"]},
            {"quantity": "expected by chance", "value": easy["expected_share"]},
            {"quantity": "permutation p-value", "value": easy["p_value"]},
        ]
        return rows, {"clusters": stats, "easy_in_largest_cluster": easy, "analysis": a}

    def _compare_rows(self, c, sizes: dict) -> list:
        rows = []
        for row in c.summary:
            rows.append(
                {
                    "training set": row["subset"],
                    "kept": sizes.get(row["subset"], "all"),
                    "test accuracy": f"{row['mean']:.4f} +- {row['std']:.4f}",
                    "t (Student)": row.get("student_t"),
                    "p (Student)": row.get("student_p"),
                    "p (Welch)": row.get("welch_p"),
                }
            )
        return rows

    def _comparison(self, out: Path, n: int, sets: dict):
        c = self.compare(sets, range(n), out)
        sizes = {k: len(v) for k, v in sets.items()}
        details = {
            "summary": c.summary,
            "runs": c.runs,
            "kept": sizes,
            "test_acc_per_epoch": {k: v.tolist() for k, v in c.curves.items()},
        }
        return self._compare_rows(c, sizes), details

    def _fig2(self, out: Path, n: int):
        sets = {
            "redundant_lpntk": self.pruned("redundant_lpntk", "redundant", rule="cover"),
            "redundant_pntk": self.pruned("redundant_pntk", "redundant", rule="cover", kind="pntk"),
        }
        return self._comparison(out, n, sets)

    def _fig3(self, out: Path, n: int):
        sets = {
            "redundant_head": self.pruned(
                "redundant_head", "redundant_head", fraction=0.1, clusters=self.setup.clusters
            )
        }
        return self._comparison(out, n, sets)

    def _fig7(self, out: Path, n: int):
        sets = {}
        for b in self.setup.fig7_budgets:
            head = self.pruned(f"head_{b:g}", "head_budget", budget=b, clusters=self.setup.clusters)
            sets[f"head_{b:g}"] = head
            sets[f"random_{b:g}"] = self.pruned(f"random_{b:g}", "random", size=len(head))
        return self._comparison(out, n, sets)

    def _strategies(self, out: Path, n: int):
        total = self.n_train()
        sets, impossible = {}, {}
        for b in self.setup.budgets:
            size = int(round(b * total))
            makers = {
                f"lpntk_{b:g}": lambda s=size, b=b: self.pruned(
                    f"lpntk_{b:g}", "redundant", rule="cover", size=s
                ),
                f"pntk_{b:g}": lambda s=size, b=b: self.pruned(
                    f"pntk_{b:g}", "redundant", rule="cover", size=s, kind="pntk"
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
        return rows, details
