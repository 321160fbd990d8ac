"""Per-sample scores from short training runs, for pruning baselines that need no kernel.

EL2N (Paul et al. 2021, "Deep learning on a data diet"): the L2 norm of softmax(f(x)) - onehot(y)
early in training, averaged over several independently initialised models; a larger score is a
harder sample. Each model here is trained for ``epochs`` epochs with the checkpoint's settings and
a constant learning rate (the start of the full run's schedule, which is where Paul et al. score),
on the same training split, one run per seed under ``out_dir/seed_<s>/``; finished runs are
reused, so an interrupted scoring resumes.

Forgetting (Toneva et al. 2018): the number of forgetting events of each sample over a whole
training run with the checkpoint's settings (every epoch logged), averaged over seeds; a sample
never learned in a run counts as forgotten infinitely often (it is kept first).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._errors import ConfigError, DataError
from ._frame import per_sample_frame
from .training import TrainConfig, load_checkpoint, predict_logits, prepare_data, train_seeds


@dataclass
class Scores:
    """``indices``: original dataset indices (the training split, in its order); ``labels``;
    ``score``: the mean over seeds; ``per_seed``: ``(seeds, N)``; ``parameters``: how."""

    indices: np.ndarray
    labels: np.ndarray
    score: np.ndarray
    per_seed: np.ndarray
    parameters: dict

    def to_frame(self):
        """One row per sample indexed by original index: ``label``, the mean score (named by
        the score) and one column a seed (``<score>_seed_<s>``)."""
        name = self.parameters["score"]
        columns = {"label": self.labels, name: self.score}
        for seed, row in zip(self.parameters["seeds"], self.per_seed, strict=True):
            columns[f"{name}_seed_{seed}"] = row
        return per_sample_frame(self.indices, columns)


def el2n(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024):
    """``(N,)`` EL2N of every sample: |softmax(model(x)) - onehot(y)|_2 (model in eval mode)."""
    z = predict_logits(model, x, batch_size).double()
    return (F.softmax(z, dim=1) - F.one_hot(y.cpu(), z.shape[1]).double()).norm(dim=1).numpy()


def el2n_scores(
    cfg: TrainConfig,
    seeds=range(5),
    epochs: int = 2,
    out_dir="runs/el2n",
    data_dir=None,
    device="auto",
    progress: bool = True,
) -> Scores:
    """EL2N of every sample of ``cfg``'s training split, averaged over ``seeds``; see the module
    doc. The validation split is that of ``cfg`` (its ``split_seed``, else its ``seed``)."""
    seeds = _seeds(seeds)
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ConfigError(f"expected a number of epochs >= 1; got {epochs!r}", param="epochs")
    short = dataclasses.replace(
        cfg.with_fixed_split(),
        epochs=int(epochs),
        schedule="none",
        keep_epochs=False,
        log_per_sample=False,
        checkpoint_every=0,
    )
    short.validate()
    train_set, _, _ = prepare_data(short, data_dir)
    x, y = train_set.tensors()
    per_seed = []
    for run in train_seeds(short, seeds, out_dir, data_dir, device, progress):
        model, _ = load_checkpoint(run / "last.pt")
        per_seed.append(el2n(model, x, y))
    per_seed = np.stack(per_seed)
    return Scores(
        train_set.indices.copy(),
        train_set.labels.copy(),
        per_seed.mean(0),
        per_seed,
        {"score": "el2n", "seeds": seeds, "epochs": int(epochs), "config": short.to_dict()},
    )


def forgetting_scores(
    cfg: TrainConfig,
    seeds=range(5),
    out_dir="runs/forgetting",
    data_dir=None,
    device="auto",
    progress: bool = True,
) -> Scores:
    """Forgetting counts of every sample of ``cfg``'s training split from full runs with
    per-sample logs, one per seed; see the module doc."""
    from .dynamics import run_dynamics

    seeds = _seeds(seeds)
    full = dataclasses.replace(cfg.with_fixed_split(), log_per_sample=True, keep_epochs=False)
    full.validate()
    train_set, _, _ = prepare_data(full, data_dir)
    per_seed = []
    for run in train_seeds(full, seeds, out_dir, data_dir, device, progress):
        d = run_dynamics([run])
        if not np.array_equal(d.indices, train_set.indices):  # logs: the split's order
            raise DataError(f"{run} logged other samples than its settings' training split")
        per_seed.append(np.where(d.never_learned > 0, np.inf, d.forgetting))
    return Scores(
        train_set.indices.copy(),
        train_set.labels.copy(),
        np.mean(per_seed, 0),
        np.stack(per_seed),
        {"score": "forgetting", "seeds": seeds, "epochs": full.epochs, "config": full.to_dict()},
    )


def _seeds(seeds) -> list:
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"expected one or more distinct seeds; got {seeds}", param="seeds")
    return seeds


def el2n_of_checkpoint(checkpoint, seeds=range(5), epochs: int = 2, **options) -> Scores:
    """:func:`el2n_scores` with the settings and the training split of a checkpoint written by
    lpntk train."""
    return el2n_scores(config_of(checkpoint), seeds, epochs, **options)


def config_of(checkpoint) -> TrainConfig:
    """The training settings saved in a checkpoint written by lpntk train."""
    _, ckpt = load_checkpoint(checkpoint)
    return TrainConfig.from_dict(ckpt["config"])
