"""Verdicts on the paper's claims: what a reproduction shows, and under which reading.

A verdict is one of :data:`VERDICTS`: ``reproduced``, ``partly reproduced`` (some parts of the
claim hold), ``not reproduced``, ``not tested`` (the protocol could not test the claim, e.g. a
budget drawn from a cluster of one class) or ``inconclusive`` (the setting is too weak to test
it: the full set trains to less than :data:`WEAK` test accuracy). Each claim is judged under its
faithful reading (the paper's text; its public code where the text is silent), the default
accuracy rule (the best-validation checkpoint) and Welch's test at :data:`ALPHA`; the
sensitivity rows repeat the judgement under every reading, accuracy rule and test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compare import FULL, RULES, rule_summary

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not tested", "inconclusive")
TESTS = ("welch", "student", "paired")  # two-sample (unequal, equal variances), paired by seed
ALPHA = 0.05
WEAK = 0.5  # a full set below this test accuracy cannot test a pruning claim
RULES_TESTS = (next(iter(RULES)), TESTS[0])  # the headline: best validation, Welch


def combine(holds: list) -> str:
    """All parts hold: reproduced; some: partly; none: not reproduced."""
    if all(holds):
        return "reproduced"
    return "partly reproduced" if any(holds) else "not reproduced"


@dataclass
class Check:
    """One testable part of a claim: training set ``subset`` against ``against`` is expected
    to be ``better``, ``worse`` or ``kept`` (not significantly worse)."""

    name: str
    subset: str
    expect: str
    against: str = FULL


def holds(row: dict, expect: str, test: str) -> bool | None:
    """Whether the summary ``row`` (of :func:`lpntk.compare.rule_summary`; t > 0: the set it
    was compared against is better) meets ``expect`` under ``test`` at :data:`ALPHA`; ``None``
    when the test has no statistic (e.g. both sets without variance): the check is not tested."""
    t, p = row.get(f"{test}_t"), row.get(f"{test}_p")
    if t is None or p is None or np.isnan(t) or np.isnan(p):
        return None
    significant = p < ALPHA
    if expect == "better":
        return bool(significant and t < 0)
    if expect == "worse":
        return bool(significant and t > 0)
    return not (significant and t > 0)


def difference_ci(row: dict, against_mean: float, test: str) -> list | None:
    """The 95% confidence interval of the mean difference (the set less the one it is compared
    against) under ``test``'s t distribution, from its t and df; ``None`` when not defined. A
    ``kept`` check that holds with a wide interval holds for lack of power."""
    from scipy import stats

    t, df = row.get(f"{test}_t"), row.get(f"{test}_df")
    diff = row["mean"] - against_mean
    if t is None or df is None or np.isnan(t) or not np.isfinite(df) or t == 0:
        return None
    half = stats.t.ppf(0.975, df) * abs(diff / t)
    return [diff - half, diff + half]


def judge_comparison(runs: list, readings: dict, kept: dict, untestable=()) -> dict:
    """Judge a prune-and-retrain claim from its training ``runs`` (rows of ``runs.csv``).
    ``readings``: reading -> its :class:`Check` list, the faithful reading first; ``kept``: set
    name -> kept fraction; ``untestable``: sets that cannot test the claim (``not tested``, as
    is a check whose test has no statistic). Returns ``verdict`` (the faithful reading,
    best_val rule, Welch; with each check's mean difference and its 95% interval),
    ``sensitivity`` (one row per reading, rule and test) and ``checks`` (one row per check,
    rule and test)."""
    sensitivity, checks = [], []
    for reading, parts in readings.items():
        for rule in RULES:
            by = {
                a: {r["subset"]: r for r in rule_summary(runs, rule, a)}
                for a in {FULL, *(c.against for c in parts)}
            }
            full_mean = by[FULL][FULL]["mean"]
            for test in TESTS:
                results = []
                for c in parts:
                    row = by[c.against][c.subset]
                    ok = holds(row, c.expect, test)
                    results.append(ok)
                    against_mean = by[c.against][c.against]["mean"]
                    checks.append(
                        {
                            "reading": reading,
                            "rule": rule,
                            "test": test,
                            "check": c.name,
                            "set": c.subset,
                            "kept": kept.get(c.subset),
                            "mean": row["mean"],
                            "against": c.against,
                            "against mean": against_mean,
                            "difference": row["mean"] - against_mean,
                            "ci95": difference_ci(row, against_mean, test),
                            "t": row.get(f"{test}_t"),
                            "df": row.get(f"{test}_df"),
                            "p": row.get(f"{test}_p"),
                            "holds": ok,
                        }
                    )
                verdict = combine(results)
                why = "; ".join(
                    f"{c.name}: {_said(ok)}" for c, ok in zip(parts, results, strict=True)
                )
                if any(c.subset in untestable for c in parts):
                    verdict = "not tested"
                    why += "; a set this protocol cannot make here"
                elif None in results:
                    verdict = "not tested"
                    why += "; a t-test without a statistic (no spread over the seeds)"
                elif full_mean < WEAK:
                    verdict = "inconclusive"
                    why += f"; the full set trains to {full_mean:.1%}, below {WEAK:.0%}"
                sensitivity.append(
                    {"reading": reading, "rule": rule, "test": test, "verdict": verdict, "why": why}
                )
    first = next(iter(readings))
    main = sensitivity[0]
    headline = [c for c in checks if (c["reading"], c["rule"], c["test"]) == (first, *RULES_TESTS)]
    return {
        "verdict": {
            **main,
            "kept": {c.subset: kept.get(c.subset) for c in readings[first]},
            "differences": {c["set"]: [c["difference"], c["ci95"]] for c in headline},
        },
        "sensitivity": sensitivity,
        "checks": checks,
    }


def _said(ok: bool | None) -> str:
    return "not tested" if ok is None else "yes" if ok else "no"


def judge_simple(readings: dict) -> dict:
    """Judge a claim that needs no training comparison: ``readings``: reading -> list of
    ``(part, holds)`` (the faithful reading first; ``holds`` ``None``: that part could not
    be tested, and neither could the reading), or -> a verdict string (e.g. ``not tested``).
    The same keys as :func:`judge_comparison`, without ``checks``."""
    sensitivity = []
    for reading, parts in readings.items():
        if isinstance(parts, str):
            sensitivity.append({"reading": reading, "verdict": parts, "why": ""})
            continue
        oks = [ok for _, ok in parts]
        sensitivity.append(
            {
                "reading": reading,
                "verdict": "not tested" if None in oks else combine(oks),
                "why": "; ".join(f"{name}: {_said(ok)}" for name, ok in parts),
            }
        )
    return {"verdict": dict(sensitivity[0]), "sensitivity": sensitivity}


def pivot(sensitivity: list) -> list:
    """The sensitivity rows with one column per test (reading, rule, then the verdict under
    each test), for reading; rows without tests are returned as they are."""
    if not sensitivity or "test" not in sensitivity[0]:
        return sensitivity
    rows: dict = {}
    for r in sensitivity:
        row = rows.setdefault(
            (r["reading"], r["rule"]), {"reading": r["reading"], "rule": r["rule"]}
        )
        row[r["test"]] = r["verdict"]
        if r["test"] == TESTS[0]:
            row[f"why ({TESTS[0]})"] = r["why"]
    return list(rows.values())


def verdict_row(claim: str, result: dict) -> dict:
    """One line of the report's opening table for a claim's results.json: the question, our
    number, the paper's, the verdict and the reading it was judged under."""
    v = result.get("verdict", {})
    return {
        "result": claim,
        "question": result.get("question", ""),
        "ours": result.get("ours", ""),
        "paper": result.get("paper", ""),
        "verdict": v.get("verdict"),
        "reading": v.get("reading"),
        "why": v.get("why", ""),
    }


def _number(v, fmt: str = ".3g") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def headline(claim: str, table: list, verdict: dict) -> str:
    """Our number for a claim in one line, in the terms of the paper's (``PAPER`` in
    :mod:`lpntk.reproduce`): the row of ``table`` that the verdict's reading judged."""
    reading = verdict.get("reading")
    if claim == "theorem1":
        slope = next(r for r in table if r["width"] == "fitted slope")
        widths = [r["width"] for r in table if r is not slope]
        scaled, relative = (_number(slope[k], ".2f") for k in ("scaled gap", "relative gap"))
        return (
            f"log-log slope of the scaled gap {scaled} over widths {min(widths)}-{max(widths)}, "
            f"expected at most -0.5 (of the relative gap {relative})"
        )
    if claim == "fig1":
        return "rho " + ", ".join(f"{_number(r['rho'], '.2f')} at X = {r['X']}" for r in table)
    if claim == "table1":
        row = next((r for r in table if f"{r['predictor']}, {r['window']}" == reading), table[0])
        return (
            f"{row['predictor']}: precision {row['precision']}, recall {row['recall']}, F1 "
            f"{row['f1']}; {row['events']} events"
        )
    if claim == "clusters":
        row = next((r for r in table if r.get("reading") == reading), table[0])
        head = row["head's share"]
        return (
            f"head {_number(head, '.0%')} of the samples, "
            f"{_number(row['clusters of >1 besides the head'])} more clusters of more than one, "
            f"{_number(row['singletons'])} singletons; "
            f"{_number(row['easiest 10% in the head'], '.0%')} of the 10% easiest in the head "
            f"(chance {_number(row['chance'], '.0%')}, p = {_number(row['p'], '.2g')})"
        )
    sets = verdict.get("kept") or {}
    parts, impossible = [], []
    for row in table:  # a comparison: the full set, then each judged set (every set if none)
        name = row["training set"]
        if name != FULL and sets and name not in sets:
            continue
        if "+-" not in str(row["test accuracy"]):  # a set the rule could not make
            impossible.append(name)
            continue
        line = f"{name} {row['test accuracy']}"
        if name != FULL:
            line += f", kept {row['kept']}"
            p = row.get("p (Welch)")
            if isinstance(p, float) and p != p:  # NaN: both sets without spread
                line += ", Welch p undefined (no spread)"
            elif p is not None:
                line += f", Welch p = {_number(p, '.2g')}"
        parts.append(line)
    if impossible:
        parts.append(f"not possible at these sizes: {', '.join(impossible)}")
    return "test accuracy: " + "; ".join(parts)
