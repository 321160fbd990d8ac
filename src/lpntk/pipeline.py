"""The main job (``lpntk demo`` / ``make demo``): the whole analysis of one dataset, stage by stage.

Each stage writes into its own folder under ``out_dir`` and is skipped when its outputs are
complete, so an interrupted run resumes where it stopped. Stages so far: ``train`` (the classifier
whose best-validation checkpoint every later stage analyses) and ``kernel`` (its exact lpNTK on the
training samples: feature store, diagonal, most and least similar other sample, per-sample table).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ._io import output_folder, write_json
from .kernel_stage import describe, kernel_from_checkpoint
from .training import TrainConfig, run_training, summary


def run_demo(
    out_dir: str | Path = "runs/demo",
    cfg: TrainConfig | None = None,
    data_dir=None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Run every stage of the pipeline on ``cfg.dataset`` and return the summary it writes to
    ``out_dir/summary.json``."""
    out_dir = output_folder(out_dir)
    cfg = cfg or TrainConfig()
    t0 = time.time()
    result = run_training(
        cfg, out_dir / "train", data_dir=data_dir, device=device, progress=progress
    )
    print(summary(result))
    kernel = kernel_from_checkpoint(
        result.best_checkpoint,
        out_dir / "kernel",
        kind="lpntk",
        split="train",
        data_dir=data_dir,
        device=device,
        progress=progress,
    )
    print(describe(kernel, out_dir / "kernel"))
    report = {
        "config": dataclasses.asdict(cfg),
        "train": {
            "best_epoch": result.best_epoch,
            "val_acc": result.best_val_acc,
            "test_acc": result.test_acc,
            "checkpoint": str(result.best_checkpoint),
        },
        "kernel": kernel,
        "seconds": round(time.time() - t0, 1),
    }
    write_json(out_dir / "summary.json", report)
    return report
