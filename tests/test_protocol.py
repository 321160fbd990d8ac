"""The reproduction's protocol: accuracy rules and the paired test, per-class heads and budgets,
verdicts, the public code's forgetting window, and the public setting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lpntk.analysis import class_cluster_stats, class_heads, farthest_point_clusters
from lpntk.compare import FULL, rule_summary
from lpntk.dynamics import easy_in_largest_cluster
from lpntk.prune import balanced_quotas, head_budget, prune_redundant_head
from lpntk.samples import SampleKernel
from lpntk.verdicts import Check, holds, judge_comparison, pivot

from .test_analysis import random_features
from .test_cli import needs_mnist


def runs_of(sets: dict) -> list:
    """runs.csv rows: name -> per seed (best-validation test acc, last, max over epochs)."""
    return [
        {"subset": name, "seed": s, "test_acc": a, "last_test_acc": b, "max_test_acc": c}
        for name, values in sets.items()
        for s, (a, b, c) in enumerate(values)
    ]


def test_each_accuracy_rule_and_test_against_scipy():
    full = [(0.90, 0.91, 0.93), (0.92, 0.90, 0.94), (0.91, 0.92, 0.92), (0.95, 0.93, 0.96)]
    pruned = [(0.93, 0.90, 0.95), (0.94, 0.95, 0.95), (0.90, 0.91, 0.97), (0.97, 0.96, 0.97)]
    runs = runs_of({FULL: full, "pruned": pruned})
    for rule, col in (("best_val", 0), ("last", 1), ("max_test", 2)):
        rows = {r["subset"]: r for r in rule_summary(runs, rule)}
        f, p = np.array([v[col] for v in full]), np.array([v[col] for v in pruned])
        row = rows["pruned"]
        assert row["mean"] == pytest.approx(p.mean()) and row["std"] == pytest.approx(p.std(ddof=1))
        assert rows[FULL]["mean"] == pytest.approx(f.mean())
        d = f - p  # paired by seed, by hand: t = mean(d) / (sd(d) / sqrt(n)), n - 1 df
        assert row["paired_t"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(4)))
        assert row["paired_p"] == pytest.approx(2 * stats.t.sf(abs(row["paired_t"]), 3))
        assert row["paired_df"] == 3
        assert row["student_t"] == pytest.approx(stats.ttest_ind(f, p).statistic)
        assert row["student_df"] == 6
        va, vb = f.var(ddof=1) / 4, p.var(ddof=1) / 4  # Welch-Satterthwaite
        assert row["welch_df"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 3))
        assert row["welch_t"] == pytest.approx((f.mean() - p.mean()) / np.sqrt(va + vb))


def test_paired_test_uses_only_seeds_both_sets_have_and_other_references():
    runs = runs_of({FULL: [(0.9, 0.9, 0.9), (0.8, 0.8, 0.8), (0.7, 0.7, 0.7)]})
    runs += [
        {"subset": "b", "seed": s, "test_acc": v, "last_test_acc": v, "max_test_acc": v}
        for s, v in ((1, 0.85), (2, 0.70))
    ]
    row = {r["subset"]: r for r in rule_summary(runs, "best_val")}["b"]
    assert row["paired_df"] == 1  # seeds 1 and 2 only
    t = stats.ttest_rel([0.8, 0.7], [0.85, 0.70])
    assert row["paired_t"] == pytest.approx(t.statistic)
    against = {r["subset"]: r for r in rule_summary(runs, "best_val", against="b")}
    assert against[FULL]["student_t"] == pytest.approx(-row["student_t"])
    with pytest.raises(ValueError, match="rule"):
        rule_summary(runs, "best_test")
    with pytest.raises(ValueError, match="'nope'"):
        rule_summary(runs, against="nope")


def test_verdicts_follow_the_checks():
    base = [(0.90 + 0.001 * s, 0.9, 0.9) for s in range(6)]
    better = [(0.95 + 0.0013 * s, 0.9, 0.9) for s in range(6)]
    worse = [(0.80 + 0.002 * s, 0.9, 0.9) for s in range(6)]
    runs = runs_of({FULL: base, "up": better, "down": worse})
    rows = {r["subset"]: r for r in rule_summary(runs)}
    assert holds(rows["up"], "better", "welch") and not holds(rows["up"], "worse", "welch")
    assert holds(rows["down"], "worse", "paired") and not holds(rows["down"], "kept", "welch")
    assert holds(rows["up"], "kept", "student")
    readings = {
        "faithful": [Check("not worse", "up", "kept"), Check("better", "up", "better")],
        "variant": [Check("not worse", "down", "kept"), Check("better", "down", "better")],
        "half": [Check("up not worse", "up", "kept"), Check("down better", "down", "better")],
    }
    j = judge_comparison(runs, readings, {"up": 0.8, "down": 0.7})
    assert j["verdict"]["verdict"] == "reproduced" and j["verdict"]["kept"] == {"up": 0.8}
    assert (j["verdict"]["rule"], j["verdict"]["test"]) == ("best_val", "welch")
    by = {(r["reading"], r["rule"], r["test"]): r["verdict"] for r in j["sensitivity"]}
    assert by[("variant", "best_val", "welch")] == "not reproduced"
    assert by[("half", "best_val", "paired")] == "partly reproduced"
    # the last and max_test rules are all 0.9: no variance, no test statistic
    assert by[("faithful", "last", "welch")] == "not tested"
    assert holds({"welch_t": float("nan"), "welch_p": float("nan")}, "kept", "welch") is None
    diff, ci = j["verdict"]["differences"]["up"]
    ref = stats.ttest_ind([b[0] for b in better], [b[0] for b in base], equal_var=False)
    assert diff == pytest.approx(0.05 + 0.0003 * 2.5) and ci == pytest.approx(
        list(ref.confidence_interval())
    )
    assert len(j["sensitivity"]) == 3 * 3 * 3 and len(j["checks"]) == 3 * 3 * 3 * 2
    assert len(pivot(j["sensitivity"])) == 9 and {"welch", "student", "paired"} <= set(
        pivot(j["sensitivity"])[0]
    )
    untested = judge_comparison(runs, readings, {}, untestable={"up"})
    assert untested["verdict"]["verdict"] == "not tested"
    weak = runs_of({FULL: [(0.3, 0.3, 0.3), (0.31, 0.3, 0.3)], "up": [(0.4, 0.4, 0.4)] * 2})
    j = judge_comparison(weak, {"r": [Check("better", "up", "better")]}, {})
    assert j["verdict"]["verdict"] == "inconclusive"


def test_class_heads_and_their_statistics():
    cluster = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 5])
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    heads = class_heads(cluster, labels)
    np.testing.assert_array_equal(heads[0], [0, 1, 2])
    np.testing.assert_array_equal(heads[1], [7, 8, 9, 10])
    s = class_cluster_stats(cluster, labels)
    assert s["per_class"]["0"] == {
        "samples": 6,
        "clusters": 3,
        "head_size": 3,
        "head_share": 0.5,
        "more_than_one": 2,
        "singletons": 1,
    }
    assert s["per_class"]["1"]["head_share"] == pytest.approx(4 / 6)
    assert s["heads_share_of_all"] == pytest.approx(7 / 12)
    assert s["more_than_one_besides_head_median"] == 0.5  # 1 and 0
    # ties: the cluster made first
    np.testing.assert_array_equal(class_heads([3, 3, 1, 1], [0, 0, 0, 0])[0], [2, 3])


def test_easy_samples_in_their_own_class_head():
    cluster = np.array([0, 0, 1, 2, 2, 3, 4, 4, 4, 5])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    # heads: class 0 -> cluster 0 (positions 0, 1; first of the ties), class 1 -> cluster 4
    difficulty = np.array([0.1, 5, 6, 7, 8, 9, 0.2, 10, 11, 12])
    r = easy_in_largest_cluster(difficulty, cluster, 0.2, labels=labels)
    assert r["per_class"] and r["easiest"] == 2 and r["share_in_largest"] == 1.0
    # stratified by class: one of the easiest in each class, heads of 2 of 5 and 3 of 5
    assert r["expected_share"] == pytest.approx((2 / 5 + 3 / 5) / 2)
    assert r["p_value"] == pytest.approx(2 / 5 * 3 / 5)
    whole = easy_in_largest_cluster(difficulty, cluster, 0.2)  # the largest: cluster 4
    assert not whole["per_class"] and whole["share_in_largest"] == 0.5
    assert whole["largest_cluster"] == 4 and whole["p_value"] == pytest.approx(
        stats.hypergeom.sf(0, 10, 3, 2)  # 1 of the 2 easiest in cluster 4 (3 of 10)
    )
    with pytest.raises(ValueError, match="labels"):
        easy_in_largest_cluster(difficulty, cluster, 0.2, labels=labels[:3])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.integers(0, 200))
def test_balanced_quotas(capacities, total):
    if total > sum(capacities):
        with pytest.raises(ValueError):
            balanced_quotas(total, capacities)
        return
    q = balanced_quotas(total, capacities)
    assert sum(q) == total and all(0 <= a <= c for a, c in zip(q, capacities, strict=True))
    room = [a for a, c in zip(q, capacities, strict=True) if a < c]  # groups not filled up
    assert not room or max(room) - min(room) <= 1 and min(room) >= max(q) - 1


def test_balanced_random_subset_draws_equally_from_each_class():
    from lpntk.prune import random_subset

    labels = np.repeat([0, 1, 2], [5, 40, 60])
    indices = np.arange(1000, 1105)[::-1]  # original indices in another order
    p = random_subset(indices, 50, seed=3, labels=labels)
    got = np.bincount(labels[np.searchsorted(-indices, -p.kept)], minlength=3)
    assert got.tolist() == balanced_quotas(50, [5, 40, 60]) == [5, 22, 23]
    assert len(np.unique(p.kept)) == 50 and p.manifest["parameters"]["balanced"] is True
    again = random_subset(indices, 50, seed=3, labels=labels).kept
    np.testing.assert_array_equal(p.kept, again)
    with pytest.raises(ValueError, match="label per index"):
        random_subset(indices, 50, labels=labels[:-1])


def test_per_class_head_budget_is_balanced_over_the_classes_own_heads():
    X = random_features(n=90, k=3, seed=4)
    c = farthest_point_clusters(X, 0.2, per_class=True, progress=False)
    heads = class_heads(c.cluster, X.labels)
    p = head_budget(X, 0.1, 0.2, per_class=True, progress=False)
    kept = np.flatnonzero(np.isin(X.indices, p.kept))
    allowed = np.concatenate(list(heads.values()))
    assert set(kept) <= set(allowed.tolist()) and len(kept) == 9
    expected = balanced_quotas(9, [len(h) for h in heads.values()])
    assert np.bincount(X.labels[kept], minlength=3).tolist() == expected
    assert p.manifest["parameters"]["per_class"] is True
    again = head_budget(X, 0.1, 0.2, per_class=True, progress=False, clustering=c)
    np.testing.assert_array_equal(again.kept, p.kept)  # a given clustering is the same one


def test_per_class_head_pruning_drops_from_each_class_head():
    X = random_features(n=90, k=3, seed=5)
    p = prune_redundant_head(X, 0.5, 0.2, per_class=True, redundant=False, progress=False)
    c = farthest_point_clusters(X, 0.2, per_class=True, progress=False)
    dropped = np.flatnonzero(~np.isin(X.indices, p.kept))
    for head in class_heads(c.cluster, X.labels).values():
        assert np.isin(dropped, head).sum() == round(0.5 * len(head))
    assert len(dropped) == sum(
        round(0.5 * len(h)) for h in class_heads(c.cluster, X.labels).values()
    )
    m = p.manifest["parameters"]
    assert (m["per_class"], m["redundant"], m["rule"]) == (True, False, None)
    q = prune_redundant_head(X, 0.1, 0.2, per_class=True, within_class=True, progress=False)
    assert q.manifest["parameters"]["within_class"] is True and len(q.kept) < X.n


def test_sample_kernel_searches_redundancy_once_for_every_budget(monkeypatch):
    import lpntk.prune as prune

    X = random_features(n=60, seed=7)
    sk = SampleKernel(features=X, progress=False)
    calls = []
    search = prune.redundant_samples

    def counted(*a, **k):
        calls.append(1)
        return search(*a, **k)

    monkeypatch.setattr("lpntk.samples.redundant_samples", counted)
    alone = prune.prune_redundant(X, size=50, within_class=True, progress=False)
    for size in (55, 50, 45):
        sk.prune("redundant", size=size, within_class=True)
    assert len(calls) == 1
    np.testing.assert_array_equal(
        sk.prune("redundant", size=50, within_class=True).kept, alone.kept
    )
    with pytest.raises(ValueError, match="size"):
        sk.prune("redundant", size=10_000, within_class=False)
    assert len(calls) == 1  # refused before any search


@pytest.mark.parametrize("warmup", [0, 2])
def test_momentum_window_matches_torch_sgd_and_tracks_the_previous_batch(warmup):
    from lpntk.prediction import sgd_window, step_scores, window_scores

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = model.double()
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    ref = ref.double()
    ref.load_state_dict(model.state_dict())
    batches = [
        (torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))) for _ in range(6)
    ]
    w = sgd_window(
        model, None, None, batches, lr=0.1, momentum=0.9, weight_decay=0.01, warmup=warmup
    )
    steps = 5 - warmup
    assert w["before"].shape == w["after"].shape == w["predicted_entk"].shape == (steps, 5, 3)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for t, (x, y) in enumerate(batches):
        if t > warmup:  # step t tracks batch t - 1, after the warm-up
            np.testing.assert_allclose(
                w["before"][t - 1 - warmup], ref(batches[t - 1][0]).detach(), rtol=1e-12
            )
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
        if t > warmup:
            np.testing.assert_allclose(
                w["after"][t - 1 - warmup], ref(batches[t - 1][0]).detach(), rtol=1e-12
            )
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    labels = torch.stack([y for _, y in batches[warmup:-1]]).numpy()
    kinds = ("entk", "lpntk", "pntk")
    s = window_scores({**w, "labels": labels})
    same = step_scores(w["before"], w["after"], {k: w[f"predicted_{k}"] for k in kinds}, labels)
    assert json.dumps(s, sort_keys=True) == json.dumps(same, sort_keys=True)  # NaNs too
    assert "entk_softmax" in s and s["at_risk"] == int((w["before"].argmax(-1) == labels).sum())


def test_softmax_predictor_flags_by_first_order_probabilities():
    from lpntk.prediction import step_scores

    before = np.array([[[2.0, 1.9, -3.0]]])  # (T=1, n=1, K=3), correct for label 0
    after = np.array([[[1.0, 2.5, -3.0]]])  # forgotten
    dz = after - before
    s = step_scores(before, after, {"entk": dz}, np.array([0]))
    q = np.exp(before) / np.exp(before).sum()
    flipped = (q + q * (dz - (q * dz).sum())).argmax() != 0
    assert s["entk"]["tp"] == 1 and s["entk_softmax"]["tp"] == int(flipped)
    assert s["events"] == 1


def test_the_public_setting(tmp_path):
    from lpntk.reproduce import PUBLIC, Reproduction, setup

    s = setup("mnist", setting="public")
    t = s.train
    assert {k: getattr(t, k) for k in PUBLIC} == PUBLIC  # the public code's network and recipe
    values = "model lr momentum weight_decay batch_size schedule step_size gamma epochs"
    assert [PUBLIC[k] for k in values.split()] == [
        "mnist_cnn",
        0.1,
        0.9,
        5e-4,
        128,
        "step",
        2,
        0.7,
        30,
    ]
    assert t.train_size is None and s.table1 == t  # the window starts from its own training
    assert s.window == {"iterations": 30, "tracked": 1280, "window_lr": 1e-3}
    r = setup("mnist", setting="public", reduced=True)
    assert r.name == "mnist-mnist_cnn-public-reduced" and r.reduced
    assert (r.train.train_size, r.train.epochs) == (10000, 6)
    assert r.window == {"iterations": 10, "tracked": 256, "window_lr": 1e-3}
    with pytest.raises(ValueError, match="--setting paper"):  # its own MLPs: the paper's
        Reproduction(r, tmp_path, progress=False).run("theorem1")
    assert not r.whole_set_readings and s.whole_set_readings  # reduced: LeNet-5 has them
    assert "whole_set_readings" not in s.to_dict() and r.to_dict()["whole_set_readings"] is False
    assert len({s.key(), r.key(), setup("mnist").key(), setup("mnist", "mnist_cnn").key()}) == 4
    assert setup("mnist").per_class and setup("mnist").within_class  # the faithful protocol
    for bad, match in (
        ({"dataset": "cifar10", "setting": "public"}, "MNIST"),
        ({"setting": "public", "model": "lenet5"}, "mnist_cnn"),
        ({"setting": "nope"}, "setting"),
    ):
        with pytest.raises(ValueError, match=match):
            setup(**bad)


@needs_mnist
def test_cli_prune_per_class_and_across_classes(checkpoint, tmp_path):
    from lpntk.cli import main

    base = f"prune --checkpoint {checkpoint} --no-progress"
    out = tmp_path / "budget"
    argv = f"{base} --out {out} --strategy head_budget --budget 0.05 --per-class"
    assert main(argv.split()) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["parameters"]["per_class"] is True and m["kept"] == 30
    assert main(f"{base} --out {tmp_path / 'w'} --strategy redundant".split()) == 0
    m = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert m["parameters"]["within_class"] is True  # the default
    argv = f"{base} --out {tmp_path / 'a'} --strategy redundant --across-classes"
    assert main(argv.split()) == 0
    assert (
        json.loads((tmp_path / "a" / "manifest.json").read_text())["parameters"]["within_class"]
        is False
    )
    argv = (
        f"{base} --out {tmp_path / 'h'} --strategy redundant_head --keep-redundant "
        "--per-class --fraction 0.5"
    )
    assert main(argv.split()) == 0
    m = json.loads((tmp_path / "h" / "manifest.json").read_text())["parameters"]
    assert (m["redundant"], m["per_class"], m["fraction"]) == (False, True, 0.5)
    assert (
        main(f"{base} --out {tmp_path / 'r'} --strategy random --size 5 --per-class".split()) == 2
    )
