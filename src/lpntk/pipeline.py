"""The main job (``lpntk demo`` / ``make demo``): the whole analysis of one dataset, stage by stage.

Each stage writes into its own folder under ``out_dir`` and is skipped when its outputs are
complete, so an interrupted run resumes where it stopped:

- ``compare/full/seed_<seed>/``: the classifier whose best-validation checkpoint every later
  stage analyses, trained with ``cfg`` (it is also the full set's run of that seed in the
  comparison, so it is trained once);
- ``analysis/``: its exact lpNTK on the training samples (feature store), redundant samples,
  relationship types, each sample's most and least similar other sample, farthest point
  clustering (M = 10% of N), per-sample table, cluster statistics and image grids;
- ``pruned/redundant/``: the training set without redundant samples (``cover`` rule), and
  ``pruned/random/``: a random subset of the same size;
- ``compare/``: the full and both pruned sets trained from scratch with ``seeds`` seeds
  (``cfg.seed``, ``cfg.seed + 1``, ...), with t-tests against the full set and accuracy curves;
- ``report.html``: all of it on one self-contained page.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ._errors import ConfigError, LpntkError
from ._io import output_folder, read_json, write_json
from ._progress import Stages
from .analysis_stage import (
    analyze_checkpoint,
    checkpoint_sha256,
    compare_checkpoint,
    prune_checkpoint,
)
from .compare import FULL
from .report import build_report
from .training import TrainConfig, run_training, summary


def stage_done(path: Path, checkpoint: Path) -> dict | None:
    """The JSON at ``path`` when a finished stage wrote it for this ``checkpoint`` file (its path
    and its contents; else the stage runs again, also over a damaged file)."""
    try:
        done = read_json(path, "a stage's record", "the stage runs again")
    except LpntkError:
        return None
    ok = (
        isinstance(done, dict)
        and done.get("checkpoint") == str(checkpoint.resolve())
        and done.get("checkpoint_sha256") == checkpoint_sha256(checkpoint)
    )
    return done if ok else None


def run_demo(
    out_dir: str | Path = "runs/demo",
    cfg: TrainConfig | None = None,
    seeds: int = 3,
    data_dir=None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Run every stage of the pipeline on ``cfg.dataset`` and return the summary it writes to
    ``out_dir/summary.json``. ``seeds``: training runs per set in the comparison (>= 2)."""
    if not isinstance(seeds, int) or seeds < 2:  # before hours of work
        raise ConfigError(f"expected at least 2 seeds; got {seeds!r}", param="seeds")
    out_dir = output_folder(out_dir)
    cfg = cfg or TrainConfig()
    t0, seconds = time.time(), {}

    def lap(stage: str) -> None:
        seconds[stage] = round(time.time() - t0 - sum(seconds.values()), 1)

    stages = Stages(4, enabled=progress, eta=False)  # of unlike cost: no time left
    # the validation split fixed by the seed, as in every run of the comparison
    cfg = cfg.with_fixed_split()
    common = {"data_dir": data_dir, "device": device, "progress": progress}
    stages.start(f"train {cfg.model} on {cfg.dataset}, seed {cfg.seed}")
    result = _train(cfg, out_dir, common)
    ckpt = Path(result.best_checkpoint)
    lap("train")
    stages.start("analysis: the lpNTK features, redundancy, relationships, clusters")
    analysis = _analysis(ckpt, out_dir, common)
    lap("analysis")
    stages.start("prune: the redundant samples, and a random set of the same size")
    pruned = _prune(ckpt, out_dir, common)
    lap("prune")
    stages.start(f"compare: the full set and the pruned sets, {seeds} seeds each")
    comparison = _compare(ckpt, out_dir, pruned, range(cfg.seed, cfg.seed + seeds), common)
    lap("compare")
    report = {
        "config": dataclasses.asdict(cfg),
        "train": {
            "best_epoch": result.best_epoch,
            "val_acc": result.best_val_acc,
            "test_acc": result.test_acc,
            "checkpoint": str(ckpt),
        },
        "analysis": analysis,
        "pruned": pruned,
        "compare": comparison.summary,
        "seeds": seeds,
        "seconds": seconds,
    }
    write_json(out_dir / "summary.json", report)
    report["report"] = str(build_report(out_dir, title="lpntk demo"))
    return report


def _train(cfg: TrainConfig, out_dir: Path, common: dict):
    """The analysed model: also the full set's run of its seed in the comparison."""
    result = run_training(cfg, out_dir / "compare" / FULL / f"seed_{cfg.seed}", **common)
    print(summary(result))
    return result


def _analysis(ckpt: Path, out_dir: Path, common: dict) -> dict:
    analysis = stage_done(out_dir / "analysis" / "summary.json", ckpt)
    if analysis is None:
        analysis = analyze_checkpoint(ckpt, out_dir / "analysis", **common)
    print(
        f"analysis: {analysis['redundant_fraction']:.1%} of {analysis['n']} samples redundant; "
        f"{analysis['clusters']} clusters, the largest "
        f"{analysis['largest_cluster_share']:.1%} of the samples"
    )
    return analysis


def _prune(ckpt: Path, out_dir: Path, common: dict) -> dict:
    """The redundant samples removed (reusing the analysis), and a random set of that size."""
    pruned = {}
    for name, strategy, options in (
        ("redundant", "redundant", {"rule": "cover", "analysis_dir": out_dir / "analysis"}),
        ("random", "random", {"seed": 0}),
    ):
        folder = out_dir / "pruned" / name
        manifest = stage_done(folder / "manifest.json", ckpt)
        if manifest is None:
            if strategy == "random":
                options["size"] = pruned["redundant"]["kept"]
            manifest = prune_checkpoint(ckpt, folder, strategy, **common, **options).manifest
        pruned[name] = manifest
    print(f"pruned: kept {pruned['redundant']['kept']} of {pruned['redundant']['n']} samples")
    return pruned


def _compare(ckpt: Path, out_dir: Path, pruned: dict, seeds, common: dict):
    comparison = compare_checkpoint(
        ckpt,
        [out_dir / "pruned" / name for name in pruned],
        out_dir / "compare",
        seeds=seeds,
        **common,
    )
    for row in comparison.summary:
        p = f", Welch p = {row['welch_p']:.3g}" if "welch_p" in row else ""
        print(f"compare: {row['subset']} test accuracy {row['mean']:.4f} +- {row['std']:.4f}{p}")
    return comparison
