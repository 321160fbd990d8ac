"""The analyses of a trained checkpoint on its data, as files (``lpntk analyze`` / ``prune`` /
``compare``).

``analyze_checkpoint`` writes into ``out_dir``: ``features/`` (the lpNTK feature store, reused
when present), ``per_sample.csv`` (:meth:`SampleKernel.table`: one row per sample in original
order, with each sample's most and least similar other sample as in ``lpntk kernel``),
``clusters.json`` (cluster statistics), ``cluster_sizes.png`` (log-log rank/size), image grids
``redundant_pairs.png`` (the most redundant samples beside their witnesses),
``contradictory_pairs.png`` (the pairs with the most negative lpNTK relative to both norms) and
``clusters.png`` (members of the largest clusters and singleton clusters), and ``summary.json``.

``label_issues_checkpoint`` writes ``features_entk/`` (the eNTK feature store, reused when
present), ``per_sample.csv`` (a label-error score, rank and suggested label per sample, in
original order), ``label_issues.png`` (the top suspects with given and suggested labels) and
``summary.json`` (its ``table``: the top suspects).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ._errors import ConfigError
from ._io import atomic_path, output_folder, read_json, read_npy, write_json
from .analysis import Witnesses, cluster_stats, plot_cluster_sizes
from .analysis.clustering import cluster_count
from .analysis.label_issues import DESIGN, NEIGHBOURS
from .compare import compare_training
from .kernel import RowTopK, compute_features, reduce_rows
from .kernel_stage import Neighbours
from .prune import Pruned, hardest, random_subset, write_pruned
from .report import class_name, pair_grid, sample_grid
from .samples import SampleKernel
from .training import TrainConfig, load_checkpoint, prepare_data


def checkpoint_sha256(checkpoint) -> str:
    """The SHA-256 of a checkpoint file (a run folder: its best.pt), to tell results of one
    training from those of a later one written to the same path."""
    import hashlib

    path = Path(checkpoint)
    path = path / "best.pt" if path.is_dir() else path
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kernel(
    checkpoint,
    store: Path,
    split: str,
    limit,
    data_dir,
    progress,
    kind="lpntk",
    device="auto",
    proj_dim=None,
    client=None,
):
    """The ``kind`` SampleKernel of a checkpoint's ``split`` samples, with its feature store in
    ``store`` (reused when complete), and those samples. ``proj_dim``: features randomly
    projected to that many dimensions (approximate), else exact."""
    from .kernel_stage import checkpoint_data, first_samples

    model, ckpt = load_checkpoint(checkpoint)
    data = first_samples(checkpoint_data(ckpt, split, data_dir=data_dir), limit, "limit")
    sk = SampleKernel(
        model,
        data,
        kind,
        out_dir=store,
        progress=progress,
        device=device,
        proj_dim=proj_dim,
        client=client,
    )
    return sk, data


def _pictures(sk: SampleKernel, data, red, c, least, out: Path, t: float, count: int = 8) -> None:
    """redundant_pairs.png, contradictory_pairs.png and clusters.png; ``least``: a finished
    ``RowTopK(1, largest=False)``, each sample's least similar other sample; ``t``: the
    contradiction threshold (the pairs are called contradictory only when they pass it)."""
    X, d = sk.features, sk.self_kernel()
    idx = X.indices
    lab = np.array([class_name(data, int(y)) for y in X.labels])  # names in the captions
    ratio = np.where(red.redundant, red.witness_kappa / d, -np.inf)
    top = [p for p in np.argsort(-ratio, kind="stable")[:count] if red.redundant[p]]
    pair_grid(
        data,
        [(idx[p], idx[red.witness[p]]) for p in top],
        [
            (
                f"#{idx[p]} y={lab[p]} (redundant)",
                f"witness #{idx[red.witness[p]]} y={lab[red.witness[p]]}, "
                f"k(x,w)/k(x,x)={ratio[p]:.2f}",
            )
            for p in top
        ],
        "most redundant samples beside their witnesses",
        out / "redundant_pairs.png",
    )
    j = least.positions[:, 0].numpy()
    k = least.values[:, 0].double().numpy()
    weaker = np.where(j >= 0, k / np.maximum(d, d[np.maximum(j, 0)]), np.inf)
    pairs, seen = [], set()
    for p in np.argsort(weaker, kind="stable"):
        key = tuple(sorted((int(p), int(j[p]))))
        if j[p] >= 0 and key not in seen:
            seen.add(key)
            pairs.append(p)
        if len(pairs) == count:
            break
    pair_grid(
        data,
        [(idx[p], idx[j[p]]) for p in pairs],
        [
            (
                f"#{idx[p]} y={lab[p]}",
                f"#{idx[j[p]]} y={lab[j[p]]}, k={k[p]:.3g}, both ratios <= {weaker[p]:.2f}",
            )
            for p in pairs
        ],
        "most contradictory pairs (both ratios <= -t)"
        if pairs and weaker[pairs[0]] <= -t
        else f"least similar pairs: none is contradictory at t = {t:g}",
        out / "contradictory_pairs.png",
    )
    order = np.argsort(-c.sizes, kind="stable")
    rng = np.random.default_rng(0)
    groups = []
    for rank, cl in enumerate(order[:3]):
        members = np.flatnonzero(c.cluster == cl)
        pick = rng.choice(members, size=min(count, len(members)), replace=False)
        groups.append((f"cluster #{rank + 1}\n{len(members)} samples", idx[pick].tolist()))
    tail = [cl for cl in order[::-1] if c.sizes[cl] == 1][:count]
    groups.append(("singleton\nclusters", [int(idx[c.centroids[cl]]) for cl in tail]))
    sample_grid(
        data, groups, "largest clusters (random members) and tail clusters", out / "clusters.png"
    )


def analyze_checkpoint(
    checkpoint,
    out_dir,
    split: str = "train",
    limit: int | None = None,
    one_sided: bool = False,
    within_class: bool = False,
    t: float = 0.75,
    eps: float = 0.05,
    relationships: bool = True,
    clusters: int | float = 0.1,
    measure: str = "lpntk",
    per_class: bool = False,
    data_dir=None,
    progress: bool = True,
    features_dir=None,
    device="auto",
    proj_dim: int | None = None,
    client=None,
) -> dict:
    """Redundancy, relationship types and farthest point clustering of a checkpoint's lpNTK on
    its ``split`` samples; writes the files listed in the module doc, returns the summary.
    ``features_dir``: where the feature store is (reused when complete), default
    ``out_dir/features``. ``proj_dim``: approximate, from features randomly projected to that
    many dimensions (for models whose exact features do not fit); default exact. ``client``: a
    ``dask.distributed.Client`` to run the features and the analyses on its workers."""
    out = output_folder(out_dir)
    try:  # before any work: a count >= 1 or a fraction in (0, 1)
        cluster_count(clusters, 2**62)
    except ConfigError as e:
        raise ConfigError(e.message, param="clusters") from None
    store = out / "features" if features_dir is None else Path(features_dir)
    sk, data = _kernel(
        checkpoint,
        store,
        split,
        limit,
        data_dir,
        progress,
        device=device,
        proj_dim=proj_dim,
        client=client,
    )
    # one pass over the kernel for all: the witnesses of the redundant samples, each sample's
    # most and least similar other sample (the latter for the contradictory pairs) and the
    # relationship counts
    witnesses = Witnesses(sk.features, one_sided, within_class)
    most, least = RowTopK(1), RowTopK(1, largest=False)
    if relationships:
        rel = sk.relationships(t, eps, also=[witnesses, most, least])
    else:
        rel = None
        reduce_rows(sk.features, [witnesses, most, least], progress=progress, client=client)
    red = sk.redundant(one_sided, within_class, found=witnesses)
    _save_redundancy(red, sk.features, out / "redundancy.npz")
    try:
        c = sk.clusters(clusters, measure, per_class)
    except ConfigError as e:
        if e.param != "m":
            raise
        raise ConfigError(e.message, param="clusters") from None
    # one variant of each analysis ran here (summary.json says which): plain column names
    table = sk.table().rename(columns=lambda name: name.split("[")[0])
    names = np.asarray(data.classes, dtype=object)[table["label"].to_numpy()]
    table.insert(table.columns.get_loc("label") + 1, "label_name", names)  # as label issues'
    order = np.argsort(sk.features.indices, kind="stable")  # the table's rows: original order
    neighbours = Neighbours(most, least, sk.features, sk.features).columns()
    for name, values in neighbours.items():
        table[name] = values[order]
    with atomic_path(out / "per_sample.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.8g")
    stats = cluster_stats(c, sk.features.labels)
    write_json(out / "clusters.json", stats)
    plot_cluster_sizes(c, out / "cluster_sizes.png")
    _pictures(sk, data, red, c, least, out, t)
    summary = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "split": split,
        "limit": limit,
        "n": sk.features.n,
        "redundant_fraction": red.fraction,
        "one_sided": one_sided,
        "within_class": within_class,
        "clusters": len(c.centroids),
        "measure": measure,
        "per_class": per_class,
        "proj_dim": proj_dim,
        "largest_cluster_share": stats["largest_share"],
        "singletons": stats["singletons"],
        "relationships": None
        if rel is None
        else {"t": t, "eps": eps, **{k: int(v.sum()) for k, v in rel.counts.items()}},
    }
    write_json(out / "summary.json", summary)
    return summary


def label_issues_checkpoint(
    checkpoint,
    out_dir,
    split: str = "train",
    limit: int | None = None,
    k: int = NEIGHBOURS,
    design: str = DESIGN,
    top: int = 32,
    data_dir=None,
    progress: bool = True,
    features_dir=None,
    device="auto",
    client=None,
) -> dict:
    """Label issues (:func:`~lpntk.analysis.label_issues`) of a checkpoint's ``split`` samples
    under the labels it was trained on; writes the files listed in the module doc and returns
    the summary. ``top``: suspects in the image grid and the summary's table."""
    from .analysis import DESIGNS
    from .analysis.label_issues import lpntk_of
    from .kernel_stage import checkpoint_data, first_samples

    if design not in DESIGNS:  # before any work
        raise ConfigError(
            f"unknown design {design!r}; expected one of {', '.join(DESIGNS)}", param="design"
        )
    for name, value in (("neighbours", k), ("top", top)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"expected an integer >= 1; got {value!r}", param=name)
    out = output_folder(out_dir)
    model, ckpt = load_checkpoint(checkpoint)
    data = first_samples(checkpoint_data(ckpt, split, data_dir=data_dir), limit, "limit")
    store = out / "features_entk" if features_dir is None else Path(features_dir)
    entk = compute_features(
        model, data, "entk", out_dir=store, progress=progress, device=device, client=client
    )
    sk = SampleKernel(features=lpntk_of(entk), progress=progress, client=client)
    li = sk.label_issues(k, design, entk=entk)
    table = sk.table().rename(columns=lambda n: n.split("[")[0])  # one schema for all options
    classes = list(data.classes)
    order = np.argsort(li.indices, kind="stable")
    table["label_name"] = [classes[c] for c in li.labels[order]]
    table["suggested_label_name"] = [classes[c] for c in li.suggested[order]]
    with atomic_path(out / "per_sample.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.8g")
    suspects = li.top(min(top, len(li.rank)))
    rows = [
        {
            "rank": int(li.rank[p]),
            "index": int(li.indices[p]),
            "label": classes[li.labels[p]],
            "suggested": classes[li.suggested[p]],
            "score": float(li.score[p]),
            "given agreement": float(li.given_score[p]),
            "suggested agreement": float(li.suggested_score[p]),
        }
        for p in suspects
    ]
    per_row = 8
    groups = [
        (
            f"ranks {r + 1}-{min(r + per_row, len(suspects))}",
            [int(li.indices[p]) for p in suspects[r : r + per_row]],
        )
        for r in range(0, len(suspects), per_row)
    ]
    captions = {
        int(li.indices[p]): f"#{li.indices[p]} y={classes[li.labels[p]]}"
        f"\n-> {classes[li.suggested[p]]}"
        for p in suspects
    }
    sample_grid(
        data,
        groups,
        f"top {len(suspects)} label-error suspects: given label, then suggested",
        out / "label_issues.png",
        per_row=per_row,
        captions=captions,
    )
    summary = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "split": split,
        "n": int(len(li.rank)),
        "k": li.k,
        "design": design,
        "label_noise": ckpt["config"].get("label_noise"),
        "table": rows,
    }
    write_json(out / "summary.json", summary)
    return summary


