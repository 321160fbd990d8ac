"""Per-sample kernel features from one forward and ``m`` backward passes per batch.

The kernel between samples is a sum over parameterised layers. Each layer's share is kept in the
cheapest exact form, a *piece*:

- ``dense``: the layer's per-sample gradient rows ``F`` of shape ``(m, p)``; kernel ``F_i F_j^T``.
- ``factored``: for a layer ``out = W in + b`` applied at ``T`` positions (T = 1 for ``nn.Linear``,
  the output pixels for ``nn.Conv2d``), the layer inputs ``A`` ``(T, p_in + 1)`` and the
  back-propagated cotangents ``B`` ``(m, T, p_out)``; the gradient is ``sum_t B_t A_t^T`` and the
  kernel ``sum_{t,t'} (A_i A_j^T)_{tt'} (B_i B_j^T)_{tt'}``, which for ``T = 1`` is
  ``(a_i . a_j)(b_i . b_j)``: ``p_in + p_out`` numbers per sample instead of ``p_in * p_out``.

Strategies (all exact except ``projected``, all giving the same kernel):

- ``factored``: hooks capture every ``nn.Linear`` / ``nn.Conv2d`` input and output cotangent; each
  layer becomes a factored piece, or a dense one when that costs less per pair. Any other module
  with its own parameters (BatchNorm, LayerNorm, Embedding, a custom layer) gets per-sample
  gradients for its own parameters only (``torch.func`` vmap over vjp). No full per-sample model
  gradient is ever formed.
- ``materialised``: full per-sample gradients by ``torch.func`` (vmap over vjp); the reference.
- ``projected``: the factored pieces multiplied by a seeded random matrix (Rademacher or Gaussian,
  generated in row chunks, never stored whole), Khatri-Rao structured for factored layers where
  that is cheaper; unbiased, relative error about ``1/sqrt(p)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap

from .._errors import ConfigError
from .._seed import derive_seed
from ..models import check_logits
from .kinds import Kind


class NotFactorable(ConfigError):
    """The model's gradient does not decompose into per-module pieces (shared parameters,
    modules called several times, non-tensor outputs): only "materialised" applies."""


STRATEGIES = ("auto", "factored", "materialised", "projected")
PROJECTIONS = ("rademacher", "gaussian")
PROJECTION_CACHE = 512 << 20  # bytes of projection blocks kept between batches


@dataclass(frozen=True)
class Piece:
    """One additive part of the kernel: ``form`` "dense" (array ``F``) or "factored" (``A``,
    ``B``); ``shapes`` gives each array's per-sample shape."""

    name: str
    form: str
    shapes: dict

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "form": self.form,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
        }

    @staticmethod
    def from_dict(d: dict) -> Piece:
        return Piece(d["name"], d["form"], {k: tuple(v) for k, v in d["shapes"].items()})


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ConfigError(
            "the model has no trainable parameters: there is no gradient to build "
            "a kernel from (set requires_grad=True on the parameters to include)"
        )
    return params


def _layer_handler(mod: nn.Module) -> str:
    own = list(mod.parameters(recurse=False))
    frozen = any(not p.requires_grad for p in own)
    if isinstance(mod, nn.Linear) and not frozen:
        return "linear"
    if (
        isinstance(mod, nn.Conv2d)
        and not frozen
        and mod.groups == 1
        and mod.padding_mode == "zeros"
        and not isinstance(mod.padding, str)
    ):
        return "conv"
    return "generic"


class _Capture:
    """Forward hooks recording each parameterised module's inputs and output in one forward."""

    def __init__(self, model: nn.Module):
        self.targets = []  # (name, module, handler)
        for name, mod in model.named_modules():
            if any(p.requires_grad for p in mod.parameters(recurse=False)):
                self.targets.append((name or "<root>", mod, _layer_handler(mod)))
        self.records: dict[int, list] = {}
        self.active = False
        self.handles = [m.register_forward_hook(self._hook) for _, m, _ in self.targets]

    def _hook(self, module, args, output):
        if not self.active:
            return None
        if not isinstance(output, torch.Tensor):  # reported after the logits are checked
            self.records.setdefault(id(module), []).append((args, None))
            return None
        self.records.setdefault(id(module), []).append((args, output))
        return output.clone()  # later in-place ops must not alter the tensor we differentiate at

    def remove(self):
        for h in self.handles:
            h.remove()


