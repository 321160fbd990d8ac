"""Theorem 1 numerically: the kernel gaps against a brute-force Jacobian, the slope fit, the run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from lpntk.data import ArrayDataset
from lpntk.theorem import fit_slope, kernel_gaps, theorem1, theorem1_network


def tiny_data(n=12, k=3, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1, 4, 4), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n) % k, [str(c) for c in range(k)], name="tiny")


def brute_force(model, x, y, k):
    """eNTK blocks J(x) J(x')^T and lpNTK s(y)^T J J'^T s(y') / K from full Jacobians."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def z(p, xi):
        return functional_call(model, p, (xi[None],))[0]

    jac = [torch.cat([j.reshape(k, -1) for j in jacrev(z)(params, xi).values()], 1) for xi in x]
    s = [2 * torch.nn.functional.one_hot(torch.tensor(int(t)), k).double() - 1 for t in y]
    K = lambda a, b: jac[a] @ jac[b].T  # noqa: E731
    kappa = lambda a, b: s[a] @ K(a, b) @ s[b] / k  # noqa: E731
    return K, kappa


def test_kernel_gaps_equal_a_brute_force_jacobian():
    data = tiny_data()
    torch.manual_seed(0)
    width = 7
    model = theorem1_network(data.input_shape, 3, width, hidden=5)
    assert model.net[-1].bias.abs().sum() == 0
    pairs = np.array([[0, 1], [2, 5], [3, 3], [11, 4]])
    got = kernel_gaps(model, data, pairs, width)
    x, y = data.tensors()  # float32 inputs, as the dataset gives them
    x = x.double()
    K, kappa = brute_force(model, x, y, 3)
    for p, (i, j) in enumerate(pairs):
        gap = torch.linalg.matrix_norm(kappa(i, j) * torch.eye(3, dtype=torch.float64) - K(i, j))
        assert got["scaled"][p] == pytest.approx(gap.item() / math.sqrt(width), rel=1e-10)
        rel = gap / torch.linalg.matrix_norm(K(i, j))
        assert got["relative"][p] == pytest.approx(rel.item(), rel=1e-10)


def test_lecun_initialisation_of_the_last_layer():
    torch.manual_seed(1)
    w = theorem1_network((1, 4, 4), 10, 4096, hidden=8).net[-1].weight
    assert w.dtype == torch.float64
    assert w.std().item() == pytest.approx(1 / 64, rel=0.02)  # N(0, 1/w)


def test_fit_slope_recovers_a_power_law():
    widths = [64, 256, 1024, 4096]
    assert fit_slope(widths, [3 * w**-0.5 for w in widths]) == pytest.approx(-0.5)
    assert fit_slope(widths, [0.2 * w**-1.0 for w in widths]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="positive"):
        fit_slope(widths, [1, 0, 1, 1])


def test_theorem1_run_writes_results_and_a_plot(tmp_path):
    data = tiny_data(n=20)
    r = theorem1(
        data, widths=[4, 16, 64], seeds=[0, 1], pairs=5, hidden=6, out_dir=tmp_path, progress=False
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(r))
    assert len(r["runs"]) == 6 and {x["width"] for x in r["runs"]} == {4, 16, 64}
    for m in ("scaled", "relative"):
        assert len(r[f"{m}_slope_per_seed"]) == 2 and np.isfinite(r[f"{m}_slope"])
        assert all(x[f"{m}_mean"] > 0 for x in r["runs"])
        for x in r["runs"]:  # the mean over pairs lies between the two label groups' means
            groups = [x[f"{m}_mean_{g}"] for g in ("same_label", "other_label")]
            if None not in groups:
                assert min(groups) - 1e-12 <= x[f"{m}_mean"] <= max(groups) + 1e-12
    assert (tmp_path / "theorem1.png").stat().st_size > 1000
    again = theorem1(data, widths=[4, 16, 64], seeds=[0, 1], pairs=5, hidden=6, progress=False)
    assert again["runs"] == r["runs"]  # seeded
    with pytest.raises(ValueError, match="widths"):
        theorem1(data, widths=[4], pairs=5, progress=False)