def prune_checkpoint(
    checkpoint,
    out_dir,
    strategy: str,
    kind: str = "lpntk",
    data_dir=None,
    device="auto",
    progress: bool = True,
    features_dir=None,
    proj_dim: int | None = None,
    client=None,
    analysis_dir=None,
    **parameters,
) -> Pruned:
    """Kept training samples of a checkpoint by ``strategy``; writes ``kept.npy``, ``kept.csv``
    and ``manifest.json`` (with the checkpoint). The kernel strategies use the ``kind`` kernel
    (lpntk or pntk) and keep its feature store in ``features/``; ``random`` needs no kernel;
    ``el2n`` trains ``score_seeds`` short scoring runs of ``score_epochs`` epochs under ``el2n/``,
    ``forgetting`` as many full runs with per-sample logs under ``forgetting/``; both write
    ``scores.csv``. ``features_dir``: another place for the feature store; ``proj_dim``: the
    kernel strategies from features randomly projected to that many dimensions (approximate).
    ``client``: a ``dask.distributed.Client`` for the kernel strategies. ``analysis_dir``: a
    folder written by :func:`analyze_checkpoint` on this checkpoint's training split, whose
    feature store and redundancy search are reused instead of computed again."""
    from .kernel_stage import checkpoint_data
    from .scores import el2n_scores, forgetting_scores

    out = output_folder(out_dir)
    for param, value in (("proj_dim", proj_dim), ("analysis_dir", analysis_dir)):
        if value is not None and strategy in ("random", "el2n", "forgetting"):
            raise ConfigError(f"applies only to the kernel strategies, not {strategy}", param=param)
    if strategy == "random":
        _, ckpt = load_checkpoint(checkpoint)
        indices = checkpoint_data(ckpt, "train", data_dir=data_dir).indices
        pruned = random_subset(indices, **parameters)
    elif strategy in ("el2n", "forgetting"):
        size = parameters.pop("size", None)
        if not isinstance(size, int) or size < 1:  # before the scoring runs
            raise ConfigError(f"expected a number of samples >= 1; got {size!r}", param="size")
        seeds = parameters.pop("score_seeds", 5)
        epochs = parameters.pop("score_epochs", 2)
        for name, value in (("score_seeds", seeds), ("score_epochs", epochs)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"expected an integer >= 1; got {value!r}", param=name)
        if parameters:
            raise ConfigError(f"strategy {strategy} takes no {', '.join(sorted(parameters))}")
        _, ckpt = load_checkpoint(checkpoint)
        cfg = TrainConfig.from_dict(ckpt["config"])
        split = prepare_data(cfg, data_dir)[0].indices  # what the scoring runs train on
        if not np.array_equal(np.sort(split), np.sort(np.asarray(ckpt["train_indices"]))):
            raise ConfigError(
                f"{checkpoint} was trained on a subset of its settings' training split (a "
                f"pruned set?); {strategy} scores come from runs on the whole split: expected "
                "a checkpoint trained on all of it",
                param="checkpoint",
            )
        if size > len(split):
            raise ConfigError(f"expected at most {len(split)} samples; got {size}", param="size")
        options = dict(data_dir=data_dir, device=device, progress=progress)
        if strategy == "el2n":
            scores = el2n_scores(cfg, range(seeds), epochs, out_dir=out / "el2n", **options)
        else:
            scores = forgetting_scores(cfg, range(seeds), out_dir=out / "forgetting", **options)
        write_scores(scores, out / "scores.csv")
        pruned = hardest(scores, size)
    else:
        if analysis_dir is not None:
            _check_analysis(Path(analysis_dir), checkpoint, kind, proj_dim)
            features_dir = features_dir or Path(analysis_dir) / "features"
        store = out / "features" if features_dir is None else Path(features_dir)
        sk, _ = _kernel(
            checkpoint, store, "train", None, data_dir, progress, kind, device, proj_dim, client
        )
        searches = strategy == "redundant" or (
            strategy == "redundant_head" and parameters.get("redundant", True)
        )
        if analysis_dir is not None and searches and "redundancy" not in parameters:
            found = _load_redundancy(Path(analysis_dir) / "redundancy.npz", sk.features)
            wanted = parameters.get("one_sided", False), parameters.get("within_class", False)
            if found is not None and (found.one_sided, found.within_class) == wanted:
                parameters["redundancy"] = found  # the search analyze did, as the API takes it
        pruned = sk.prune(strategy, **parameters)
        pruned.manifest["proj_dim"] = proj_dim
    pruned.manifest["checkpoint"] = str(Path(checkpoint).resolve())
    pruned.manifest["checkpoint_sha256"] = checkpoint_sha256(checkpoint)
    write_pruned(pruned, out)
    return pruned


