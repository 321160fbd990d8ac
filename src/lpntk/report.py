"""What users look at: image grids of samples and of sample pairs, with labels and kappa in the
captions (PNG), and one self-contained HTML page for a whole results folder."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path

import numpy as np

from ._errors import ConfigError, MissingFileError
from ._io import atomic_path, output_folder
from .data import ArrayDataset


def _image(data: ArrayDataset, index: int) -> np.ndarray:
    """Sample ``index`` (original) as an (H, W) or (H, W, 3) uint8 array."""
    img = data.images[int(data.positions_of([index])[0])]
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def class_name(data: ArrayDataset, label: int) -> str:
    """The dataset's name for ``label`` (an IDX folder's classes.txt, CIFAR-10's, the digits
    kept by a class filter), or the number when it has none."""
    classes = getattr(data, "classes", None) or ()
    return str(classes[label]) if 0 <= label < len(classes) else str(label)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def pair_grid(data: ArrayDataset, pairs: list, captions: list, title: str, path) -> None:
    """One row per pair ``(i, j)`` of original indices: the two images side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(pairs))
    fig, axes = plt.subplots(rows, 2, figsize=(4.4, 1.9 * rows), dpi=100, squeeze=False)
    for r, ((i, j), caption) in enumerate(zip(pairs, captions, strict=True)):
        for c, index in enumerate((i, j)):
            ax = axes[r, c]
            ax.imshow(_image(data, index), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(caption[c], fontsize=7)
    for ax in axes.ravel()[2 * len(pairs) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))


def sample_grid(
    data: ArrayDataset, groups: list, title: str, path, per_row: int = 8, captions=None
) -> None:
    """One row per ``(caption, [original indices])`` group, up to ``per_row`` images each;
    ``captions``: ``{original index: title}`` instead of "#index y=label"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(groups))
    fig, axes = plt.subplots(
        rows, per_row, figsize=(1.1 * per_row, 1.4 * rows), dpi=100, squeeze=False
    )
    for r, (caption, indices) in enumerate(groups):
        for c in range(per_row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(indices):
                ax.imshow(_image(data, indices[c]), cmap="gray")
                label = class_name(data, int(data.labels[data.positions_of([indices[c]])[0]]))
                text = (captions or {}).get(int(indices[c]), f"#{indices[c]} y={label}")
                ax.set_title(text, fontsize=6)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(caption, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))


def _flat(obj, prefix: str = "", depth: int = 2) -> list[tuple[str, str]]:
    """The scalars of a JSON object as (dotted key, text) rows, ``depth`` levels down; long
    lists are shortened."""
    rows = []
    for k, v in obj.items() if isinstance(obj, dict) else ():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth > 1:
            rows += _flat(v, key + ".", depth - 1)
        elif isinstance(v, (dict, list)):
            text = json.dumps(v, default=str)
            rows.append((key, text if len(text) <= 160 else text[:157] + "..."))
        else:
            rows.append((key, f"{v:.6g}" if isinstance(v, float) else str(v)))
    return rows


def cell(v) -> str:
    """A table cell: floats (also in lists) to 4 significant digits, NaN n/a, None empty."""
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(cell(x) for x in v)
    return "" if v is None else str(v)


def _html_table(rows: list[dict], columns=None) -> str:
    """``columns``: the order of the columns (the rest follow), e.g. a claim's ``table.md``'s."""
    keys = list(dict.fromkeys([*(columns or []), *(k for r in rows for k in r)]))
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r.get(k)))}</td>" for k in keys) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


RESULT_FILES = ("results.json", "summary.json", "comparison.json")
CAPTIONS = {  # what each plot shows, in one line (the file name follows it)
    "accuracy.png": "Test accuracy after each epoch: the mean over seeds, with a one-std band "
    "(each run and mean +- std, when the runs have no epochs)",
    "cluster_sizes.png": "Cluster sizes against their rank, both on log scales",
    "clusters.png": "Random members of the largest clusters, and singleton clusters",
    "contradictory_pairs.png": "The most contradictory pairs (or, if none passes, the least "
    "similar)",
    "figure1.png": "Learning difficulty on the whole set against on subsets (Fig. 1)",
    "label_issues.png": "The most suspect labels, each with its given and suggested label",
    "prediction.png": "Predicted against real forgetting events (Table 1)",
    "redundant_pairs.png": "The most redundant samples beside their witnesses",
    "theorem1.png": "The gap between lpNTK x identity and the eNTK against the width",
}
TERMS = {  # the page's words, for a reader who has not read the paper
    "kappa, lpNTK": "kappa(x, x') = phi(x, y) . phi(x', y'), phi the labelled gradient "
    "s(y)^T dz/dw / sqrt(K) (s(y) = +1 at the label, -1 elsewhere): how much one sample's "
    "gradient step helps (> 0) or hurts (< 0) the other's label (Eq. 3 of the paper)",
    "pNTK, eNTK": "pNTK: the same with all ones instead of s(y), blind to the labels; eNTK: "
    "the full K x K empirical neural tangent kernel",
    "redundant, witness": "a sample is redundant when another sample, its witness, has "
    "kappa(x, witness) > kappa(x, x): a gradient step on the witness helps it more than a "
    "step on itself",
    "interchangeable, contradictory, unrelated": "pairs with kappa large and positive, large "
    "and negative, or near zero, relative to both samples' norms (App. C)",
    "cluster, head, M": "farthest point clustering with M centroids (Alg. 3); the head is the "
    "largest cluster (per class: each class's own largest)",
    "learning difficulty, rho": "a sample's loss summed over training; rho: its correlation "
    "between training on the whole set and on subsets of X samples (Fig. 1)",
    "EL2N, forgetting": "other pruning scores: the error norm early in training; the number of "
    "times a sample goes from learned to misclassified",
    "reading": "the protocol a verdict was judged under: the paper's text, or its public code "
    "where the two differ",
    "verdicts": "reproduced / partly reproduced / not reproduced; not tested (the protocol could "
    "not test it here); inconclusive (the full set trains too poorly to test a pruning claim); "
    "beyond the paper (no claim of the paper)",
    "accuracy rules": "best_val: the test accuracy of the best-validation epoch (the default); "
    "last: of the last epoch; max_test: the best test accuracy over epochs (the public code's, "
    "test-selected and optimistic)",
    "n/a": "not defined, e.g. a t-test between sets whose accuracies have no spread",
}
FEW_SEEDS = 5  # below this many seeds a p-value gets a caveat
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.3em 0}
details{margin:.3em 0 1em}section{border-top:2px solid #ddd;margin-top:1.5em}"""


