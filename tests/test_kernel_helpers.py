"""Shared helpers for the kernel tests: tiny float64 models and a brute-force kernel reference.

The reference builds each sample's full Jacobian dz_k/dw one sample and one logit at a time with
plain ``torch.autograd.grad`` over all trainable parameters; nothing from ``lpntk`` is used. The
tests at the bottom check the reference itself against ``torch.func.jacrev``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

K = 3  # classes of every test model


# -- models ---------------------------------------------------------------------------------------
class MLP(nn.Module):
    """Linear layers with biases."""

    def __init__(self, d_in=5, hidden=(7, 6), k=K):
        super().__init__()
        dims = (d_in, *hidden)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.out = nn.Linear(dims[-1], k)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.out(x)


class CNN(nn.Module):
    """Conv2d with and without bias, stride 2, padding, MaxPool, AvgPool, Linear; (2, 9, 9)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, stride=2, padding=1)  # -> (3, 5, 5)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1, bias=False)  # -> (4, 5, 5)
        self.pool = nn.MaxPool2d(2)  # -> (4, 2, 2)
        self.c3 = nn.Conv2d(4, 4, 2, padding=1)  # -> (4, 3, 3)
        self.avg = nn.AvgPool2d(2, stride=1)  # -> (4, 2, 2)
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        x = torch.tanh(self.c1(x))
        x = self.pool(torch.tanh(self.c2(x)))
        x = self.avg(torch.tanh(self.c3(x)))
        return self.fc(x.flatten(1))


class CNNGeneric(nn.Module):
    """Convolutions the factored strategy treats as generic layers (padding="same", groups=2,
    non-zero padding mode) plus one small-output wide conv that it keeps factored (T = 4)."""

    def __init__(self):
        super().__init__()
        self.same = nn.Conv2d(2, 4, 3, padding="same")  # (2, 4, 4) -> (4, 4, 4)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.reflect = nn.Conv2d(4, 16, 3, padding=1, padding_mode="reflect")
        self.wide = nn.Conv2d(16, 32, 3, stride=2, padding=1)  # -> (32, 2, 2), T = 4
        self.fc = nn.Linear(128, K)

    def forward(self, x):
        x = torch.tanh(self.same(x))
        x = torch.tanh(self.grouped(x))
        x = torch.tanh(self.reflect(x))
        x = torch.tanh(self.wide(x))
        return self.fc(x.flatten(1))


class MiscConvNet(nn.Module):
    """Dilated conv with non-square kernel, stride and padding, Conv1d, ConvTranspose2d and a
    bias-free Linear on a 3-D input; input (2, 7, 6)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1))
        self.c1 = nn.Conv1d(3, 2, 2)
        self.ct = nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.lin = nn.Linear(5, 4, bias=False)
        self.fc = nn.Linear(4, K)

    def forward(self, x):
        h = torch.tanh(self.c(x))  # (3, 3, 5)
        g = torch.tanh(self.ct(h))  # (2, 6, 10)
        v = torch.tanh(self.c1(h.flatten(2)))  # (2, 14)
        u = torch.cat([g.flatten(1), v.flatten(1)], 1)[:, :5]
        u = self.lin(torch.stack([u, 2 * u], 1))  # (B, 2, 4)
        return self.fc(torch.tanh(u).mean(1))


class BNNet(nn.Module):
    """BatchNorm2d / BatchNorm1d, to be used in eval mode with non-trivial statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)  # (2, 5, 5) -> (4, 3, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(36, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, K)
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for bn in (self.bn, self.bn1):
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=gen))
                bn.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                bn.weight.copy_(1 + 0.5 * torch.randn(c, generator=gen))
                bn.bias.copy_(0.5 * torch.randn(c, generator=gen))

    def forward(self, x):
        x = torch.tanh(self.bn(self.conv(x)))
        x = torch.tanh(self.bn1(self.fc1(x.flatten(1))))
        return self.fc2(x)


class Scale(nn.Module):
    """A parameterised layer that is neither Linear nor Conv2d."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.3 * torch.randn(n))

    def forward(self, x):
        return x * self.weight


class CustomNet(nn.Module):
    """LayerNorm, a custom Scale module and parameters used directly in the root forward."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.ln = nn.LayerNorm(6)
        self.scale = Scale(6)
        self.fc2 = nn.Linear(6, K)
        self.offset = nn.Parameter(0.2 * torch.randn(K))
        self.temp = nn.Parameter(torch.tensor(1.3))
        with torch.no_grad():
            self.ln.weight.add_(0.3 * torch.randn(6))
            self.ln.bias.add_(0.3 * torch.randn(6))

    def forward(self, x):
        h = torch.tanh(self.scale(self.ln(self.fc1(x))))
        return self.temp * self.fc2(h) + self.offset


class SeqNet(nn.Module):
    """nn.Linear on 3-D inputs (B, T, in): one wide layer (kept factored, T = 2) and one narrow."""

    def __init__(self, t=2):
        super().__init__()
        self.t = t
        self.fc1 = nn.Linear(15, 16)
        self.fc2 = nn.Linear(16, K)

    def forward(self, x):  # x: (B, T, 15)
        return self.fc2(torch.tanh(self.fc1(x))).sum(1)


