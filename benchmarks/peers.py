"""lpntk against the plain alternatives on the work they share, one run, alternating.

    python benchmarks/peers.py [--n 4096] [--reps 5] [--threads 1]

Prints a table: for each piece of work, lpntk's time and the alternative's (CPU seconds of one
thread by default; min and median over ``--reps`` alternating repetitions), their ratio (> 1:
lpntk faster) and how far their answers differ. The alternatives need nothing beyond PyTorch:

- lpNTK features of LeNet-5 on N MNIST training images: ``lpntk.kernel.compute_features``
  against ``torch.func.vmap(grad)`` of s(y)^T z / sqrt(K) over every parameter (the dense
  per-sample vectors phi), and against lpntk's bare ``Extractor`` loop over ready batches (no
  store, no checks, no hashing); answers: a 64 x 64 block of the kernel from each.
- the whole pNTK Gram of ``--gram-n`` samples (small N, where fixed costs count):
  ``compute_features`` of kind pntk and ``gram`` against ``vmap(grad)`` of 1^T z / sqrt(K) and
  one GEMM; answers: the Gram.
- the row reductions over ``--rows-n`` samples, each against a plain loop over row blocks of
  ``kernel_block`` (lpntk's own factored pieces, every entry, no symmetry) with the diagonal
  masked: each sample's most similar other sample (``row_max``; answers: the values), its 10
  most similar (``RowTopK(10)`` against ``torch.topk``; the values) and its partners of each
  relationship type (``lpntk.analysis.relationships`` against the same masks per block; the
  counts).
- with faiss-cpu installed (``pip install faiss-cpu``, an extra of the benchmarks, never of the
  package): each sample's most similar other sample over ``--faiss-n`` samples, ``row_max`` on
  lpntk's features against FAISS ``IndexFlatIP`` on the dense vectors phi of ``vmap(grad)``
  (exact inner products; the vectors are given to it, not timed); answers: the values.
- ``lpntk analyze``'s one pass (the witnesses of the redundant samples, the relationship counts
  and each sample's most and least similar other sample) against the same work as separate
  lpntk passes (``redundant_samples``, then the counting pass with the other two); answers: the
  witnesses.

Data: ``--data-dir`` or LPNTK_DATA_DIR (MNIST), else fetched.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import functional_call, grad, vmap

from lpntk.analysis import Witnesses, redundant_samples, relationships
from lpntk.data import load_dataset
from lpntk.kernel import (
    RowTopK,
    compute_features,
    diagonal,
    get_kind,
    gram,
    kernel_block,
    reduce_rows,
    row_max,
)
from lpntk.kernel.extract import Extractor
from lpntk.kernel.ops import tie_tolerance
from lpntk.models import build_model


def lenet5(data):
    torch.manual_seed(0)
    return build_model("lenet5", data.input_shape, data.num_classes).eval()


def lpntk_features(model, data, batch: int):
    return compute_features(model, data, "lpntk", batch_size=batch, progress=False)


def bare_extractor(model, x, y, batch: int):
    ex = Extractor(model, get_kind("lpntk"), "factored")
    ex.check(x[:batch], y[:batch])
    return [ex(x[s : s + batch], y[s : s + batch]) for s in range(0, len(x), batch)]


def vmap_grad(model, x, y, batch: int, kind: str = "lpntk") -> torch.Tensor:
    """phi(x, y) for every sample: the gradient of c^T z / sqrt(K), flattened, with c = s(y)
    (lpntk) or all ones (pntk)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    k = model(x[:1]).shape[1]

    def signed(p, xi, si):
        z = functional_call(model, (p, buffers), (xi[None],))[0]
        return (si * z).sum() / k**0.5

    per_sample = vmap(grad(signed), in_dims=(None, 0, 0))
    if kind == "lpntk":
        signs = 2 * torch.nn.functional.one_hot(y, k).to(x.dtype) - 1  # s(y)
    else:
        signs = torch.ones(len(x), k, dtype=x.dtype)
    rows = []
    for s in range(0, len(x), batch):
        g = per_sample(params, x[s : s + batch], signs[s : s + batch])
        rows.append(torch.cat([v.flatten(1) for v in g.values()], 1))
    return torch.cat(rows)