def _key_numbers(data, most: int = 12) -> list[dict]:
    """The result's own top-level numbers (not settings, paths or hashes), shown unfolded."""
    if not isinstance(data, dict):
        return []
    skip = ("seconds", "seed", "lpntk", "sha256", "version", "created", "epoch")
    rows = [
        {"result": k, "value": v}
        for k, v in data.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and not any(word in k for word in skip)
    ]
    return rows[:most]


def _finding(rel: str, name: str, data) -> dict | None:
    """One line for the page's opening table: the question a result answers and what it found
    (a claim's line, with the paper's number and the verdict, is :func:`verdict_row`'s)."""
    if not isinstance(data, dict) or "verdict" in data:
        return None
    pct = "{:.1%}".format
    if "redundant_fraction" in data and "largest_cluster_share" in data:
        found = (
            f"{pct(data['redundant_fraction'])} of {data['n']} samples redundant; "
            f"{data['clusters']} clusters, the largest {pct(data['largest_cluster_share'])} of "
            "the samples"
        )
        if isinstance(data.get("relationships"), dict):
            r = data["relationships"]
            found += (
                f"; partners (each pair from both sides): {r.get('interchangeable')} "
                f"interchangeable, {r.get('contradictory')} contradictory, "
                f"{r.get('unrelated')} unrelated"
            )
        question = "Which samples are redundant, how do they cluster and relate?"
    elif name == "comparison.json" and isinstance(data.get("summary"), list):
        sizes = {r.get("subset"): r.get("n_train") for r in data.get("runs", [])}
        parts = []
        for row in data["summary"]:
            size = f", {sizes[row['subset']]} samples" if sizes.get(row["subset"]) else ""
            p = f", Welch p = {row['welch_p']:.3g}" if "welch_p" in row else ""
            parts.append(
                f"{row['subset']} {row['mean']:.4f} +- {row['std']:.4f} ({row['runs']} runs"
                f"{size}{p})"
            )
        found, question = "; ".join(parts), "Does a pruned training set keep the test accuracy?"
    elif "design" in data and isinstance(data.get("table"), list) and data["table"]:
        top = data["table"][0]
        found = (
            f"{data['n']} samples scored; the most suspect #{top.get('index')} labelled "
            f"{top.get('label')}, suggested {top.get('suggested')}"
        )
        question = "Which labels look wrong?"
    elif "mean_forgetting_events" in data:
        found = (
            f"{data['n']} samples over {len(data.get('runs', []))} runs: "
            f"{pct(data['never_learned_share'])} never learned, "
            f"{pct(data['unforgettable_share'])} never forgotten, "
            f"{data['mean_forgetting_events']:.2f} forgetting events a sample"
        )
        question = "Which samples are hard to learn or get forgotten?"
    else:
        return None
    return {"result": rel, "question": question, "ours": found}


def _terms() -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in TERMS.items()
    )
    return f"<details><summary>Terms used on this page</summary><table>{rows}</table></details>"


def _seed_caveat(rows: list[dict]) -> str:
    """A warning under a table whose p-values stand on fewer than :data:`FEW_SEEDS` runs."""
    tested = [r for r in rows if any(str(k).endswith("_p") for k in r)]
    runs = [r.get("runs") for r in tested if isinstance(r.get("runs"), int)]
    if not runs or min(runs) >= FEW_SEEDS:
        return ""
    return (
        f"<p><b>Caveat:</b> these p-values stand on {min(runs)} runs a set; with fewer than "
        f"{FEW_SEEDS} seeds a t-test has little power and its p-value moves much from seed to "
        "seed.</p>"
    )


