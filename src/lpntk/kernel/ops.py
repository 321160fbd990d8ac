"""Blockwise kernel operations that never hold an N x N matrix in memory.

Positions (not original indices) address samples: ``X.indices[pos]`` gives the original index.
Scalar kinds give blocks ``(|I|, |J|)``; ``entk`` gives ``(|I|, |J|, K, K)``.
"""

from __future__ import annotations

import copy
import math
import os
import uuid

import numpy as np
import torch

from .._device import resolve_device
from .._errors import ConfigError
from .._progress import progress as progress_bar
from . import distributed as dist
from .extract import Piece
from .features import Features, open_features, reference
from .features import _take as _take_rows

MAX_MEMORY = 2 << 30  # at most this many bytes for one block operation's temporaries


def default_memory(device="cpu") -> int:
    """Bytes one block operation may use: a quarter of the free memory, at most 2 GiB."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not Linux: assume 4 GiB free
            free = 4 << 30
    return int(min(MAX_MEMORY, free // 4))


def _block(X: Features, rx: dict, ry: dict, pieces=None) -> torch.Tensor:
    """Kernel block ``(nI, m, nJ, m)`` from loaded rows ``rx`` of X and ``ry`` of the paired set;
    with ``pieces`` (piece numbers), the sum over those pieces only."""
    out = None
    for i, piece in enumerate(X.pieces):
        if pieces is not None and i not in pieces:
            continue
        if piece.form == "dense":
            fi, fj = rx[f"{i}.F"], ry[f"{i}.F"]
            (ni, m, p), nj = fi.shape, fj.shape[0]
            part = (fi.reshape(ni * m, p) @ fj.reshape(nj * m, p).T).view(ni, m, nj, m)
        else:
            ai, aj, bi, bj = rx[f"{i}.A"], ry[f"{i}.A"], rx[f"{i}.B"], ry[f"{i}.B"]
            (ni, t, pa), nj = ai.shape, aj.shape[0]
            m, pb = bi.shape[1], bi.shape[-1]
            if t == 1:
                aa = ai[:, 0] @ aj[:, 0].T  # (nI, nJ)
                bb = (bi.reshape(ni * m, pb) @ bj.reshape(nj * m, pb).T).view(ni, m, nj, m)
                part = bb * aa[:, None, :, None]
            else:
                aa = (ai.reshape(ni * t, pa) @ aj.reshape(nj * t, pa).T).view(ni, t, nj, t)
                bb = bi.reshape(ni * m * t, pb) @ bj.reshape(nj * m * t, pb).T
                part = torch.einsum("itjs,iktjls->ikjl", aa, bb.view(ni, m, t, nj, m, t))
        out = part if out is None else out.add_(part)
    return out


def _shape(X: Features, k: torch.Tensor) -> torch.Tensor:
    """``(nI, m, nJ, m)`` -> ``(nI, nJ)`` for scalar kinds, ``(nI, nJ, m, m)`` for entk."""
    if X.m == 1:
        return k[:, 0, :, 0]
    return k.permute(0, 2, 1, 3)


def _pair(X: Features, Y: Features | None) -> Features:
    if Y is None:
        return X
    X.compatible(Y)
    return Y


def block_size(X: Features, memory: int | None = None, device="cpu") -> int:
    """Rows per block so that one block's temporaries fit in ``memory`` bytes (default: from the
    free memory, see :func:`default_memory`)."""
    if memory is not None and (not isinstance(memory, (int, np.integer)) or memory < 1):
        raise ConfigError(f"expected a number of bytes >= 1; got {memory!r}", param="memory")
    memory = memory or default_memory(device)
    item = torch.tensor([], dtype=X.dtype).element_size()
    t2 = max((p.shapes["A"][0] ** 2 for p in X.pieces if p.form == "factored"), default=1)
    per_pair = item * X.m * X.m * (2 + 4 * t2)  # result, a part, T x T products and a copy
    per_row = item * X.floats_per_sample() * 2  # the loaded rows of both sides
    b = int(math.sqrt(memory / per_pair))
    b = min(b, max(1, memory // (2 * per_row)))
    return max(16, min(b, 8192))


def kernel_block(
    X: Features, rows=None, Y: Features | None = None, cols=None, device="cpu"
) -> torch.Tensor:
    """kappa(X[rows], Y[cols]) (Y defaults to X; rows/cols: positions as a slice, a sequence or
    array, or one int; all if None).

    Returns a ``torch.Tensor`` in the store's dtype: ``(|rows|, |cols|)`` for scalar kinds and
    ``(|rows|, |cols|, K, K)`` for entk (an int counts as one position: ``|rows|`` = 1).
    """
    Y = _pair(X, Y)
    rows = slice(None) if rows is None else [rows] if isinstance(rows, (int, np.integer)) else rows
    cols = slice(None) if cols is None else [cols] if isinstance(cols, (int, np.integer)) else cols
    return _shape(X, _block(X, X.rows(rows, device), Y.rows(cols, device)))


def gram(X: Features, device="cpu") -> torch.Tensor:
    """The whole ``(N, N)`` kernel matrix (``(N, N, K, K)`` for entk); for small N only."""
    return kernel_block(X, device=device)


def diagonal(X: Features, memory: int | None = None, device="cpu") -> torch.Tensor:
    """kappa(i, i) for every sample: ``(N,)``, or ``(N, K, K)`` for entk; the squared norms."""
    everyone = np.arange(X.n)
    return pair_kernel(X, everyone, everyone, memory=memory, device=device)


def pair_kernel(
    X: Features, i, j, Y: Features | None = None, memory: int | None = None, device="cpu"
) -> torch.Tensor:
    """kappa(X[i[p]], Y[j[p]]) for each listed pair p only (Y defaults to X): ``(P,)``, or
    ``(P, K, K)`` for entk. ``i`` and ``j``: positions, equal lengths."""
    Y = _pair(X, Y)
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    if i.shape != j.shape or i.ndim != 1:
        raise ConfigError(f"expected two position arrays of one length; got {i.shape}, {j.shape}")
    if len(i) and (min(i.min(), j.min()) < 0 or i.max() >= X.n or j.max() >= Y.n):
        raise ConfigError(f"positions must lie in 0..{X.n - 1} and 0..{Y.n - 1}", param="i, j")
    b = block_size(X, memory, device)
    parts = []
    for s in range(0, len(i), b):
        ri = X.rows(_as_rows(i[s : s + b]), device)
        rj = ri if Y is X and np.array_equal(i[s : s + b], j[s : s + b]) else None
        rj = rj if rj is not None else Y.rows(_as_rows(j[s : s + b]), device)
        d = None
        for p, piece in enumerate(X.pieces):
            if piece.form == "dense":
                part = torch.einsum("nkp,nlp->nkl", ri[f"{p}.F"], rj[f"{p}.F"])
            else:
                aa = torch.einsum("ntp,nsp->nts", ri[f"{p}.A"], rj[f"{p}.A"])
                part = torch.einsum("nts,nktp,nlsp->nkl", aa, ri[f"{p}.B"], rj[f"{p}.B"])
            d = part if d is None else d + part
        parts.append(d[:, 0, 0] if X.m == 1 else d)
    if not parts:
        return torch.zeros((0,) if X.m == 1 else (0, X.m, X.m), dtype=X.dtype)
    return torch.cat(parts)


def neighbour_kernel(
    X: Features,
    partners,
    Y: Features | None = None,
    memory: int | None = None,
    device="cpu",
    progress: bool = False,
) -> torch.Tensor:
    """kappa(X[i], Y[partners[i, t]]) for every sample i of ``X`` and each of its ``k`` listed
    partners: ``(N, k)``, or ``(N, K, k)`` when ``X`` is eNTK features and ``Y`` scalar-kind
    features of the same samples and model (e.g. ``contract(X, ...)``: then
    ``Theta(x_i, x_j) c_j`` for ``Y``'s cotangents ``c_j``). ``partners``: ``(N, k)`` positions in
    ``Y``. Each row of ``X`` is read once, not once per partner."""
    Y = X if Y is None else Y
    partners = np.asarray(partners, dtype=np.int64)
    if partners.ndim != 2 or len(partners) != X.n:
        raise ConfigError(
            f"expected partners of shape ({X.n}, k); got {partners.shape}", param="partners"
        )
    if partners.size and (partners.min() < 0 or partners.max() >= Y.n):
        raise ConfigError(f"partners must be positions 0..{Y.n - 1}", param="partners")
    forms = [(p.form, {k: v[1:] if k != "A" else v for k, v in p.shapes.items()}) for p in X.pieces]
    if Y.m != 1 or forms != [
        (p.form, {k: v[1:] if k != "A" else v for k, v in p.shapes.items()}) for p in Y.pieces
    ]:
        raise ConfigError(
            "expected Y: scalar-kind features of the same model as X (one row per sample)",
            param="Y",
        )
    k = partners.shape[1]
    b = max(1, block_size(X, memory, device) // max(1, k))
    parts = []
    bar = progress_bar(X.n, "neighbour kernel", unit="sample", enabled=progress)
    for s in range(0, X.n, b):
        ri = X.rows(slice(s, min(s + b, X.n)), device)
        n = min(s + b, X.n) - s
        rj = Y.rows(partners[s : s + n].reshape(-1), device)
        d = None
        for p, piece in enumerate(X.pieces):
            if piece.form == "dense":
                fj = rj[f"{p}.F"].reshape(n, k, -1)  # Y has one row a sample
                part = torch.einsum("nkp,ntp->nkt", ri[f"{p}.F"], fj)
            else:
                aj = rj[f"{p}.A"].reshape(n, k, *rj[f"{p}.A"].shape[1:])
                bj = rj[f"{p}.B"].reshape(n, k, *rj[f"{p}.B"].shape[2:])
                aa = torch.einsum("nup,ntsp->ntus", ri[f"{p}.A"], aj)
                part = torch.einsum("ntus,nkup,ntsp->nkt", aa, ri[f"{p}.B"], bj)
            d = part if d is None else d + part
        parts.append(d[:, 0] if X.m == 1 else d)
        bar.update(n)
    bar.close()
    if not parts:
        return torch.zeros((0, k) if X.m == 1 else (0, X.m, k), dtype=X.dtype)
    return torch.cat(parts)


def _as_rows(positions: np.ndarray):
    """A slice when ``positions`` are consecutive (a cheaper read from a store), else them."""
    if (
        len(positions)
        and positions[-1] - positions[0] == len(positions) - 1
        and (np.all(np.diff(positions) == 1))
    ):
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return positions


def contract(X: Features, cotangents, kind: str = "contracted", memory=None) -> Features:
    """Scalar-kind features from eNTK features: sample i's rows ``sum_k c_ik dz_k(x_i)/dw``.

    The eNTK store holds ``dz_k/dw`` for every class k, and every scalar kind is a fixed
    cotangent applied to them (see :mod:`lpntk.kernel.kinds`), so this is exact: ``cotangents``
    ``s(y) / sqrt(K)`` give the lpNTK features of labels ``y`` (any labels, not only the given
    ones), the all-ones over ``sqrt(K)`` the pNTK's. ``cotangents``: ``(K,)`` for every sample
    or ``(N, K)``. The result is in memory (``m = 1``; the factored ``A`` arrays are shared).
    """
    if X.m == 1:
        raise ConfigError("contract needs eNTK features (kind entk), one row per class")
    c = torch.as_tensor(np.asarray(cotangents), dtype=X.dtype)
    if c.shape == (X.m,):
        c = c.expand(X.n, X.m)
    if c.shape != (X.n, X.m):
        raise ConfigError(
            f"expected cotangents of shape ({X.m},) or ({X.n}, {X.m}); got {tuple(c.shape)}",
            param="cotangents",
        )
    arrays, b = {}, block_size(X, memory)
    for name, a in X.arrays.items():
        if name.endswith(".A"):
            arrays[name] = a
            continue
        shape = (X.n, 1) + tuple(a.shape[2:])
        out = np.empty(shape, dtype=np.dtype(str(X.dtype).split(".")[1]))
        for s in range(0, X.n, b):
            rows = torch.from_numpy(_take_rows(a, slice(s, min(s + b, X.n))))
            out[s : s + len(rows), 0] = torch.einsum("nk...,nk->n...", rows, c[s : s + b]).numpy()
        arrays[name] = out
    pieces = [
        Piece(p.name, p.form, {k: (1, *v[1:]) if k != "A" else v for k, v in p.shapes.items()})
        for p in X.pieces
    ]
    return Features(pieces, arrays, X.labels, X.indices, dict(X.meta, kind=kind, outputs=1))


def columns(
    X: Features, cols, Y: Features | None = None, memory: int | None = None, device="cpu"
) -> torch.Tensor:
    """kappa(X[:], Y[cols]): ``(N, |cols|)`` computed in row blocks (Y defaults to X)."""
    Y = _pair(X, Y)
    ry = Y.rows(cols, device)
    b = block_size(X, memory, device)
    return torch.cat(
        [
            _shape(X, _block(X, X.rows(slice(s, min(s + b, X.n)), device), ry))
            for s in range(0, X.n, b)
        ]
    )


def piece_norms(X: Features, rows: dict, device="cpu") -> torch.Tensor:
    """``(N, pieces)`` float64: each sample's feature norm in each piece, sqrt of the piece's own
    kernel diagonal, from the loaded ``rows`` of every sample (scalar kinds)."""
    parts = []
    for i, piece in enumerate(X.pieces):  # each piece's own kernel diagonal, streamed
        one = Features([piece], _renumber(rows, i), X.labels, X.indices, X.meta)
        parts.append(diagonal(one, device=device).double())
    return torch.sqrt(torch.stack(parts, dim=1).clamp_min(0))  # rounding can dip below 0


def bound_plan(X: Features, norms: torch.Tensor) -> list:
    """The pieces worth bounding by Cauchy-Schwarz, |x_p| |x'_p|, before computing them: those
    whose share of the cost of a kernel entry is more than twice their mean share of kappa(x, x)
    (from ``norms``, :func:`piece_norms`), when together they cost at least 30% and hold at most
    30% of kappa(x, x); otherwise none. (The dense convolution gradients of LeNet-5 hold 76% of
    the numbers and a small share of kappa(x, x).)"""
    if len(X.pieces) < 2:
        return []
    sq = norms**2
    share = (sq / sq.sum(1, keepdim=True).clamp_min(1e-300)).mean(0).cpu().numpy()
    cost = np.array([pair_cost(p) for p in X.pieces], dtype=float)
    cost /= cost.sum()
    bounded = [i for i in range(len(X.pieces)) if share[i] < 0.5 * cost[i]]
    if not bounded or cost[bounded].sum() < 0.3 or share[bounded].sum() > 0.3:
        return []
    return bounded


def rounding_margin(X: Features) -> float:
    """A relative allowance for rounding in a kernel entry, times |x| |x'|: comparisons of a bound
    with computed entries leave it as slack (about 4 x the entry's length x machine epsilon)."""
    return 4 * sum(pair_cost(p) for p in X.pieces) * torch.finfo(X.dtype).eps


def tie_tolerance(X: Features) -> float:
    """A typical rounding error of a kernel entry relative to |x| |x'|: sqrt(its length) times
    the machine epsilon (7e-6 for LeNet-5 in float32, 2e-14 in float64). Two values closer than
    this are a tie: the same image twice is not redundant with itself through rounding."""
    return math.sqrt(sum(pair_cost(p) for p in X.pieces)) * torch.finfo(X.dtype).eps


def pair_cost(piece) -> int:
    """Multiply-adds of one kernel entry of ``piece`` (scalar kinds), for planning."""
    if piece.form == "dense":
        return int(np.prod(piece.shapes["F"]))
    t, pa = piece.shapes["A"]
    return int(t * t * (pa + int(np.prod(piece.shapes["B"])) // t))


def _renumber(arrays: dict, i: int) -> dict:
    """Piece ``i``'s arrays renamed as piece 0."""
    return {
        f"0.{k.split('.')[1]}": v.cpu().numpy()
        for k, v in arrays.items()
        if k.split(".")[0] == str(i)
    }


# -- streaming row reductions ---------------------------------------------------------------------
class RowReducer:
    """Accumulates a per-row statistic over blocks ``K`` (rows ``r0..``, columns ``c0..``);
    excluded entries (a sample with itself) arrive as NaN.

    ``start(n, dtype, rows=(lo, hi))`` makes a reducer of rows ``lo..hi`` only (a task's part
    on a cluster); ``state()`` is what such a part sends back and ``merge(lo, state)`` adds it
    to the whole, exactly: the result does not depend on the order of the merges."""

    lo = 0

    def start(self, n: int, dtype: torch.dtype, rows: tuple | None = None) -> None:
        raise NotImplementedError

    def update(self, r0: int, k: torch.Tensor, c0: int) -> None:
        raise NotImplementedError

    def state(self):
        raise NotImplementedError

    def merge(self, lo: int, state) -> None:
        raise NotImplementedError

    def _rows(self, n: int, rows) -> int:
        """Set ``lo`` and return the number of rows this reducer holds."""
        self.lo, hi = (0, n) if rows is None else rows
        return hi - self.lo


class RowMax(RowReducer):
    """Maximum over j of kappa(i, j) (``values``) and its position in the column set
    (``argmax_position``, the first one on ties); -inf / -1 if there is none."""

    def start(self, n, dtype, rows=None):
        size = self._rows(n, rows)
        self.values = torch.full((size,), -math.inf, dtype=dtype)
        self.argmax_position = torch.full((size,), -1, dtype=torch.long)

    def update(self, r0, k, c0):
        v, a = torch.nan_to_num(k, nan=-math.inf).max(dim=1)
        self._better(r0 - self.lo, v, a + c0)

    def _better(self, s, v, a):
        """Keep ``v`` (at positions ``a``) where larger, or equal at a smaller position."""
        cur = self.values[s : s + len(v)]
        where = self.argmax_position[s : s + len(v)]
        better = (v > cur) | ((v == cur) & (a >= 0) & (a < where))
        cur[better] = v[better]
        where[better] = a[better]

    def state(self):
        return self.values, self.argmax_position

    def merge(self, lo, state):
        self._better(lo - self.lo, *state)


class RowCount(RowReducer):
    """Number of j with kappa(i, j) above (or below) a threshold: scalar or per row ``(N,)``."""

    def __init__(self, threshold, above: bool = True):
        self.threshold, self.above = threshold, above

    def start(self, n, dtype, rows=None):
        self.counts = torch.zeros(self._rows(n, rows), dtype=torch.long)
        self._thr = torch.as_tensor(self.threshold, dtype=dtype)
        if self._thr.ndim == 1 and len(self._thr) != n:
            raise ConfigError(f"per-row thresholds must have length {n}; got {len(self._thr)}")

    def update(self, r0, k, c0):
        thr = self._thr[r0 : r0 + len(k), None] if self._thr.ndim == 1 else self._thr
        hit = k > thr if self.above else k < thr  # NaN (excluded) compares False
        s = r0 - self.lo
        self.counts[s : s + len(k)] += hit.sum(dim=1)

    def state(self):
        return self.counts

    def merge(self, lo, state):
        s = lo - self.lo
        self.counts[s : s + len(state)] += state


class RowTopK(RowReducer):
    """The k largest (or smallest) kappa(i, j) per row and their positions, sorted; among equal
    values the smaller position first (-1 where there are fewer than k others)."""

    def __init__(self, k: int, largest: bool = True):
        if k < 1:
            raise ConfigError(f"expected at least 1; got {k}", param="k")
        self.k, self.largest = k, largest

    def start(self, n, dtype, rows=None):
        size = self._rows(n, rows)
        fill = -math.inf if self.largest else math.inf
        self.values = torch.full((size, self.k), fill, dtype=dtype)
        self.positions = torch.full((size, self.k), -1, dtype=torch.long)

    def update(self, r0, k, c0):
        fill = -math.inf if self.largest else math.inf
        k = torch.nan_to_num(k, nan=fill)  # excluded entries never win
        # the block's own best k first (cheap; for k = 1 the first on ties), then merged
        if self.k == 1:
            top, where = k.max(dim=1, keepdim=True) if self.largest else k.min(1, keepdim=True)
        else:
            top, where = _top(k, min(self.k, k.shape[1]), self.largest)
        pos = (where + c0).masked_fill_(top == fill, -1)
        self.merge(r0, (top, pos))

    def state(self):
        return self.values, self.positions

    def merge(self, lo, state):
        """The best k of the held and the given candidates: by value, then by position."""
        top, pos = state
        rows = slice(lo - self.lo, lo - self.lo + len(top))
        vals = torch.cat([self.values[rows], top], dim=1)
        idx = torch.cat([self.positions[rows], pos], dim=1)
        # empty slots (-1) after every real position, then a stable sort by value
        key = torch.where(idx < 0, torch.iinfo(torch.long).max, idx)
        by_pos = torch.argsort(key, dim=1, stable=True)
        vals, idx = vals.gather(1, by_pos), idx.gather(1, by_pos)
        order = torch.sort(vals, dim=1, descending=self.largest, stable=True).indices[:, : self.k]
        self.values[rows], self.positions[rows] = vals.gather(1, order), idx.gather(1, order)


def _top(k: torch.Tensor, count: int, largest: bool):
    """The ``count`` best entries of each row and their columns, the smaller column first among
    equal values: topk, and a stable sort for the rows where topk had to choose among ties."""
    top, where = k.topk(count, 1, largest=largest, sorted=True)
    last = top[:, -1:]
    chose = (k == last).sum(1) > (top == last).sum(1)
    if chose.any():
        rows = torch.nonzero(chose).flatten()
        order = torch.sort(k[rows], dim=1, descending=largest, stable=True)
        top[rows], where[rows] = order.values[:, :count], order.indices[:, :count]
    return top, where


class WriteKernel(RowReducer):
    """Writes every block into ``out``, an ``(N, M)`` array or memory map: the whole kernel
    matrix on disk, streamed (excluded entries, a sample with itself, are NaN). On a cluster
    ``out`` must be a memory-mapped ``.npy`` file that the workers reach; they write into it."""

    def __init__(self, out):
        self.out = out

    def start(self, n, dtype, rows=None):
        self._rows(n, rows)
        if self.out.shape[0] != n:
            raise ConfigError(f"the output has {self.out.shape[0]} rows; expected {n}")

    def update(self, r0, k, c0):
        self.out[r0 : r0 + len(k), c0 : c0 + k.shape[1]] = k.numpy()

    def state(self):
        if isinstance(self.out, np.memmap):
            self.out.flush()

    def merge(self, lo, state):
        pass  # written by the task itself

    def __getstate__(self):  # to workers: the file's name, not its contents
        if not isinstance(self.out, np.memmap):
            raise ConfigError(
                "a kernel written on a cluster needs a memory-mapped .npy file (workers write "
                "into it); got an array in memory"
            )
        return {"filename": str(self.out.filename)}

    def __setstate__(self, state):
        self.out = np.load(state["filename"], mmap_mode="r+")


# rows per block of the row reductions on a CPU: LeNet-5, 8,000 MNIST images, one thread, row
# max in 3.3 s at 512 rows against 3.7 s at 1,024, 4.5 s at 2,048 and 8.8 s at 8,192 (one block:
# no symmetry), the same answers (docs/BENCHMARKS.md)
CPU_ROWS = 512


def reduce_rows(
    X: Features,
    reducers: list[RowReducer],
    Y: Features | None = None,
    exclude_self: bool | None = None,
    memory: int | None = None,
    device="cpu",
    progress: bool = True,
    client=None,
) -> list[RowReducer]:
    """Stream kappa(X[i], Y[j]) over all j for every row i and feed each block to ``reducers``.

    Scalar kinds only. With Y omitted the kernel is symmetric: each block pair is computed once
    and fed to both sides, and ``exclude_self`` (default True) leaves out j == i. ``client``: a
    ``dask.distributed.Client``; each block pair is then a task on its workers, and the partial
    results are merged into ``reducers`` (the same results).
    """
    if X.m != 1:
        raise ConfigError("row reductions need a scalar kernel (lpntk, pntk, loss), not entk")
    symmetric = Y is None
    Y = _pair(X, Y)
    exclude_self = symmetric if exclude_self is None else exclude_self
    if exclude_self and not symmetric:
        raise ConfigError("exclude_self applies only to the kernel of a set with itself")
    b = block_size(X, memory, device)
    if torch.device(device).type == "cpu":  # small blocks stay in the cache, and share more
        b = min(b, CPU_ROWS)
    total = X.n * (X.n + 1) // 2 if symmetric else X.n * Y.n
    bar = progress_bar(total, f"{X.kind} blocks", unit="pair", enabled=progress)
    if client is not None:
        done = reduce_blocks(client, X, Y, reducers, symmetric, exclude_self, b, device, bar)
        bar.close()
        for r, d in zip(reducers, done, strict=True):
            r.__dict__.update(d.__dict__)
        return reducers
    for r in reducers:
        r.start(X.n, X.dtype)
    panel = panel_rows(X, b, memory, device)
    for p0 in range(0, X.n, panel):
        p1 = min(p0 + panel, X.n)
        px = X.rows(slice(p0, p1), device)
        for q0 in range(p0 if symmetric else 0, Y.n, panel):
            q1 = min(q0 + panel, Y.n)
            py = px if symmetric and q0 == p0 else Y.rows(slice(q0, q1), device)
            for i0 in range(p0, p1, b):
                i1 = min(i0 + b, p1)
                rx = {key: v[i0 - p0 : i1 - p0] for key, v in px.items()}
                for j0 in range(max(i0, q0) if symmetric else q0, q1, b):
                    j1 = min(j0 + b, q1)
                    ry = (
                        rx
                        if symmetric and j0 == i0
                        else {key: v[j0 - q0 : j1 - q0] for key, v in py.items()}
                    )
                    _feed(X, reducers, rx, ry, i0, j0, symmetric, exclude_self)
                    same = symmetric and j0 == i0
                    bar.update((i1 - i0) * (i1 - i0 + 1) // 2 if same else (i1 - i0) * (j1 - j0))
    bar.close()
    return reducers


def panel_rows(X: Features, b: int, memory: int | None = None, device="cpu") -> int:
    """Rows of the panels that :func:`reduce_rows` reads at once, a multiple of the block's
    ``b``: two panels in a quarter of ``memory``. Every block of a panel is then computed from
    rows in memory. Reading each block's rows from a store (zarr) made the demo's pass over
    54,001 LeNet-5 samples take 242 s instead of 156 s: 512-row reads sweep the store in about
    1.1 s, and the pass swept it about 53 times (docs/BENCHMARKS.md)."""
    memory = memory or default_memory(device)
    per_row = torch.tensor([], dtype=X.dtype).element_size() * X.floats_per_sample()
    rows = memory // (8 * max(1, per_row))
    return max(b, rows // b * b)


def _feed(X, reducers, rx, ry, i0, j0, symmetric, exclude_self) -> None:
    """One block kappa(rows i0.., rows j0..) to every reducer, and its mirror when symmetric."""
    k = _shape(X, _block(X, rx, ry)).cpu()
    if symmetric and j0 == i0 and exclude_self:
        k.diagonal().fill_(math.nan)
    # the mirrored block serves rows j; contiguous, as row-wise reductions are 4x slower on a
    # transposed view
    kt = k.T.contiguous() if symmetric and j0 != i0 else None
    for r in reducers:
        r.update(i0, k, j0)
        if kt is not None:
            r.update(j0, kt, i0)


def row_max(X: Features, Y: Features | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """``(values, positions)``: max over j != i of kappa(i, j) and where it is (Y: another set)."""
    (r,) = reduce_rows(X, [RowMax()], Y, **kwargs)
    return r.values.numpy(), r.argmax_position.numpy()


# -- on a Dask cluster (lpntk.kernel.distributed) -------------------------------------------------
def reduce_blocks(client, X, Y, templates, symmetric, exclude_self, b, device, bar) -> list:
    """Partial reductions of every block pair of the grid of ``b`` rows (as in
    :func:`~lpntk.kernel.reduce_rows`), merged into fresh copies of ``templates``."""
    for t in templates:
        if type(t).state is RowReducer.state or type(t).merge is RowReducer.merge:
            raise ConfigError(
                f"{type(t).__name__} has no state() and merge(), which a reduction on a cluster "
                "needs to send a task's part back and add it up; define them, or run without "
                "a client"
            )
    reducers = [copy.copy(t) for t in templates]
    for r in reducers:
        r.start(X.n, X.dtype)
    xr = reference(client, X)
    yr = xr if symmetric else reference(client, Y)
    tmpl = dist.share(client, templates)
    dtype = str(X.dtype).split(".")[-1]
    futures, run = {}, uuid.uuid4().hex[:12]  # keys of this pass only (an id() is reused)
    for i0 in range(0, X.n, b):
        for j0 in range(i0 if symmetric else 0, Y.n, b):
            i1, j1 = min(i0 + b, X.n), min(j0 + b, Y.n)
            fut = client.submit(
                _block_task,
                xr,
                yr,
                tmpl,
                (i0, i1, j0, j1),
                symmetric,
                exclude_self,
                dtype,
                str(device),
                key=f"lpntk-block-{i0}-{j0}-{run}",
                retries=dist.RETRIES,
                pure=False,
            )
            same = symmetric and j0 == i0
            futures[fut] = (i1 - i0) * (i1 - i0 + 1) // 2 if same else (i1 - i0) * (j1 - j0)

    def merge(pairs, parts):
        for lo, states in parts:
            for r, state in zip(reducers, states, strict=True):
                r.merge(lo, state)
        bar.update(pairs)

    dist.run_tasks(client, futures, merge, "the kernel pass")
    return reducers


def _block_task(xr, yr, templates, box, symmetric, exclude_self, dtype, device):
    X, Y = open_features(xr), open_features(yr)
    i0, i1, j0, j1 = box
    dev = resolve_device(device)
    rx = X.rows(slice(i0, i1), dev)
    ry = rx if symmetric and j0 == i0 else Y.rows(slice(j0, j1), dev)
    k = _shape(X, _block(X, rx, ry)).cpu()
    if symmetric and j0 == i0 and exclude_self:
        k.diagonal().fill_(math.nan)
    torch_dtype = getattr(torch, dtype)
    templates = dist.unshare(templates)
    parts = []
    sides = [(i0, i1, k, j0)]
    if symmetric and j0 != i0:
        sides.append((j0, j1, k.T.contiguous(), i0))
    for lo, hi, block, c0 in sides:
        states = []
        for t in templates:
            r = copy.copy(t)
            r.start(X.n, torch_dtype, rows=(lo, hi))
            r.update(lo, block, c0)
            states.append(r.state())
        parts.append((lo, states))
    return parts