def faiss_nearest(phi: torch.Tensor) -> torch.Tensor:
    """max over j != i of phi_i . phi_j by FAISS's exact inner-product index: the best two of
    each row, then the first that is not the row itself."""
    import faiss

    index = faiss.IndexFlatIP(phi.shape[1])
    index.add(phi.numpy())
    values, found = index.search(phi.numpy(), 2)
    own = found[:, 0] == torch.arange(len(phi)).numpy()
    return torch.from_numpy(values[:, 0]).where(
        ~torch.from_numpy(own), torch.from_numpy(values[:, 1])
    )


def lpntk_pntk_gram(model, data, batch: int) -> torch.Tensor:
    return gram(compute_features(model, data, "pntk", batch_size=batch, progress=False))


def plain_pntk_gram(model, x, y, batch: int) -> torch.Tensor:
    phi = vmap_grad(model, x, y, batch, "pntk")
    return phi @ phi.T


def plain_rows(feats, block: int = 1024):
    """Blocks of whole kernel rows ``(start, k)``, a sample with itself masked as NaN."""
    for s in range(0, feats.n, block):
        k = kernel_block(feats, rows=slice(s, min(s + block, feats.n)))
        idx = torch.arange(s, s + len(k))
        k[idx - s, idx] = torch.nan
        yield s, k


def plain_row_max(feats):
    """max over j != i of kappa(i, j)."""
    return torch.cat([k.nan_to_num(-torch.inf).max(1).values for _, k in plain_rows(feats)])


def plain_top(feats, count: int = 10):
    """The ``count`` largest kappa(i, j), j != i, per row."""
    return torch.cat([k.nan_to_num(-torch.inf).topk(count, 1).values for _, k in plain_rows(feats)])


def plain_counts(feats, t: float = 0.75, eps: float = 0.05) -> torch.Tensor:
    """Per sample, its interchangeable, contradictory and unrelated partners in its own class and
    in the others (the rules and rounding slack of lpntk.analysis.relationships): ``(3, N, 2)``."""
    d, slack = diagonal(feats), tie_tolerance(feats)
    labels = torch.as_tensor(feats.labels)
    onehot = torch.nn.functional.one_hot(labels).to(d.dtype)
    counts = torch.zeros(3, feats.n, 2, dtype=torch.long)
    for s, k in plain_rows(feats):
        du, do = d[s : s + len(k), None], d[None, :]
        high, low, r = torch.maximum(du, do), torch.minimum(du, do), slack * torch.sqrt(du * do)
        masks = (k >= t * high - r, k <= -t * high + r, k.abs() <= eps * low + r)
        for i, mask in enumerate(masks):
            per_class = (mask.to(k.dtype) @ onehot).round().long()
            same = per_class[torch.arange(len(k)), labels[s : s + len(k)]]
            counts[i, s : s + len(k), 0] = same
            counts[i, s : s + len(k), 1] = per_class.sum(1) - same
    return counts


def one_pass(feats):
    """analyze's pass: witnesses, counts, most and least similar other sample."""
    w, most, least = Witnesses(feats), RowTopK(1), RowTopK(1, largest=False)
    relationships(feats, progress=False, also=[w, most, least])
    return w.redundancy(diagonal(feats)).witness


def separate_passes(feats):
    """The same work as lpntk did it before: the redundancy search, then the counting pass."""
    most, least = RowTopK(1), RowTopK(1, largest=False)
    red = redundant_samples(feats, progress=False)
    relationships(feats, progress=False, also=[most, least])
    return red.witness


def counts_of(feats):
    rel = relationships(feats, progress=False)
    return torch.stack([torch.as_tensor(v) for v in rel.counts.values()])


