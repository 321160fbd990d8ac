"""One front object for a model and a dataset: the kernel's features and every analysis of them.

>>> sk = SampleKernel(model, dataset)                    # doctest: +SKIP
>>> sk.redundant().fraction, sk.clusters(0.1).sizes.max()  # doctest: +SKIP
>>> sk.prune("redundant", rule="cover").kept             # doctest: +SKIP
>>> sk.label_issues().top(50)                            # doctest: +SKIP
>>> sk.table().head()                                    # doctest: +SKIP

Results are computed on first use and kept; :meth:`SampleKernel.table` gathers the ones computed
so far into one row per sample, in original dataset order.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ._errors import ConfigError
from ._frame import original, per_sample_frame
from .analysis import (
    Clusters,
    LabelIssues,
    Redundancy,
    Relationships,
    Witnesses,
    farthest_point_clusters,
    label_issues,
    redundant_samples,
    relationships,
)
from .analysis.label_issues import DESIGN, NEIGHBOURS
from .analysis.redundancy import check_size
from .kernel import Features, compute_features, diagonal, row_max
from .prune import (
    STRATEGIES,
    Pruned,
    hardest,
    head_budget,
    prune_redundant,
    prune_redundant_head,
    random_subset,
)


class SampleKernel:
    """The ``kind`` kernel (lpntk, pntk or loss) of ``model`` on ``dataset`` and its analyses.

    ``model`` is any classifier returning logits; ``dataset`` any map-style Dataset or in-order
    DataLoader (see :func:`~lpntk.kernel.compute_features`, whose options ``feature_options``
    are passed on: ``out_dir``, ``strategy``, ``dtype``, ``fields``, ``device``, ...). Or give
    finished ``features`` instead of a model and dataset. ``client``: a
    ``dask.distributed.Client``; the features and every analysis then run on its workers.
    """

    def __init__(
        self,
        model=None,
        dataset=None,
        kind: str = "lpntk",
        *,
        features: Features | None = None,
        progress: bool = True,
        client=None,
        **feature_options,
    ):
        if features is None:
            if model is None or dataset is None:
                raise ConfigError("expected a model and a dataset, or finished features")
            features = compute_features(
                model, dataset, kind, progress=progress, client=client, **feature_options
            )
        self._source = (model, dataset, feature_options)  # for the eNTK of label_issues
        if features.m != 1:
            raise ConfigError("the analyses need a scalar kind (lpntk, pntk, loss), not entk")
        self.features, self.progress, self.client = features, progress, client
        self._results: dict = {}

    @classmethod
    def from_checkpoint(
        cls, checkpoint, split: str = "train", data_dir=None, kind: str = "lpntk", **options
    ) -> SampleKernel:
        """The kernel of a checkpoint written by lpntk train on its own ``split`` samples."""
        from .kernel_stage import checkpoint_data
        from .training import load_checkpoint

        model, ckpt = load_checkpoint(checkpoint)
        return cls(model, checkpoint_data(ckpt, split, data_dir=data_dir), kind, **options)

    def _cached(self, key, compute):
        if key not in self._results:
            self._results[key] = compute()
        return self._results[key]

    @property
    def indices(self) -> np.ndarray:
        return self.features.indices

    def self_kernel(self) -> np.ndarray:
        """kappa(x, x) of every sample, ``(N,)`` in store order."""
        return self._cached("diag", lambda: diagonal(self.features).double().numpy())

    def redundant(
        self, one_sided: bool = False, within_class: bool = False, found: Witnesses | None = None
    ) -> Redundancy:
        """Redundant samples and their witnesses (Sec. 4.2); see
        :func:`~lpntk.analysis.redundant_samples`. ``found``: a :class:`~lpntk.analysis.Witnesses`
        of this kernel's features and variant, fed by a pass shared with other reducers; its
        result is kept instead of a search of its own."""
        key = ("redundant", one_sided, within_class)
        if found is not None:
            if (found.one_sided, found.within_class) != key[1:] or not np.array_equal(
                found.indices, self.indices
            ):
                raise ConfigError(
                    "the witnesses are of another variant or other samples; expected "
                    f"Witnesses(features, one_sided={one_sided}, within_class={within_class}) of "
                    "this kernel's features",
                    param="found",
                )
            self._results[key] = found.redundancy(self.self_kernel())
        return self._cached(
            key,
            lambda: redundant_samples(
                self.features, one_sided, within_class, progress=self.progress, client=self.client
            ),
        )

    def relationships(self, t: float = 0.75, eps: float = 0.05, also=()) -> Relationships:
        """Interchangeable, contradictory and unrelated partners per sample (App. C). ``also``:
        more row reducers to feed in the same pass; given, the counts are computed again."""
        key = ("relationships", t, eps)
        if also:
            self._results.pop(key, None)
        return self._cached(
            key,
            lambda: relationships(
                self.features, t, eps, progress=self.progress, also=also, client=self.client
            ),
        )

    def clusters(
        self, m: int | float = 0.1, measure: str = "lpntk", per_class: bool = False
    ) -> Clusters:
        """Farthest point clustering (Alg. 3) with ``m`` centroids (a count or a fraction)."""
        return self._cached(
            ("clusters", m, measure, per_class),
            lambda: farthest_point_clusters(
                self.features, m, measure, per_class, progress=self.progress, client=self.client
            ),
        )

    def label_issues(
        self,
        k: int = NEIGHBOURS,
        design: str = DESIGN,
        entk: Features | None = None,
        out_dir=None,
    ) -> LabelIssues:
        """A label-error score, rank and suggested label for every sample; see
        :func:`~lpntk.analysis.label_issues`. It needs the eNTK features of the same model and
        samples: ``entk``, or computed here from the model and dataset this object was built
        with (stored in ``out_dir`` when given, else in memory)."""

        def compute():
            nonlocal entk
            if entk is None:
                model, dataset, options = self._source
                if model is None:
                    raise ConfigError(
                        "label issues need the eNTK features of the model: give entk="
                        "compute_features(model, dataset, 'entk'), or build this SampleKernel "
                        "from a model and a dataset",
                        param="entk",
                    )
                options = dict(options, out_dir=out_dir)
                entk = compute_features(
                    model, dataset, "entk", progress=self.progress, client=self.client, **options
                )
            same = np.array_equal(entk.indices, self.indices) and np.array_equal(
                entk.labels, self.features.labels
            )
            if not same or entk.meta.get("model_hash") != self.features.meta.get("model_hash"):
                raise ConfigError(
                    "the eNTK features are of other samples, labels or another model than this "
                    "kernel's; expected features of the same model and dataset",
                    param="entk",
                )
            return label_issues(entk, k, design, progress=self.progress, client=self.client)

        return self._cached(("label_issues", k, design), compute)

    def prune(self, strategy: str, **parameters) -> Pruned:
        """Kept original indices by ``strategy`` (one of :data:`lpntk.prune.STRATEGIES`); the
        parameters are those of the matching function in :mod:`lpntk.prune`. ``el2n`` and
        ``forgetting`` need ``scores=`` (from :func:`lpntk.scores.el2n_scores` /
        :func:`~lpntk.scores.forgetting_scores`) and ``size=``."""
        functions = {
            "redundant": prune_redundant,
            "redundant_head": prune_redundant_head,
            "head_budget": head_budget,
            "random": lambda **p: random_subset(self.indices, **p),
            "el2n": partial(self._hardest, strategy="el2n"),
            "forgetting": partial(self._hardest, strategy="forgetting"),
        }
        if strategy not in functions:
            raise ConfigError(
                f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}",
                param="strategy",
            )
        if strategy in ("random", "el2n", "forgetting"):
            call = functions[strategy]
        else:
            parameters.setdefault("progress", self.progress)
            parameters.setdefault("client", self.client)
            self._reuse(strategy, parameters)
            call = partial(functions[strategy], self.features)
        try:
            return call(**parameters)
        except TypeError as e:
            raise ConfigError(f"strategy {strategy!r}: {e}", param="strategy") from None

    def compare(self, recipe, pruned: dict, seeds=range(5), out_dir="runs/compare", **options):
        """Retrain on the full set and on each pruned set of ``pruned`` (name -> a
        :class:`~lpntk.prune.Pruned` or original indices) over ``seeds``: t-tests, tables and a
        plot; ``recipe``: your own :class:`~lpntk.compare.Recipe` (or a
        :class:`~lpntk.training.TrainConfig`). ``options`` go to
        :func:`~lpntk.compare.compare_training` (``equal="steps"``, ...)."""
        from .compare import compare_training

        subsets = {}
        for name, kept in pruned.items():
            kept = np.asarray(getattr(kept, "kept", kept))
            foreign = np.setdiff1d(kept, self.indices)
            if len(foreign):
                raise ConfigError(
                    f"pruned set {name!r} holds {len(foreign)} indices that are not samples of "
                    f"this kernel (e.g. {foreign[:5].tolist()})",
                    param="pruned",
                )
            subsets[name] = kept
        return compare_training(recipe, subsets, seeds, out_dir, progress=self.progress, **options)

    def _reuse(self, strategy: str, parameters: dict) -> None:
        """Give a kernel strategy the redundancy search or the clustering it needs from this
        object's results (computed once, shared by every strategy and budget)."""
        if strategy == "redundant" or (
            strategy == "redundant_head" and parameters.get("redundant", True)
        ):
            if strategy == "redundant" and parameters.get("size") is not None:  # before a search
                check_size(parameters.get("rule", "cover"), parameters["size"], self.features.n)
            sides = parameters.get("one_sided", False), parameters.get("within_class", False)
            if "redundancy" not in parameters and all(isinstance(v, bool) for v in sides):
                parameters["redundancy"] = self.redundant(*sides)
        if strategy == "head_budget" and "clustering" not in parameters:
            m, per_class = parameters.get("clusters", 0.1), parameters.get("per_class", False)
            if isinstance(per_class, bool):
                parameters["clustering"] = self.clusters(m, "lpntk", per_class)

    def _hardest(self, scores=None, size=None, strategy="el2n") -> Pruned:
        from .scores import Scores

        if not isinstance(scores, Scores) or scores.parameters.get("score") != strategy:
            raise ConfigError(
                f"strategy {strategy!r} needs scores=, the Scores of "
                f"lpntk.scores.{strategy}_scores; got {type(scores).__name__}",
                param="scores",
            )
        if not np.array_equal(np.sort(scores.indices), np.sort(self.indices)):
            raise ConfigError(
                "the scores are of other samples than this kernel's; expected scores of the "
                "same training split",
                param="scores",
            )
        return hardest(scores, size)

    def redundancy_score(self) -> np.ndarray:
        """``(N,)`` in store order: max over j != i of kappa(x_i, x_j) / kappa(x_i, x_i), a
        continuous redundancy score; above 1 for the samples :meth:`redundant` finds (two-sided,
        across classes; up to rounding at exact ties). One streamed pass over the kernel."""

        def compute():
            values, positions = row_max(self.features, progress=self.progress, client=self.client)
            return values.astype(np.float64) / self.self_kernel(), positions

        return self._cached("nearest", compute)[0]

    def table(self):
        """A pandas DataFrame, one row per sample in original dataset order: ``index``,
        ``label``, ``self_kernel``, ``norm`` and the columns of every analysis computed so far:
        ``redundant`` and ``witness`` (an original index), ``redundancy_score`` and ``nearest``
        (an original index), ``cluster`` and ``cluster_size``, relationship counts,
        ``label_error_score``, ``suggested_label``, ...; each result's ``to_frame()`` has them
        alone. Options other than the defaults are named in a column suffix."""
        X = self.features
        d = self.self_kernel()
        columns = {"label": X.labels, "self_kernel": d, "norm": np.sqrt(d)}
        frames = [per_sample_frame(X.indices, columns)]
        for key, result in self._results.items():
            if key == "nearest":
                score, nearest = result
                frame = per_sample_frame(
                    X.indices,
                    {"redundancy_score": score, "nearest": original(X.indices, nearest)},
                )
            elif isinstance(key, tuple):
                frame = result.to_frame().drop(columns=DROPPED[key[0]], errors="ignore")
                frame = frame.add_suffix(_suffix(key))
            else:
                continue
            frames.append(frame)
        return frames[0].join(frames[1:]).reset_index()


DROPPED = {  # columns of a result's frame that table() leaves out (shown once, or internal)
    "redundant": ["witness_kappa", "self_kappa"],
    "clusters": ["centroid", "similarity"],
    "relationships": [],
    "label_issues": ["label"],
}


def _suffix(key: tuple) -> str:
    """A column suffix for an analysis run with non-default options."""
    defaults = {
        "redundant": (False, False),
        "relationships": (0.75, 0.05),
        "clusters": (0.1, "lpntk", False),
        "label_issues": (NEIGHBOURS, DESIGN),
    }
    options = key[1:]
    if options == defaults[key[0]]:
        return ""
    return "[" + ",".join(str(o) for o in options) + "]"