class FrozenNet(MLP):
    """An MLP whose first layer is frozen and whose second layer has a frozen weight only."""

    def __init__(self):
        super().__init__()
        for p in self.layers[0].parameters():
            p.requires_grad_(False)
        self.layers[1].weight.requires_grad_(False)


class SharedNet(nn.Module):
    """One module called twice in one forward (shared weights)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 5)
        self.fc2 = nn.Linear(5, K)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(torch.tanh(self.fc1(x)))))


def make_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cls = {
        "mlp": MLP,
        "cnn": CNN,
        "cnn_generic": CNNGeneric,
        "misc": MiscConvNet,
        "bn": BNNet,
        "custom": CustomNet,
        "seq": SeqNet,
        "frozen": FrozenNet,
        "shared": SharedNet,
    }[name]
    return cls().double().eval()


INPUT_SHAPES = {
    "mlp": (5,),
    "cnn": (2, 9, 9),
    "cnn_generic": (2, 4, 4),
    "misc": (2, 7, 6),
    "bn": (2, 5, 5),
    "custom": (5,),
    "seq": (2, 15),
    "frozen": (5,),
    "shared": (5,),
}


def make_data(name: str, n: int = 8, seed: int = 1, k: int = K) -> TensorDataset:
    """A float64 TensorDataset of ``n`` random inputs for model ``name`` with labels 0..k-1."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *INPUT_SHAPES[name], generator=gen, dtype=torch.float64)
    y = torch.arange(n) % k
    y = y[torch.randperm(n, generator=gen)]
    return TensorDataset(x, y)


# -- brute-force reference ------------------------------------------------------------------------
def jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobians ``(N, K, P)`` of the logits w.r.t. all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        z = model(x[i : i + 1])[0]
        jac = []
        for k in range(len(z)):
            g = torch.autograd.grad(z[k], params, retain_graph=True, allow_unused=True)
            jac.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if gi is None else gi).reshape(-1)
                        for p, gi in zip(params, g, strict=True)
                    ]
                )
            )
        rows.append(torch.stack(jac))
    return torch.stack(rows).detach()


class Reference:
    """eNTK blocks ``E[i, j] = J_i J_j^T`` and the kernels built from them, for one model."""

    def __init__(self, model, data, data2=None):
        x, self.labels = data.tensors
        with torch.no_grad():
            self.logits = model(x)
        self.J = jacobians(model, x)
        self.k = self.J.shape[1]
        if data2 is None:
            self.J2, self.labels2, self.logits2 = self.J, self.labels, self.logits
        else:
            x2, self.labels2 = data2.tensors
            with torch.no_grad():
                self.logits2 = model(x2)
            self.J2 = jacobians(model, x2)

    def entk(self) -> torch.Tensor:
        return torch.einsum("ikp,jlp->ijkl", self.J, self.J2)

    @staticmethod
    def signs(labels, k):
        s = -torch.ones(len(labels), k, dtype=torch.float64)
        s[torch.arange(len(labels)), labels] = 1.0
        return s

    def kernel(self, kind: str) -> torch.Tensor:
        e = self.entk()
        if kind == "entk":
            return e
        if kind == "pntk":
            return e.sum((2, 3)) / self.k
        if kind == "lpntk":
            s1, s2 = self.signs(self.labels, self.k), self.signs(self.labels2, self.k)
            return torch.einsum("ik,ijkl,jl->ij", s1, e, s2) / self.k
        if kind == "loss":
            q1 = torch.softmax(self.logits, 1) - nn.functional.one_hot(self.labels, self.k)
            q2 = torch.softmax(self.logits2, 1) - nn.functional.one_hot(self.labels2, self.k)
            return torch.einsum("ik,ijkl,jl->ij", q1, e, q2)
        raise ValueError(kind)


def rel_err(a, b) -> float:
    """Relative Frobenius error of ``a`` against the reference ``b``."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float(torch.linalg.norm((a - b).reshape(-1)) / torch.linalg.norm(b.reshape(-1)))


# -- checks of the reference itself ---------------------------------------------------------------
def test_reference_jacobian_matches_jacrev():
    model = make_model("custom")
    x = make_data("custom", n=3).tensors[0]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def f(p, xi):
        return torch.func.functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    for i in range(3):
        jac = torch.func.jacrev(f)(params, x[i])
        full = torch.cat([jac[n].reshape(K, -1) for n in params], dim=1)
        assert torch.allclose(jacobians(model, x[i : i + 1])[0], full, rtol=1e-12, atol=1e-14)


def test_reference_excludes_frozen_parameters():
    model = make_model("frozen")
    x = make_data("frozen", n=2).tensors[0]
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable < sum(p.numel() for p in model.parameters())
    assert jacobians(model, x).shape == (2, K, n_trainable)


def test_reference_lpntk_definition_by_hand():
    """lpNTK of two samples, written out as sum_kl s_k s_l <dz_k/dw, dz_l/dw> / K."""
    model = make_model("mlp")
    data = make_data("mlp", n=2)
    ref = Reference(model, data)
    s = Reference.signs(data.tensors[1], K)
    want = sum(
        s[0, a] * s[1, b] * float(ref.J[0, a] @ ref.J[1, b]) for a in range(K) for b in range(K)
    )
    assert math.isclose(float(ref.kernel("lpntk")[0, 1]), want / K, rel_tol=1e-12)