def timed(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def compare(name: str, ours, theirs, reps: int, answer) -> dict:
    """Alternating repetitions of ``ours`` and ``theirs``; ``answer(ours_out, theirs_out)``
    gives the largest difference of their answers."""
    mine, other = [], []
    for _ in range(reps):
        t, a = timed(ours)
        mine.append(t)
        t, b = timed(theirs)
        other.append(t)
    return {
        "work": name,
        "lpntk min": min(mine),
        "lpntk median": statistics.median(mine),
        "peer min": min(other),
        "peer median": statistics.median(other),
        "ratio (min)": min(other) / min(mine),
        "largest difference": answer(a, b),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--gram-n", type=int, default=256, help="samples of the pNTK Gram")
    ap.add_argument("--faiss-n", type=int, default=2048, help="samples of the FAISS row")
    ap.add_argument("--rows-n", type=int, default=10000, help="samples of the row max")
    ap.add_argument("--rows-reps", type=int, default=3)
    ap.add_argument("--data-dir")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", "train", args.data_dir).subset(range(args.n))
    model, (x, y), b = lenet5(data), data.tensors(), args.batch_size
    lpntk_features(model, data.subset(range(b)), b)  # warm up both
    vmap_grad(model, x[:b], y[:b], b)

    def block_gap(feats, phi) -> float:
        mine = kernel_block(feats, rows=range(64), cols=range(64)).double()
        theirs = phi[:64].double() @ phi[:64].double().T
        return float((mine - theirs).abs().max() / theirs.abs().max())

    rows = [
        compare(
            f"lpNTK features, LeNet-5, N = {args.n:,}: compute_features vs vmap(grad)",
            lambda: lpntk_features(model, data, b),
            lambda: vmap_grad(model, x, y, b),
            args.reps,
            block_gap,
        ),
        compare(
            "the same: lpntk's bare Extractor loop vs vmap(grad)",
            lambda: bare_extractor(model, x, y, b),
            lambda: vmap_grad(model, x, y, b),
            args.reps,
            lambda a, b_: float("nan"),  # the pieces of the factored form (checked above)
        ),
    ]
    small = data.subset(range(args.gram_n))
    xs, ys = small.tensors()
    rows.append(
        compare(
            f"pNTK Gram, LeNet-5, N = {args.gram_n}: compute_features + gram vs vmap(grad) + GEMM",
            lambda: lpntk_pntk_gram(model, small, b),
            lambda: plain_pntk_gram(model, xs, ys, b),
            args.reps,
            lambda a, b_: float((a - b_).abs().max() / b_.abs().max()),
        )
    )
    try:
        import faiss
    except ImportError:
        print("faiss-cpu is not installed: its row is left out (pip install faiss-cpu)")
    else:
        faiss.omp_set_num_threads(args.threads)
        few = data.subset(range(args.faiss_n))
        mine = lpntk_features(model, few, b)
        phi = vmap_grad(model, *few.tensors(), b).contiguous()
        rows.append(
            compare(
                f"nearest other sample, N = {args.faiss_n:,}: row_max vs FAISS IndexFlatIP "
                f"{faiss.__version__} on the dense phi",
                lambda: torch.from_numpy(row_max(mine, progress=False)[0]),
                lambda: faiss_nearest(phi),
                args.rows_reps,
                lambda a, b_: float((a - b_).abs().max() / b_.abs().max()),
            )
        )
        del phi
    big = load_dataset("mnist", "train", args.data_dir).subset(range(args.rows_n))
    feats = lpntk_features(model, big, b)
    n = f"N = {args.rows_n:,}"

    def relative(a, b_) -> float:
        return float((torch.as_tensor(a) - b_).abs().max() / b_.abs().max())

    rows += [
        compare(
            f"nearest other sample, {n}: row_max vs a blocked loop",
            lambda: row_max(feats, progress=False)[0],
            lambda: plain_row_max(feats),
            args.rows_reps,
            relative,
        ),
        compare(
            f"10 most similar others, {n}: RowTopK(10) vs a blocked loop of topk",
            lambda: reduce_rows(feats, [RowTopK(10)], progress=False)[0].values,
            lambda: plain_top(feats),
            args.rows_reps,
            relative,
        ),
        compare(
            f"relationship counts, {n}: relationships vs a blocked loop",
            lambda: counts_of(feats),
            lambda: plain_counts(feats),
            args.rows_reps,
            lambda a, b_: float((a - b_).abs().max()),
        ),
        compare(
            f"analyze's one pass, {n}: vs redundant_samples, then the counting pass",
            lambda: one_pass(feats),
            lambda: separate_passes(feats),
            args.rows_reps,
            lambda a, b_: float((a != b_).sum()),  # witnesses that differ
        ),
    ]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.reps} repetitions, CPU s")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for r in rows:
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