def _save_redundancy(red, X, path: Path) -> None:
    """The redundancy search of ``X`` as ``redundancy.npz``, for :func:`prune_checkpoint`."""
    meta = {
        "one_sided": red.one_sided,
        "within_class": red.within_class,
        "model_hash": X.meta.get("model_hash"),
        "kind": X.meta.get("kind"),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            redundant=red.redundant,
            witness=red.witness,
            witness_kappa=red.witness_kappa,
            self_kappa=red.self_kappa,
            indices=X.indices,
            meta=np.array(json.dumps(meta)),
        )


def _load_redundancy(path: Path, X):
    """The search saved by :func:`_save_redundancy` if it is of these features, else None."""
    from .analysis import Redundancy

    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            saved = {k: f[k] for k in f.files}
        meta = json.loads(str(saved.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        warnings.warn(f"{path} is corrupt; the redundancy search runs again", stacklevel=3)
        return None
    same = meta.get("model_hash") == X.meta.get("model_hash") and meta.get("kind") == X.meta.get(
        "kind"
    )
    if not same or not np.array_equal(saved["indices"], X.indices):
        return None
    return Redundancy(
        saved["redundant"],
        saved["witness"],
        saved["witness_kappa"],
        saved["self_kappa"],
        one_sided=bool(meta["one_sided"]),
        within_class=bool(meta["within_class"]),
        indices=saved["indices"],
    )


def _check_analysis(folder: Path, checkpoint, kind: str, proj_dim) -> None:
    """``folder`` must be a finished analysis of this checkpoint's whole training split with
    the same kernel, so that its features and search can stand for pruning's."""
    summary = read_json(
        folder / "summary.json", "the analysis summary", "run lpntk analyze into it first"
    )
    problem = None
    if summary.get("checkpoint_sha256") != checkpoint_sha256(checkpoint):
        problem = "it analysed another checkpoint"
    elif summary.get("split") != "train":
        problem = f"it analysed the {summary.get('split')} split, not the training split"
    elif summary.get("limit") is not None:
        problem = f"it analysed only the first {summary['limit']} samples"
    elif kind != "lpntk" or summary.get("proj_dim") != proj_dim:
        problem = "its kernel (the exact lpNTK unless --proj-dim) is not the one asked for"
    if problem:
        raise ConfigError(
            f"analysis folder {folder} cannot be reused: {problem}", param="analysis_dir"
        )


def write_scores(scores, path: Path) -> None:
    """One row per sample in original order: index, label, the mean score, one column a seed."""
    with atomic_path(path) as tmp:
        scores.to_frame().to_csv(tmp, float_format="%.8g")


def compare_checkpoint(
    checkpoint,
    pruned_dirs,
    out_dir,
    seeds=5,
    data_dir=None,
    device="auto",
    progress=True,
    equal="epochs",
):
    """Retrain the checkpoint's configuration on its full training split and on each pruned set
    (folders written by :func:`prune_checkpoint`), for ``seeds`` seeds (a count: seeds 0, 1,
    ...; or the seeds themselves); see :func:`lpntk.compare.compare_training`. Every folder is
    checked before anything trains; the checkpoint's own run stands for the full set at its seed
    when it is a finished run of the same settings."""
    _, ckpt = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"]).with_fixed_split()
    if isinstance(seeds, int):
        if seeds < 2:
            raise ConfigError(f"expected at least 2 seeds; got {seeds!r}", param="seeds")
        seeds = range(seeds)
    subsets = {}
    for folder in map(Path, pruned_dirs):
        if folder.name in subsets:
            raise ConfigError(
                f"two pruned folders are named {folder.name!r}; expected distinct names",
                param="pruned",
            )
        subsets[folder.name] = read_pruned(folder, ckpt["train_indices"])
    run = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    full_runs = {cfg.seed: run} if _finished_run_of(run, cfg) else None
    return compare_training(
        cfg,
        subsets,
        seeds,
        out_dir,
        data_dir=data_dir,
        device=device,
        progress=progress,
        equal=equal,
        full_runs=full_runs,
    )


def read_pruned(folder: Path, train_indices) -> np.ndarray:
    """The kept original indices in a folder written by :func:`prune_checkpoint`, checked: a
    finished folder (its manifest written last), a readable 1-D integer ``kept.npy`` without
    duplicates whose indices are all in ``train_indices``. Every error names the folder."""

    from ._errors import DataError, MissingFileError

    if not folder.is_dir():
        raise MissingFileError(
            f"pruned folder {folder} does not exist; expected a folder written by lpntk prune"
        )
    manifest = folder / "manifest.json"
    if not (folder / "kept.npy").exists() or not manifest.exists():
        missing = "kept.npy" if not (folder / "kept.npy").exists() else "manifest.json"
        raise DataError(
            f"pruned folder {folder} holds no {missing}: not a finished lpntk prune output; "
            "run lpntk prune into it again"
        )
    fix = "run lpntk prune into it again"
    meta = read_json(manifest, f"pruned folder {folder}: the manifest", fix)
    kept = read_npy(folder / "kept.npy", f"pruned folder {folder}: the kept set", fix)
    problem = None
    if not isinstance(meta, dict) or "kept" not in meta:
        problem = "manifest.json is not an lpntk prune manifest"
    elif kept.ndim != 1 or not np.issubdtype(kept.dtype, np.integer):
        problem = f"kept.npy holds a {kept.dtype} array of shape {kept.shape}, not 1-D integers"
    elif len(kept) == 0:
        problem = "kept.npy is empty"
    elif len(np.unique(kept)) != len(kept):
        problem = f"kept.npy repeats {len(kept) - len(np.unique(kept))} indices"
    elif meta["kept"] != len(kept):
        problem = f"the manifest says {meta['kept']} kept samples, kept.npy holds {len(kept)}"
    else:
        foreign = np.setdiff1d(kept, np.asarray(train_indices))
        if len(foreign):
            problem = (
                f"{len(foreign)} kept indices (e.g. {foreign[:5].tolist()}) are not training "
                "samples of this checkpoint's split; it was pruned from another run"
            )
    if problem:
        raise DataError(f"pruned folder {folder}: {problem}")
    return kept


def _finished_run_of(run: Path, cfg: TrainConfig) -> bool:
    """Whether ``run`` is a finished training run of ``cfg`` (logging options aside)."""
    try:
        given = json.loads((run / "config.json").read_text())["config"]
        history = json.loads((run / "metrics.json").read_text())
        theirs = TrainConfig.from_dict(given).with_fixed_split()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    logging = dict(log_per_sample=False, checkpoint_every=0, keep_epochs=False)
    same = dataclasses.replace(theirs, **logging) == dataclasses.replace(cfg, **logging)
    return same and len(history) == cfg.epochs
