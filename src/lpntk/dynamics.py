"""Learning dynamics from the per-sample logs of training runs (``lpntk train --log-per-sample``).

Each run logs, for every training sample and epoch, the loss and the correctness of the model's
prediction at the step where the sample was trained on (``per_sample/{loss,correct,step}.npy``,
``(epochs, N)``; -1 / NaN where not recorded). From them:

- **learning difficulty** (Jiang et al. 2021): the sample's training loss integrated over training,
  here the sum of its logged losses (one per epoch); larger is harder;
- **forgetting events** (Toneva et al. 2018): the sample was correct at one logged evaluation and
  wrong at the next; per sample the number of events, the step at which it was first correct, and
  whether it was never correct (never learned).

Several runs (seeds) are averaged per sample; they must share their training samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._errors import DataError, MissingFileError
from ._frame import per_sample_frame
from ._io import read_csv, read_json, read_npy

LOGS = ("loss", "correct", "step", "indices")


@dataclass
class Dynamics:
    """Per sample, in the runs' training order: original ``indices``; ``difficulty`` (mean over
    runs of the integrated loss); ``forgetting`` (mean number of forgetting events);
    ``first_learned_step`` (mean over the runs that learned it; NaN if none did);
    ``never_learned`` (the fraction of runs in which it was never correct); ``runs``."""

    indices: np.ndarray
    difficulty: np.ndarray
    forgetting: np.ndarray
    first_learned_step: np.ndarray
    never_learned: np.ndarray
    runs: list = field(default_factory=list)

    def to_frame(self):
        """One row per sample indexed by original index: ``difficulty``, ``difficulty_rank``
        (1 = hardest), ``forgetting``, ``first_learned_step`` and ``never_learned``."""
        rank = np.empty(len(self.indices), dtype=np.int64)
        rank[np.lexsort((self.indices, -self.difficulty))] = np.arange(1, len(rank) + 1)
        columns = {
            "difficulty": self.difficulty,
            "difficulty_rank": rank,
            "forgetting": self.forgetting,
            "first_learned_step": self.first_learned_step,
            "never_learned": self.never_learned,
        }
        return per_sample_frame(self.indices, columns)

    def table(self):
        """:meth:`to_frame` with ``index`` as a column (the table ``lpntk dynamics`` writes)."""
        return self.to_frame().reset_index()


class Forgetting(NamedTuple):
    """Per sample: ``events``, the number of forgetting events; ``first_learned``, the position
    of its first correct evaluation (-1 if none); ``never_learned``, whether it never was."""

    events: np.ndarray
    first_learned: np.ndarray
    never_learned: np.ndarray


def forgetting_events(correct: np.ndarray) -> Forgetting:
    """From ``correct`` ``(evaluations, N)`` (1 correct, 0 wrong, -1 not recorded): per sample
    the number of forgetting events (1 then 0 at consecutive recorded evaluations), the position
    of the first correct evaluation (-1 if none) and whether it was never correct, as named
    fields (a tuple too: ``events, first, never = forgetting_events(correct)``)."""
    correct = np.asarray(correct)
    if correct.ndim != 2:
        raise DataError(f"expected a (evaluations, samples) array; got shape {correct.shape}")
    events = np.zeros(correct.shape[1], dtype=np.int64)
    last = np.full(correct.shape[1], -1, dtype=np.int8)  # the previous recorded value
    for row in correct:
        seen = row >= 0
        events += seen & (last == 1) & (row == 0)
        last = np.where(seen, row, last)
    learned = correct == 1
    never = ~learned.any(0)
    first = np.where(never, -1, learned.argmax(0))
    return Forgetting(events, first, never)


def integrated_loss(loss: np.ndarray) -> np.ndarray:
    """The sum over logged evaluations of each sample's loss (NaN: not recorded), ``(N,)``."""
    loss = np.asarray(loss, dtype=np.float64)
    if loss.ndim != 2:
        raise DataError(f"expected a (evaluations, samples) array; got shape {loss.shape}")
    return np.nansum(loss, axis=0)