def build_report(folder, out=None, title: str | None = None) -> Path:
    """One self-contained HTML page (``out``, default ``folder/report.html``) for a results
    folder: a section for every folder below it that holds one of ``RESULT_FILES``, with its
    main table, every number and setting, and its PNG plots embedded inline."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder} is not a folder; expected a results folder")
    out = Path(out) if out is not None else folder / "report.html"
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; expected the path of an .html file", param="out")
    output_folder(out.parent, param="out")  # a file or an unwritable folder on the way
    from .verdicts import pivot, verdict_row

    sections, toc, findings, shown, settings = [], [], [], {}, {}
    found = sorted(
        {p.parent for name in RESULT_FILES for p in folder.rglob(name)},
        key=lambda p: (len(p.relative_to(folder).parts), str(p)),
    )
    for where in found:
        rel = where.relative_to(folder).as_posix() or "."
        anchor = f"s{len(sections)}"
        toc.append(f"<li><a href='#{anchor}'>{html.escape(rel)}</a></li>")
        parts = [f"<section id='{anchor}'><h2>{html.escape(rel)}</h2>"]
        claimed = False
        for name in RESULT_FILES:
            if not (where / name).exists():
                continue
            try:
                data = json.loads((where / name).read_text())
            except (OSError, ValueError) as e:
                parts.append(f"<p>{name} is unreadable: {html.escape(str(e))}</p>")
                continue
            for key in ("table", "summary"):  # a claim's table, a comparison's summary
                rows = data.get(key) if isinstance(data, dict) else None
                if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
                    parts.append(_html_table(rows, data.get(f"{key}_columns")))
                    parts.append(_seed_caveat(rows))
                    break
            if isinstance(data, dict) and data.get("paper"):
                parts.append(f"<p><b>Paper:</b> {html.escape(str(data['paper']))}</p>")
            if isinstance(data, dict) and isinstance(data.get("verdict"), dict):
                findings.append(verdict_row(data.get("claim", rel), data))
                settings.setdefault(
                    f"{data['verdict'].get('setting')}, {data.get('seeds')} seeds", []
                ).append(str(data.get("claim", rel)))
                v = data["verdict"]
                parts.append(
                    f"<p><b>Verdict: {html.escape(str(v.get('verdict')))}</b> "
                    f"({html.escape(str(v.get('reading')))}; {html.escape(str(v.get('setting')))})"
                    "</p>"
                )
                if data.get("sensitivity"):
                    parts.append("<p>The verdict under each reading:</p>")
                    parts.append(_html_table(pivot(data["sensitivity"])))
            # a claim's line already says what its runs found
            claimed = claimed or (isinstance(data, dict) and isinstance(data.get("verdict"), dict))
            try:
                finding = None if claimed else _finding(rel, name, data)
            except (KeyError, TypeError, ValueError, IndexError):  # another or older format
                finding = None
            if finding:
                findings.append(finding)
            key_numbers = _key_numbers(data)
            if key_numbers:
                parts.append(_html_table(key_numbers))
            rows = [
                {"key": k, "value": v}
                for k, v in _flat(data, depth=3)
                if k not in ("table", "table_columns", "summary_columns")
            ]
            parts.append(
                f"<details><summary>{name}: every number and setting ({len(rows)})</summary>"
                f"{_html_table(rows)}</details>"
            )
        for png in sorted(where.glob("*.png")):
            raw = png.read_bytes()
            first = shown.setdefault(hashlib.sha256(raw).hexdigest(), (anchor, rel))
            if first[0] != anchor:  # the same picture again: point to it, once is enough
                parts.append(
                    f"<p>{html.escape(png.name)}: the same plot as in "
                    f"<a href='#{first[0]}'>{html.escape(first[1])}</a>.</p>"
                )
                continue
            data = base64.b64encode(raw).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(png.name)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(CAPTIONS.get(png.name, png.stem))} "
                f"<small>({html.escape(png.name)})</small></figcaption></figure>"
            )
        sections.append("".join(parts) + "</section>")
    if not sections:
        raise MissingFileError(
            f"{folder} holds no {', '.join(RESULT_FILES)}; expected the output folder of an "
            "lpntk command"
        )
    title = title or f"lpntk results: {folder.resolve().name}"
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(
            f"<p><b>Setting:</b> {html.escape(k)} ({html.escape(', '.join(v))})</p>"
            for k, v in settings.items()
        )
        + _terms()
        + ("<h2>What was run and what it found</h2>" + _html_table(findings) if findings else "")
        + f"<p>{len(sections)} result folders in {html.escape(str(folder.resolve()))}:</p>"
        f"<ul>{''.join(toc)}</ul>" + "".join(sections) + "</body></html>\n"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
