"""The projected strategy: unbiased random features whose error shrinks like 1/sqrt(p)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lpntk import ConfigError
from lpntk.kernel import compute_features, gram

from .test_kernel_helpers import make_data, rel_err

DIMS = (64, 256, 1024, 4096)
SEEDS = (0, 1, 2)


class ProjNet(nn.Module):
    """Linear layers (Khatri-Rao projected factored pieces) and a LayerNorm (a dense piece)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 24)
        self.ln = nn.LayerNorm(24)
        self.fc2 = nn.Linear(24, 24)
        self.fc3 = nn.Linear(24, 3)

    def forward(self, x):
        h = torch.tanh(self.ln(self.fc1(x)))
        return self.fc3(torch.tanh(self.fc2(h)))


@functools.cache
def model_and_data():
    torch.manual_seed(0)
    model = ProjNet().double().eval()
    return model, make_data("mlp", n=12, seed=4)


def projected(kind="lpntk", p=64, projection="rademacher", seed=0, strategy="projected"):
    model, data = model_and_data()
    return compute_features(
        model,
        data,
        kind,
        strategy,
        proj_dim=p,
        projection=projection,
        seed=seed,
        dtype="float64",
        batch_size=5,
        progress=False,
    )


@functools.cache
def exact(kind="lpntk"):
    model, data = model_and_data()
    return gram(compute_features(model, data, kind, "factored", dtype="float64", progress=False))


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
def test_error_shrinks_like_inverse_sqrt_p(projection):
    want = exact()
    errs = []
    for p in DIMS:
        errs.append(np.mean([rel_err(gram(projected(p=p, projection=projection, seed=s)), want)
                             for s in SEEDS]))  # fmt: skip
    errs = np.array(errs)
    assert errs[-1] < errs[0] / 4, errs
    scaled = errs * np.sqrt(DIMS)
    assert scaled.max() / scaled.min() < 3, errs


def test_projected_entk_and_shapes():
    want = exact("entk")
    f = projected("entk", p=2048, seed=3)
    assert f.pieces[0].shapes == {"F": (3, 2048)}
    assert f.arrays["0.F"].shape == (12, 3, 2048)
    assert rel_err(gram(f), want) < 0.2
    assert f.meta["strategy"] == "projected" and f.meta["proj_dim"] == 2048


def test_projection_is_unbiased():
    """The mean over seeds approaches the exact kernel faster than one draw does."""
    want = exact()
    grams = [gram(projected(p=64, seed=s)) for s in range(24)]
    one = np.mean([rel_err(g, want) for g in grams])
    mean = rel_err(torch.stack(grams).mean(0), want)
    assert mean < one / 2.5


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
def test_deterministic_for_a_seed(projection):
    a = projected(p=128, projection=projection, seed=5)
    b = projected(p=128, projection=projection, seed=5)
    np.testing.assert_array_equal(a.arrays["0.F"], b.arrays["0.F"])
    c = projected(p=128, projection=projection, seed=6)
    assert not np.allclose(a.arrays["0.F"], c.arrays["0.F"])
    other = "gaussian" if projection == "rademacher" else "rademacher"
    d = projected(p=128, projection=other, seed=5)
    assert not np.allclose(a.arrays["0.F"], d.arrays["0.F"])
    assert a.meta["projection"] == projection and a.meta["seed"] == 5


def test_auto_with_proj_dim_projects():
    f = projected(p=32, strategy="auto")
    assert f.meta["strategy"] == "projected"
    np.testing.assert_array_equal(f.arrays["0.F"], projected(p=32).arrays["0.F"])


def test_projected_does_not_depend_on_batch_size():
    model, data = model_and_data()
    kw = dict(proj_dim=64, dtype="float64", progress=False)
    a = compute_features(model, data, "lpntk", "projected", batch_size=1, **kw)
    b = compute_features(model, data, "lpntk", "projected", batch_size=12, **kw)
    np.testing.assert_allclose(a.arrays["0.F"], b.arrays["0.F"], rtol=1e-12, atol=1e-13)


def test_projection_norm_is_preserved_on_average():
    want = torch.diagonal(exact())
    got = torch.stack([torch.diagonal(gram(projected(p=256, seed=s))) for s in range(8)]).mean(0)
    assert rel_err(got, want) < 4 / math.sqrt(256 * 8)


def test_projected_requires_proj_dim():
    model, data = model_and_data()
    for p in (None, 0, -3):
        with pytest.raises(ConfigError, match="proj_dim"):
            compute_features(model, data, strategy="projected", proj_dim=p, progress=False)
    with pytest.raises(ConfigError, match="projection"):
        compute_features(model, data, proj_dim=8, projection="sparse", progress=False)