def read_logs(run_dir) -> dict:
    """The per-sample logs of a training run folder, checked."""
    d = Path(run_dir) / "per_sample"
    logs = {}
    for name in LOGS:
        path = d / f"{name}.npy"
        if not path.exists():
            raise MissingFileError(
                f"{path} is missing; expected a run trained with --log-per-sample", param="runs"
            )
        logs[name] = read_npy(path, "the per-sample log", "train the run again")
    n = len(logs["indices"])
    for name in ("loss", "correct", "step"):
        if logs[name].ndim != 2 or logs[name].shape[1] != n:
            raise DataError(
                f"{d / name}.npy has shape {logs[name].shape}; expected (epochs, {n})",
                param="runs",
            )
    return logs


def run_dynamics(runs) -> Dynamics:
    """Learning difficulty and forgetting of the training samples, averaged over ``runs``
    (training run folders with per-sample logs); see the module doc."""
    runs = [Path(r) for r in ([runs] if isinstance(runs, (str, Path)) else runs)]
    if not runs:
        raise DataError("expected one or more training runs", param="runs")
    difficulty, forgetting, first, never = [], [], [], []
    indices = None
    for run in runs:
        logs = read_logs(run)
        if (logs["step"] < 0).all(1).any():
            raise DataError(
                f"{run} has epochs without logs: an unfinished run? expected finished runs "
                "(the same lpntk train command finishes it)",
                param="runs",
            )
        if indices is None:
            indices, shape = logs["indices"], logs["loss"].shape
        elif logs["loss"].shape != shape:
            raise DataError(
                f"{run} logged {logs['loss'].shape[0]} epochs, {runs[0]} {shape[0]}; expected "
                "runs of the same length",
                param="runs",
            )
        elif not np.array_equal(logs["indices"], indices):
            raise DataError(
                f"{run} was trained on other samples than {runs[0]}; expected runs of one "
                "training split (the same --seed or split seed, --train-size, --classes)",
                param="runs",
            )
        events, first_pos, never_run = forgetting_events(logs["correct"])
        steps = logs["step"][np.maximum(first_pos, 0), np.arange(len(first_pos))]
        difficulty.append(integrated_loss(logs["loss"]))
        forgetting.append(events)
        first.append(np.where(never_run, np.nan, steps))
        never.append(never_run)
    first = np.stack(first)
    learned = ~np.isnan(first)
    mean_first = np.full(first.shape[1], np.nan)
    some = learned.any(0)
    mean_first[some] = np.nansum(first[:, some], 0) / learned[:, some].sum(0)
    return Dynamics(
        indices.copy(),
        np.mean(difficulty, 0),
        np.mean(forgetting, 0),
        mean_first,
        np.mean(never, 0),
        [str(r) for r in runs],
    )


def easy_in_largest_cluster(difficulty, cluster, fraction: float = 0.1, labels=None) -> dict:
    """Sec. 3.4: the share of the ``fraction`` easiest samples (smallest ``difficulty``; ties by
    position) that lie in the largest cluster, the share expected if membership were
    independent of difficulty (the largest cluster's share of all samples), and the one-sided
    p-value of the permutation test: the chance that a random subset of the same size holds at
    least as many members, exact (hypergeometric). With ``labels``, per class: a sample counts
    when it lies in its own class's largest cluster (:func:`lpntk.analysis.class_heads`), and
    the test is stratified by class, so that easy classes with large heads prove nothing: the
    easiest samples of each class are held to their number, the chance is sum_c m_c h_c / n_c
    over m (m_c of the easiest in class c, h_c its head, n_c its size), and the p-value is the
    exact tail of the sum of the classes' independent hypergeometric counts."""
    from scipy import stats

    from .analysis import class_heads

    difficulty, cluster = np.asarray(difficulty, float), np.asarray(cluster)
    if difficulty.shape != cluster.shape or difficulty.ndim != 1 or len(cluster) == 0:
        raise DataError(
            f"expected difficulty and cluster of one length; got {difficulty.shape} and "
            f"{cluster.shape}"
        )
    if not 0 < fraction < 1:
        raise DataError(f"expected a fraction in (0, 1); got {fraction}", param="fraction")
    n = len(cluster)
    m = max(1, int(round(fraction * n)))
    easiest = np.argsort(difficulty, kind="stable")[:m]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != cluster.shape:
            raise DataError(f"expected {n} labels; got shape {labels.shape}", param="labels")
    strata = np.zeros(n, dtype=int) if labels is None else labels  # the whole set: one stratum
    members = np.zeros(n, dtype=bool)
    for head in class_heads(cluster, strata).values():
        members[head] = True
    hits = int(members[easiest].sum())
    pmf, expected = np.ones(1), 0.0  # the distribution of the hits under the null
    for y in np.unique(strata):
        own = strata == y
        n_c, h_c, m_c = int(own.sum()), int(members[own].sum()), int(own[easiest].sum())
        pmf = np.convolve(pmf, stats.hypergeom.pmf(np.arange(m_c + 1), n_c, h_c, m_c))
        expected += m_c * h_c / n_c
    result = {"fraction": fraction, "easiest": m, "per_class": labels is not None}
    if labels is None:
        result["largest_cluster"] = int(cluster[members][0])
    return {
        **result,
        "largest_cluster_size": int(members.sum()),
        "share_in_largest": hits / m,
        "expected_share": expected / m,
        "p_value": float(min(1.0, pmf[hits:].sum())),
    }


