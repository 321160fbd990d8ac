"""Pruning strategies: sorted unique subsets of the original indices, reproducible by seed, with
complete manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lpntk.analysis import drop_redundant, farthest_point_clusters, redundant_samples
from lpntk.kernel import Features, Piece
from lpntk.prune import (
    hardest,
    head_budget,
    prune_redundant,
    prune_redundant_head,
    random_subset,
    write_pruned,
)

from .test_analysis import random_features


def check(pruned, X, kernel=True):
    kept = pruned.kept
    assert kept.dtype.kind == "i" and (np.diff(kept) > 0).all()  # sorted, unique
    assert set(kept.tolist()) <= set(X.indices.tolist())
    m = pruned.manifest
    assert m["n"] == X.n and m["kept"] == len(kept) and m["dropped"] == X.n - len(kept)
    assert m["strategy"] and "parameters" in m and "created" in m and "lpntk" in m
    if kernel:
        assert m["source"]["kind"] == "lpntk" and "model_hash" in m["source"]


def test_prune_redundant_matches_the_drop_rule():
    X = random_features(n=80, seed=11)
    for rule in ("all", "cover"):
        p = prune_redundant(X, rule, progress=False)
        check(p, X)
        keep = drop_redundant(redundant_samples(X, progress=False), rule)
        np.testing.assert_array_equal(p.kept, np.sort(X.indices[keep]))
        assert p.manifest["parameters"]["rule"] == rule


def test_redundant_to_a_size_drops_the_most_redundant_and_keeps_their_witnesses():
    from lpntk.analysis import Redundancy

    def red(witness):
        flags = np.array([True, True, False, True, False])
        wk, sk = np.array([3.0, 5, np.nan, 2.4, np.nan]), np.array([1.0, 2, 4, 2, 1])
        return Redundancy(flags, np.array(witness), wk, sk)

    # ratios kappa(x, witness) / kappa(x, x): 3, 2.5, -, 1.2, -
    chain = red([1, 2, -1, 0, -1])
    np.testing.assert_array_equal(drop_redundant(chain, size=4), [0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="at most 1 redundant samples can be dropped.*at least 4"):
        drop_redundant(chain, size=3)  # 1 is 0's witness; 3's witness, 0, is gone
    other = red([1, 2, -1, 2, -1])
    np.testing.assert_array_equal(drop_redundant(other, size=3), [0, 1, 1, 0, 1])
    with pytest.raises(ValueError, match="cover rule"):
        drop_redundant(other, "all", size=3)
    with pytest.raises(ValueError, match="1..5"):
        drop_redundant(other, size=0)
    # most redundant first blocks itself: w (ratio 5) witnesses a1..a10 (ratio 2); v witnesses w
    star = Redundancy(
        np.array([False, True] + [True] * 10),
        np.array([-1, 0] + [1] * 10),
        np.array([np.nan, 25.0] + [2.0] * 10),
        np.array([10.0, 5.0] + [1.0] * 10),
    )
    np.testing.assert_array_equal(drop_redundant(star, size=11), [1, 0] + [1] * 10)
    np.testing.assert_array_equal(drop_redundant(star, size=2), [1, 1] + [0] * 10)
    with pytest.raises(ValueError, match="at most 10 redundant samples.*at least 2"):
        drop_redundant(star, size=1)
    X = random_features(n=80, seed=11)
    r = redundant_samples(X, progress=False)
    size = 80 - int(r.redundant.sum()) // 2
    p = prune_redundant(X, size=size, progress=False)
    check(p, X)
    assert len(p.kept) == size and p.manifest["parameters"]["size"] == size
    dropped = np.flatnonzero(~np.isin(X.indices, p.kept))
    assert r.redundant[dropped].all() and np.isin(X.indices[r.witness[dropped]], p.kept).all()


def spread_features(n=120, p=8, seed=0) -> Features:
    """Random Gaussian features: few redundant samples, so clusters remain to prune."""
    F = np.random.default_rng(seed).normal(size=(n, 1, p))
    meta = {"outputs": 1, "kind": "lpntk", "dtype": "float64", "strategy": "factored"}
    piece = Piece("d", "dense", {"F": (1, p)})
    return Features([piece], {"0.F": F}, np.arange(n) % 3, np.arange(n) * 2, meta)


def test_redundant_head_drops_a_fraction_of_the_largest_cluster():
    X = spread_features(seed=12)
    base = prune_redundant(X, progress=False)
    p = prune_redundant_head(X, fraction=0.5, clusters=5, seed=3, progress=False)
    check(p, X)
    head = p.manifest["parameters"]["head_size"]
    assert head >= 4 and len(base.kept) > 60
    assert len(base.kept) - len(p.kept) == round(0.5 * head)
    assert set(p.kept) <= set(base.kept)
    again = prune_redundant_head(X, fraction=0.5, clusters=5, seed=3, progress=False)
    np.testing.assert_array_equal(p.kept, again.kept)  # reproducible by seed
    other = prune_redundant_head(X, fraction=0.5, clusters=5, seed=4, progress=False)
    assert not np.array_equal(p.kept, other.kept)


def test_head_budget_samples_only_the_largest_cluster():
    X = random_features(n=120, seed=13)
    p = head_budget(X, 0.1, clusters=4, seed=0, progress=False)
    check(p, X)
    assert len(p.kept) == 12
    c = farthest_point_clusters(X, 4, progress=False)
    head = set(X.indices[c.cluster == np.argmax(c.sizes)].tolist())
    assert set(p.kept.tolist()) <= head
    with pytest.raises(ValueError, match="larger than the largest cluster"):
        head_budget(X, 0.99, clusters=4, progress=False)


def test_random_subset_and_files(tmp_path):
    X = random_features(n=50, seed=14)
    p = random_subset(X.indices, 20, seed=1)
    check(p, X, kernel=False)
    assert len(p.kept) == 20 and p.manifest["parameters"] == {"size": 20, "seed": 1}
    np.testing.assert_array_equal(p.kept, random_subset(X.indices, 20, seed=1).kept)
    assert not np.array_equal(p.kept, random_subset(X.indices, 20, seed=2).kept)
    out = write_pruned(p, tmp_path / "pruned")
    np.testing.assert_array_equal(np.load(out / "kept.npy"), p.kept)
    assert (out / "kept.csv").read_text().split() == ["index", *map(str, p.kept)]
    assert json.loads((out / "manifest.json").read_text()) == p.manifest
    for bad in (0, 51, 2.5):
        with pytest.raises(ValueError, match="size"):
            random_subset(X.indices, bad)


def test_hardest_keeps_the_largest_scores_in_original_order():
    from lpntk.scores import Scores

    indices = np.array([40, 10, 30, 20, 50])
    score = np.array([0.1, 0.9, 0.5, 0.5, 0.2])
    s = Scores(indices, np.zeros(5, int), score, score[None], {"score": "el2n", "seeds": [0]})
    p = hardest(s, 3)
    np.testing.assert_array_equal(p.kept, [10, 20, 30])  # 0.9, then the tie 0.5 (20 and 30)
    np.testing.assert_array_equal(hardest(s, 2).kept, [10, 20])  # a tie: the smaller index
    m = p.manifest
    assert m["strategy"] == "el2n" and m["kept"] == 3 and m["dropped"] == 2
    assert m["parameters"] == {"size": 3} and m["source"] == {"seeds": [0]}
    with pytest.raises(ValueError, match="size"):
        hardest(s, 6)


def test_a_rule_that_keeps_less_than_half_says_so():
    import warnings

    F = np.zeros((10, 1, 2))
    F[:, 0, 0] = np.arange(1, 11)  # collinear: every sample but the largest is redundant
    meta = {"outputs": 1, "kind": "lpntk", "dtype": "float64", "strategy": "factored"}
    X = Features(
        [Piece("d", "dense", {"F": (1, 2)})], {"0.F": F}, np.zeros(10, int), np.arange(10), meta
    )
    with pytest.warns(UserWarning, match=r"kept 1 of 10 samples \(10%\), less than half"):
        assert len(prune_redundant(X, "all", progress=False).kept) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a budget: no warning
        assert len(prune_redundant(X, size=4, progress=False).kept) == 4
        assert len(prune_redundant(spread_features(), progress=False).kept) > 60