def _generic_grads(mod: nn.Module, args: tuple, cot: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients ``(B, m, p)`` of ``mod``'s own parameters, given its batched inputs
    ``args`` and output cotangents ``cot`` ``(B, m, *out)``."""
    params = {n: p.detach() for n, p in mod.named_parameters(recurse=False) if p.requires_grad}
    tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def one(tensors, c):
        full = list(args)
        for i, t in zip(tensor_pos, tensors, strict=True):
            full[i] = t.unsqueeze(0)

        def f(p):
            return functional_call(mod, p, tuple(full)).squeeze(0)

        _, pull = vjp(f, params)
        return vmap(pull)(c)[0]

    grads = vmap(one)(tuple(args[i].detach() for i in tensor_pos), cot)
    b, m = cot.shape[:2]
    return torch.cat([g.reshape(b, m, -1) for g in grads.values()], dim=2)


def _conv_weight_grads(mod: nn.Conv2d, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients ``(B, m, O*C*kh*kw)`` of a Conv2d with input ``a``
    ``(B, C, H, W)`` and output cotangents ``c`` ``(B, m, O, Ho, Wo)``, as one grouped convolution
    of each sample's input with its own cotangents (stride and dilation swap roles)."""
    b, m, o, ho, wo = c.shape
    kh, kw = mod.kernel_size
    w = F.conv2d(
        a.transpose(0, 1),
        c.reshape(b * m * o, 1, ho, wo),
        stride=mod.dilation,
        dilation=mod.stride,
        padding=mod.padding,
        groups=b,
    )[..., :kh, :kw]
    return w.reshape(a.shape[1], b, m, o, kh, kw).permute(1, 2, 3, 0, 4, 5).reshape(b, m, -1)


def _factored_cost(t: int, pa: int, pb: int, m: int) -> tuple[float, float]:
    """Per-pair flops of the factored and the dense form of one layer."""
    return t * t * (pa + m * m * (pb + 1)), m * m * pa * pb


class Extractor:
    """Computes the feature pieces of batches for one model, kind and strategy."""

    def __init__(
        self,
        model: nn.Module,
        kind: Kind,
        strategy: str = "auto",
        proj_dim: int | None = None,
        projection: str = "rademacher",
        seed: int = 0,
    ):
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}",
                param="strategy",
            )
        if projection not in PROJECTIONS:
            raise ConfigError(
                f"unknown projection {projection!r}; expected one of {', '.join(PROJECTIONS)}",
                param="projection",
            )
        self.auto = strategy == "auto"
        if strategy == "auto":
            strategy = "factored" if proj_dim is None else "projected"
        if strategy == "projected" and proj_dim is None:
            raise ConfigError(
                "the projected strategy needs a projection dimension; none was given",
                param="proj_dim",
            )
        if proj_dim is not None and (not isinstance(proj_dim, (int, np.integer)) or proj_dim < 1):
            raise ConfigError(f"expected an integer >= 1; got {proj_dim!r}", param="proj_dim")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"expected an integer >= 0; got {seed!r}", param="seed")
        if strategy != "projected" and proj_dim is not None:
            raise ConfigError(
                f"applies only to the projected strategy, not {strategy!r}", param="proj_dim"
            )
        self.model, self.kind, self.strategy = model, kind, strategy
        self.proj_dim, self.projection, self.seed = proj_dim, projection, seed
        self.params = trainable(model)
        self.pieces: list[Piece] | None = None
        self._forms: dict[str, str] = {}
        self._proj_cache: dict = {}
        self._proj_cached = 0  # bytes held in _proj_cache

    def check(self, x: torch.Tensor, y: torch.Tensor) -> dict | None:
        """Validate the model's output on a first batch and, for the factored and projected
        strategies, verify that the per-layer pieces add up to the model's true gradient.

        Parameters shared between modules, or used outside their own module's forward, break the
        per-layer decomposition; then "auto" falls back to "materialised" (with a warning) and an
        explicit "factored" or "projected" raises. Returns the batch's features when the
        check produced them (so the caller need not extract this batch again), else None.
        """
        if self.strategy == "materialised":
            with torch.no_grad():
                self._logits_and_cotangents(x, y)
            return None
        try:
            raw = self._factored(x, y)
        except NotFactorable as e:
            self._fall_back(e)
            return None
        r = torch.randn(len(x), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        r = r.to(x.device)
        mine = 0.0
        for i, piece in enumerate(self._raw_pieces):
            if piece.form == "dense":
                f = raw[f"{i}.F"][:, 0].double()
                v = r @ f
            else:
                a, b = raw[f"{i}.A"].double(), raw[f"{i}.B"][:, 0].double()
                v = torch.einsum("n,ntp,nto->po", r, a, b)
            mine += (v * v).sum().item()
        logits = self.model(x)
        cot = self.kind.cotangents(logits.detach(), y)[:, 0]
        total = (r.to(logits.dtype)[:, None] * cot * logits).sum()
        grads = torch.autograd.grad(total, list(self.params.values()), allow_unused=True)
        true = sum((g.double() ** 2).sum().item() for g in grads if g is not None)
        tol = 1e-4 if logits.dtype == torch.float32 else 1e-9
        if abs(mine - true) <= tol * max(true, 1e-30):
            return self._project(raw) if self.strategy == "projected" else raw
        self._fall_back(
            NotFactorable(
                "the per-layer (factored) decomposition does not reproduce this model's gradient "
                f"(squared norm {mine:.6g} vs {true:.6g}): some parameters are shared between "
                "modules or used outside their own module's forward; use strategy='materialised'"
            )
        )
        return None

    def _fall_back(self, error: NotFactorable) -> None:
        """Under "auto" switch to the materialised strategy; otherwise raise ``error``."""
        if not self.auto or self.strategy != "factored":
            raise error
        warnings.warn(f"{error} (strategy 'auto' now uses 'materialised')", stacklevel=4)
        self.strategy, self.pieces, self._forms = "materialised", None, {}

    # -- one batch -------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Arrays ``{"<piece>.<F|A|B>": (B, ...)}`` for the batch ``x``, labels ``y``."""
        if self.strategy == "materialised":
            out = self._materialised(x, y)
        else:
            out = self._factored(x, y)
            if self.strategy == "projected":
                out = self._project(out)
        return out

    def _logits_and_cotangents(self, x, y):
        logits = self.model(x)
        check_logits(logits, len(x), labels=y)
        return logits, self.kind.cotangents(logits.detach(), y).to(logits.dtype)

    def _materialised(self, x, y):
        model = self.model
        params = {n: p.detach() for n, p in self.params.items()}
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            _, cot = self._logits_and_cotangents(x, y)

        def one(xi, ci):
            def f(p):
                return functional_call(model, {**buffers, **p}, (xi.unsqueeze(0),)).squeeze(0)

            _, pull = vjp(f, params)
            return vmap(pull)(ci)[0]

        grads = vmap(one)(x, cot)
        b, m = cot.shape[:2]
        dense = torch.cat([g.reshape(b, m, -1) for g in grads.values()], dim=2)
        if self.pieces is None:
            self.pieces = [Piece("all", "dense", {"F": tuple(dense.shape[1:])})]
        return {"0.F": dense}

    def _factored(self, x, y):
        cap = _Capture(self.model)
        try:
            cap.active = True
            logits, cot = self._logits_and_cotangents(x, y)
            cap.active = False
            layers = []
            for name, mod, handler in cap.targets:
                recs = cap.records.get(id(mod), [])
                if len(recs) > 1:
                    raise NotFactorable(
                        f"module {name} is called {len(recs)} times in one forward (shared "
                        "weights); the factored strategy needs each layer called once: use "
                        "strategy='materialised'"
                    )
                if recs and recs[0][1] is None:
                    raise NotFactorable(
                        f"module {name} ({type(mod).__name__}) has parameters and returns a "
                        "non-tensor; the factored strategy needs tensor outputs: use "
                        "strategy='materialised'"
                    )
                if recs:
                    layers.append((name, mod, handler, recs[0]))
            outputs = [rec[1] for *_, rec in layers]
            m = cot.shape[1]
            grads = [[] for _ in layers]
            for k in range(m):
                gk = torch.autograd.grad(
                    logits,
                    outputs,
                    grad_outputs=cot[:, k],
                    retain_graph=k < m - 1,
                    allow_unused=True,
                )
                for i, g in enumerate(gk):
                    grads[i].append(torch.zeros_like(outputs[i]) if g is None else g)
            cots = [torch.stack(g, dim=1) for g in grads]  # (B, m, *out)
            return self._pieces_from_layers(layers, cots)
        finally:
            cap.remove()

    def _pieces_from_layers(self, layers, cots):
        dense, factored = [], []
        for (name, mod, handler, (args, _out)), c in zip(layers, cots, strict=True):
            b, m = c.shape[:2]
            if handler == "generic":
                dense.append(_generic_grads(mod, args, c))
                continue
            a = args[0].detach()
            if handler == "linear":
                x_cols = a.reshape(b, -1, a.shape[-1]).transpose(1, 2)  # (B, P, T)
                b_rows = c.reshape(b, m, x_cols.shape[2], c.shape[-1])  # (B, m, T, O)
                p_in = a.shape[-1]
            else:
                x_cols = None  # unfolded only if the factored form is chosen
                b_rows = c.reshape(b, m, c.shape[2], -1).transpose(2, 3)
                p_in = a.shape[1] * mod.kernel_size[0] * mod.kernel_size[1]
            bias = mod.bias is not None
            t, pb = b_rows.shape[2], b_rows.shape[-1]
            form = self._forms.get(name)
            if form is None:
                fact, dens = _factored_cost(t, p_in + bias, pb, m)
                form = self._forms[name] = "factored" if fact < dens else "dense"
            if form == "factored" and x_cols is None:
                x_cols = F.unfold(a, mod.kernel_size, mod.dilation, mod.padding, mod.stride)
            if form == "factored":
                a_rows = x_cols.transpose(1, 2)
                if bias:
                    a_rows = torch.cat([a_rows, a_rows.new_ones(b, t, 1)], dim=2)
                factored.append((name, a_rows.contiguous(), b_rows.contiguous()))
            else:  # per-sample gradient: sum over positions of input x cotangent, plus the bias
                if handler == "conv":
                    grad = _conv_weight_grads(mod, a, c)
                else:
                    grad = (x_cols.unsqueeze(1) @ b_rows).reshape(b, m, -1)
                dense.append(torch.cat([grad, b_rows.sum(2)], dim=2) if bias else grad)
        out = {}
        pieces = []
        if dense:
            out["0.F"] = torch.cat(dense, dim=2)
            pieces.append(Piece("dense", "dense", {"F": tuple(out["0.F"].shape[1:])}))
        for name, a_rows, b_rows in factored:
            i = len(pieces)
            out[f"{i}.A"], out[f"{i}.B"] = a_rows, b_rows
            pieces.append(
                Piece(
                    name, "factored", {"A": tuple(a_rows.shape[1:]), "B": tuple(b_rows.shape[1:])}
                )
            )
        if self.pieces is None and self.strategy == "factored":
            self.pieces = pieces
        self._raw_pieces = pieces
        return out

    # -- projection ------------------------------------------------------------------------
    def _random(self, tag: tuple, rows: int, cols: int, dtype, device) -> torch.Tensor:
        """A seeded ``(rows, cols)`` block of the projection, unit variance entries."""
        key = (tag, rows, cols, dtype, str(device))
        if key in self._proj_cache:
            return self._proj_cache[key]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, *tag))
        if self.projection == "rademacher":
            r = torch.randint(0, 2, (rows, cols), generator=gen, dtype=torch.int8).to(dtype) * 2 - 1
        else:
            r = torch.randn(rows, cols, generator=gen, dtype=torch.float64).to(dtype)
        r = r.to(device)
        size = r.numel() * r.element_size()
        if self._proj_cached + size <= PROJECTION_CACHE:  # the rest is regenerated per batch
            self._proj_cache[key] = r
            self._proj_cached += size
        return r

    def _project(self, raw: dict) -> dict:
        p, chunk = self.proj_dim, 4096
        out = None
        for i, piece in enumerate(self._raw_pieces):
            if piece.form == "dense":
                f = raw[f"{i}.F"]
                dt, dev = f.dtype, f.device
                part = 0
                for c0 in range(0, f.shape[2], chunk):
                    c1 = min(c0 + chunk, f.shape[2])
                    part = part + f[:, :, c0:c1] @ self._random((i, 0, c0), c1 - c0, p, dt, dev)
            else:
                a, b = raw[f"{i}.A"], raw[f"{i}.B"]
                t, pa, pb = a.shape[1], a.shape[2], b.shape[-1]
                dt, dev = a.dtype, a.device
                if t * (pa + pb) <= pa * pb:  # Khatri-Rao: column k of R is r_b^k (x) r_a^k
                    pa_ = a @ self._random((i, 1), pa, p, dt, dev)  # (B, T, P)
                    pb_ = b @ self._random((i, 2), pb, p, dt, dev)  # (B, m, T, P)
                    part = (pa_.unsqueeze(1) * pb_).sum(2)
                else:
                    g = torch.einsum("btp,bmto->bmop", a, b).reshape(a.shape[0], b.shape[1], -1)
                    part = 0
                    for c0 in range(0, g.shape[2], chunk):
                        c1 = min(c0 + chunk, g.shape[2])
                        part = part + g[:, :, c0:c1] @ self._random((i, 3, c0), c1 - c0, p, dt, dev)
            out = part if out is None else out + part
        out = out / math.sqrt(p)
        if self.pieces is None:
            self.pieces = [Piece("projected", "dense", {"F": tuple(out.shape[1:])})]
        return {"0.F": out}