def write_dynamics(runs, out_dir, clusters=None, data_dir=None, per_class=None) -> dict:
    """Write ``per_sample.csv`` (:meth:`Dynamics.table` with each sample's label) and
    ``summary.json`` for ``runs`` into ``out_dir``; returns the summary. ``per_class``: judge
    each sample against its own class's largest cluster (default: as the analysis beside
    ``clusters`` clustered, from its summary.json). ``clusters``: a
    ``per_sample.csv`` of lpntk analyze (columns ``index`` and one cluster column) of the same
    samples, for :func:`easy_in_largest_cluster`."""
    from ._io import atomic_path, output_folder, write_json
    from .kernel_stage import checkpoint_data
    from .training import load_checkpoint

    out = output_folder(out_dir)
    d = run_dynamics(runs)
    _, ckpt = load_checkpoint(Path(d.runs[0]) / "last.pt")
    train = checkpoint_data(ckpt, "train", data_dir=data_dir)  # for the labels
    table = d.table()
    table.insert(1, "label", train.labels[train.positions_of(table["index"].to_numpy())])
    summary = {
        "runs": d.runs,
        "n": int(len(d.indices)),
        "never_learned_share": float((d.never_learned > 0).mean()),
        "unforgettable_share": float(((d.forgetting == 0) & (d.never_learned == 0)).mean()),
        "mean_forgetting_events": float(d.forgetting.mean()),
        "mean_difficulty": float(d.difficulty.mean()),
    }
    if clusters is not None:
        fix = "expected the per_sample.csv of lpntk analyze"
        c = read_csv(clusters, "the clusters table", fix)
        names = [k for k in c.columns if k == "cluster" or k.startswith("cluster[")]
        if "index" not in c.columns or len(names) != 1:
            raise DataError(
                f"{clusters} has no single cluster column (columns: {', '.join(c.columns)}); "
                "expected the per_sample.csv of lpntk analyze",
                param="clusters",
            )
        c = c.rename(columns={names[0]: "cluster"}).sort_values("index")
        if not np.array_equal(c["index"].to_numpy(), table["index"].to_numpy()):
            raise DataError(
                f"{clusters} holds other samples than the runs' training split; expected the "
                "per_sample.csv of lpntk analyze on the same split",
                param="clusters",
            )
        table["cluster"] = c["cluster"].to_numpy()
        if per_class is None:  # as the analysis clustered: its summary.json says
            record = Path(clusters).parent / "summary.json"
            fix = "run lpntk analyze into its folder again"
            saved = read_json(record, "the analysis summary", fix) if record.exists() else {}
            per_class = isinstance(saved, dict) and bool(saved.get("per_class"))
        summary["easy_in_largest_cluster"] = easy_in_largest_cluster(
            table["difficulty"], table["cluster"], labels=table["label"] if per_class else None
        )
    with atomic_path(out / "per_sample.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.8g")
    write_json(out / "summary.json", summary)
    return summary
