"""Injected label noise, for measuring label-error detection against known flips.

``uniform``: ``round(rate N)`` samples drawn uniformly, each given a label drawn uniformly from
the other K - 1 classes. ``pairs`` (class-dependent): ``round(rate N)`` samples drawn uniformly
from the classes that have a confusable partner, each given that partner's label; the partners
are Patrini et al. 2017's (MNIST 2->7, 3->8, 5<->6, 7->1; CIFAR-10 truck->automobile,
bird->airplane, deer->horse, cat<->dog), or any given ``pairs``. Every chosen label changes.
The rate is a share of all N samples, so pair noise is concentrated on the paired classes: at
20% on MNIST about 40% of the 2s, 3s, 5s, 6s and 7s flip (Patrini et al. flip a share of each
paired class instead).
"""

from __future__ import annotations

import numbers

import numpy as np

from ._errors import ConfigError

KINDS = ("uniform", "pairs")
CONFUSABLE = {
    "mnist": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
}


def _pair_map(pairs) -> dict[int, int]:
    """``{from: to}`` from a map or ``[[from, to], ...]``; a clear error for anything else."""
    try:
        items = pairs.items() if isinstance(pairs, dict) else list(pairs)
        out = {}
        for item in items:
            a, b = item
            if not all(isinstance(v, numbers.Integral) and v >= 0 for v in (a, b)) or a == b:
                raise ValueError
            out[int(a)] = int(b)
    except (TypeError, ValueError):
        raise ConfigError(
            f"expected pairs as {{from: to}} or [[from, to], ...] of two different class ids; "
            f"got {pairs!r}",
            param="label_noise",
        ) from None
    if not out:
        raise ConfigError("expected at least one confusable pair; got none", param="label_noise")
    return out


def check_noise(noise: dict | None, dataset: str | None = None) -> None:
    """Raise unless ``noise`` is None or ``{"rate": r, "kind": k, "seed": s[, "pairs": ...]}``."""
    if noise is None:
        return
    if not isinstance(noise, dict) or set(noise) - {"rate", "kind", "seed", "pairs"}:
        raise ConfigError(
            f"expected label_noise as a dict with rate, kind, seed (and pairs); got {noise!r}",
            param="label_noise",
        )
    rate, kind, seed = noise.get("rate"), noise.get("kind", "uniform"), noise.get("seed", 0)
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        raise ConfigError(f"expected a rate in [0, 1); got {rate!r}", param="label_noise")
    if kind not in KINDS:
        raise ConfigError(
            f"unknown noise kind {kind!r}; expected one of {', '.join(KINDS)}", param="label_noise"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"expected a noise seed >= 0; got {seed!r}", param="label_noise")
    if noise.get("pairs") is not None:
        _pair_map(noise["pairs"])
    elif kind == "pairs" and dataset not in CONFUSABLE:
        raise ConfigError(
            f"class-dependent noise on {dataset} needs its confusable pairs: label_noise "
            "pairs=[[from, to], ...] (class ids of the dataset)",
            param="label_noise",
        )


def flip_labels(
    labels, rate: float, kind: str = "uniform", seed: int = 0, num_classes=None, pairs=None
) -> np.ndarray:
    """The labels with ``round(rate N)`` of them flipped (see the module doc); a new array.
    ``pairs``: a ``{from: to}`` map or ``[[from, to], ...]`` of labels, for ``kind="pairs"``."""
    labels = np.asarray(labels)
    check_noise({"rate": rate, "kind": kind, "seed": seed, "pairs": pairs}, "these labels")
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    rng = np.random.default_rng(seed)
    count = int(round(rate * len(labels)))
    noisy = labels.copy()
    if kind == "uniform":
        chosen = rng.choice(len(labels), size=count, replace=False)
        shift = rng.integers(1, k, size=count)  # a uniform other class
        noisy[chosen] = (labels[chosen] + shift) % k
        return noisy
    partner = _pair_map(pairs)
    if max(max(partner), max(partner.values())) >= k:
        raise ConfigError(
            f"confusable pairs {partner} name a class outside 0..{k - 1}", param="label_noise"
        )
    eligible = np.flatnonzero(np.isin(labels, list(partner)))
    if count > len(eligible):
        raise ConfigError(
            f"{count} flips asked for, but only {len(eligible)} samples are of a class with a "
            "confusable partner",
            param="label_noise",
        )
    chosen = rng.choice(eligible, size=count, replace=False)
    noisy[chosen] = [partner[int(c)] for c in labels[chosen]]
    return noisy


def noisy_dataset(data, noise: dict | None, dataset: str):
    """``data`` (an ArrayDataset) with ``noise`` applied to its labels (None: ``data``). The
    flips depend only on the labels and the seed, so every split carved from it agrees. Pairs
    name class ids of the dataset (as ``classes`` does); with ``classes``, the pairs whose two
    classes are both kept are used."""
    if noise is None or noise.get("rate", 0) == 0:
        return data
    kind = noise.get("kind", "uniform")
    pairs = None
    if kind == "pairs":
        given = noise.get("pairs")
        wanted = _pair_map(CONFUSABLE[dataset] if given is None else given)
        label_of = {c: i for i, c in enumerate(data.class_ids)}
        pairs = {
            label_of[a]: label_of[b] for a, b in wanted.items() if a in label_of and b in label_of
        }
        if not pairs:
            raise ConfigError(
                f"none of the confusable pairs {wanted} has both classes among the kept classes "
                f"{list(data.class_ids)}",
                param="label_noise",
            )
    labels = flip_labels(
        data.labels, noise["rate"], kind, noise.get("seed", 0), data.num_classes, pairs
    )
    return data._derive(np.arange(len(data)), labels=labels)
