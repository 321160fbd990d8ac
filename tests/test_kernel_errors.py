"""Bad input gives a clear LpntkError / ConfigError / DataError; plus known library defects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lpntk import ConfigError, DataError, LpntkError
from lpntk.kernel import NotFactorable, compute_features, gram

from .test_kernel_helpers import K, Reference, make_data, make_model, rel_err

STRATEGIES = ["factored", "materialised"]


def run(model, data, kind="lpntk", strategy="factored", **kw):
    kw = {"dtype": "float64", "progress": False, **kw}
    return compute_features(model, data, kind, strategy, **kw)


class Wrap(nn.Module):
    """An MLP whose logits are passed through ``post``."""

    def __init__(self, post, k=K):
        super().__init__()
        self.fc = nn.Linear(5, k)
        self.post = post

    def forward(self, x):
        return self.post(self.fc(x))


# -- model output --------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("post", "k", "shown"),
    [
        (lambda z: z.sum(1), K, "(4,)"),
        (lambda z: z.unsqueeze(2), K, "(4, 3, 1)"),
        (lambda z: (z, z), K, "tuple"),
        (lambda z: {"logits": z}, K, "dict"),
        (lambda z: z[:1], K, "(1, 3)"),
    ],
)
def test_model_output_not_batch_by_k(post, k, shown, strategy):
    model = Wrap(post, k).double()
    with pytest.raises(LpntkError, match="shape \\(batch, K\\)") as e:
        run(model, make_data("mlp", n=4), strategy=strategy)
    assert shown in str(e.value)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_logit(strategy):
    data = TensorDataset(torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    with pytest.raises(LpntkError, match="K >= 2"):
        run(Wrap(lambda z: z, 1).double(), data, strategy=strategy)


# -- labels --------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", ["lpntk", "loss", "entk", "pntk"])
@pytest.mark.parametrize("bad", [K, 7, -1])
def test_label_out_of_range(bad, kind, strategy):
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, bad, 0, 1])
    with pytest.raises(LpntkError, match=f"label {bad} is out of range") as e:
        run(make_model("mlp"), TensorDataset(x, y), kind, strategy, batch_size=4)
    assert "0..2" in str(e.value)


@pytest.mark.parametrize(
    "y", [torch.tensor([0.0, 1.0, 2.0, 1.0]), torch.tensor([True, False, True, False])]
)
def test_non_integer_labels(y):
    data = TensorDataset(torch.randn(4, 5, dtype=torch.float64), y)
    with pytest.raises(DataError, match="labels must be integers"):
        run(make_model("mlp"), data)


def test_labels_of_wrong_shape():
    data = TensorDataset(torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, 1).long())
    with pytest.raises(LpntkError, match="labels must have shape"):
        run(make_model("mlp"), data)


# -- model ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["factored", "materialised", "projected"])
def test_no_trainable_parameters(strategy):
    model = make_model("mlp")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        run(model, make_data("mlp"), strategy=strategy, proj_dim=8)


def test_model_without_any_parameters():
    model = nn.Sequential(nn.Flatten(), nn.Tanh())
    data = TensorDataset(torch.randn(4, 3, dtype=torch.float64), torch.zeros(4).long())
    with pytest.raises(ConfigError, match="no trainable parameters"):
        run(model, data)


def test_module_called_twice_under_factored():
    with pytest.raises(LpntkError, match="called 2 times") as e:
        run(make_model("shared"), make_data("shared"))
    assert "materialised" in str(e.value) and "fc1" in str(e.value)


class TiedNet(nn.Module):
    """Two Linear modules sharing one weight Parameter (weight tying)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.out = nn.Linear(5, K)

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


class OutsideNet(nn.Module):
    """A child's parameter used by the parent's forward, outside the child's own forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, K)

    def forward(self, x):
        return self.out(torch.tanh(x @ self.fc.weight.T))


@pytest.mark.parametrize("cls", [TiedNet, OutsideNet])
def test_tied_or_foreign_parameters_materialised(cls):
    torch.manual_seed(0)
    model = cls().double().eval()
    data = make_data("mlp")
    feats = run(model, data, "entk", "materialised")
    assert rel_err(gram(feats), Reference(model, data).kernel("entk")) <= 1e-10


@pytest.mark.parametrize("cls", [TiedNet, OutsideNet])
@pytest.mark.parametrize("strategy", ["factored", "projected"])
def test_tied_or_foreign_parameters_refused_by_factored(cls, strategy):
    torch.manual_seed(0)
    model = cls().double().eval()
    extra = {"proj_dim": 8} if strategy == "projected" else {}
    with pytest.raises(NotFactorable, match="materialised"):
        run(model, make_data("mlp"), "entk", strategy, **extra)


@pytest.mark.parametrize("cls", [TiedNet, OutsideNet])
def test_auto_falls_back_to_materialised(cls):
    torch.manual_seed(0)
    model = cls().double().eval()
    data = make_data("mlp")
    with pytest.warns(UserWarning, match="now uses 'materialised'"):
        feats = run(model, data, "entk", "auto")
    assert feats.meta["strategy"] == "materialised"
    assert rel_err(gram(feats), Reference(model, data).kernel("entk")) <= 1e-10


def test_auto_falls_back_for_a_module_called_twice():
    model, data = make_model("shared"), make_data("shared")
    with pytest.warns(UserWarning, match="called 2 times"):
        feats = run(model, data, "lpntk", "auto")
    assert feats.meta["strategy"] == "materialised"
    assert rel_err(gram(feats), Reference(model, data).kernel("lpntk")) <= 1e-10


class EmbNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, K)

    def forward(self, x):
        return self.fc(torch.tanh(self.emb(x)).mean(1))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_embedding_with_integer_inputs(strategy):
    torch.manual_seed(0)
    model = EmbNet().double().eval()
    data = TensorDataset(torch.randint(0, 10, (6, 4)), torch.tensor([0, 1, 2, 0, 1, 2]))
    feats = run(model, data, "lpntk", strategy)
    assert rel_err(gram(feats), Reference(model, data).kernel("lpntk")) <= 1e-10


def test_submodule_modes_restored():
    model = make_model("bn").train()
    model.bn.eval()
    run(model, make_data("bn", n=4))
    assert model.training and not model.bn.training


# -- data ----------------------------------------------------------------------------------------
def test_empty_dataset():
    data = TensorDataset(torch.zeros(0, 5, dtype=torch.float64), torch.zeros(0).long())
    with pytest.raises(DataError, match="empty"):
        run(make_model("mlp"), data)


@pytest.mark.parametrize("loader_kw", [{"shuffle": True}, {"drop_last": True}])
def test_dataloader_not_in_order(loader_kw):
    loader = DataLoader(make_data("mlp"), batch_size=3, **loader_kw)
    with pytest.raises(ConfigError, match="shuffle=False"):
        run(make_model("mlp"), loader)


def test_not_a_dataset():
    data = make_data("mlp")
    with pytest.raises(ConfigError, match="map-style Dataset"):
        run(make_model("mlp"), (data[i] for i in range(len(data))))


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kind": "ntk"}, "unknown kernel kind 'ntk'"),
        ({"strategy": "fast"}, "unknown strategy 'fast'"),
        ({"projection": "sparse", "proj_dim": 8}, "unknown projection 'sparse'"),
        ({"dtype": "float16"}, "dtype: expected one of float32, float64"),
        ({"dtype": torch.float64}, "dtype: expected one of"),
        ({"strategy": "projected"}, "proj_dim"),
    ],
)
def test_unknown_names(kw, match):
    model, data = make_model("mlp"), make_data("mlp")
    kw = {"dtype": "float64", "progress": False, **kw}
    with pytest.raises(ConfigError, match=match):
        compute_features(model, data, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda():
    with pytest.raises(ConfigError, match="no CUDA device"):
        run(make_model("mlp"), make_data("mlp"), device="cuda")


@pytest.mark.parametrize("shuffle", [True, False])
def test_dataloader_with_out_of_order_batch_sampler(shuffle):
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    data = make_data("mlp")
    gen = torch.Generator().manual_seed(0)
    sampler = RandomSampler(data, generator=gen) if shuffle else SequentialSampler(data)
    loader = DataLoader(data, batch_sampler=BatchSampler(sampler, 3, drop_last=not shuffle))
    with pytest.raises(ConfigError, match="in order"):
        run(make_model("mlp"), loader)


# -- error types and dataset items ---------------------------------------------------------------
def test_errors_are_also_the_builtin_exceptions():
    model, data = make_model("mlp"), make_data("mlp")
    with pytest.raises(ValueError, match="returned"):  # a ModelError
        run(Wrap(lambda z: z.sum(1)), TensorDataset(torch.randn(4, 5), torch.zeros(4).long()))
    bad = TensorDataset(torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="label 7 is out of range"):  # a DataError
        run(Wrap(lambda z: z).double(), bad)
    with pytest.raises(ValueError, match="batch_size"):  # a ConfigError
        run(model, data, batch_size=0)
    from lpntk.kernel import Features

    with pytest.raises(FileNotFoundError):  # a MissingFileError
        Features.load("/nonexistent/store")


class Items(torch.utils.data.Dataset):
    """Items as dicts or as (input, extra, label) tuples, like many users' datasets."""

    def __init__(self, data, form):
        self.data, self.form = data, form

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        if self.form == "dict":
            return {"image": x, "label": y, "id": i}
        return x, f"sample {i}", y


@pytest.mark.parametrize(("form", "fields"), [("dict", ("image", "label")), ("triple", (0, 2))])
def test_fields_say_which_parts_are_input_and_label(form, fields):
    model, data = make_model("mlp"), make_data("mlp")
    want = gram(run(model, data))
    with pytest.raises(DataError, match="pass fields=\\(input, label\\)"):
        run(model, Items(data, form))
    got = gram(run(model, Items(data, form), fields=fields))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(DataError):
        run(model, Items(data, form), fields=("nope", 9) if form == "dict" else (0, 9))
    loader = DataLoader(Items(data, form), batch_size=3)
    torch.testing.assert_close(
        gram(run(model, loader, fields=fields)), want, rtol=1e-12, atol=1e-14
    )


def test_items_without_a_label_are_refused():
    class Inputs(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.randn(5)

    with pytest.raises(DataError, match="single Tensor"):
        run(make_model("mlp"), Inputs())


class IntLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, K)

    def forward(self, x):
        return self.fc(x).round().long()


def test_bad_api_input_raises_lpntk_errors(tmp_path):
    """Each of these once leaked a plain torch/numpy exception."""
    import lpntk
    from lpntk import CheckpointError, ModelError

    model, data = make_model("mlp"), make_data("mlp")
    wide = TensorDataset(torch.randn(4, 7, dtype=torch.float64), torch.zeros(4).long())
    cases = [
        (lambda: run(model, wide), ModelError, "first batch"),
        (lambda: run(model, [(torch.zeros(5, dtype=torch.uint8), 0)] * 3), ModelError, "uint8"),
        (lambda: run(model, [(torch.randn(5).double(), "3")] * 3), DataError, "labels"),
        (lambda: run(model, [(torch.randn(5).double(), None)] * 3), DataError, "batched"),
        (lambda: run(model, data, batch_size=2.5), ConfigError, "batch_size"),
        (lambda: run(model, data, "lpntk", "projected", proj_dim=2.5), ConfigError, "proj_dim"),
        (lambda: run(model, data, "lpntk", "projected", proj_dim=4, seed=-1), ConfigError, "seed"),
        (lambda: run(IntLogits().double(), data), ModelError, "floating-point"),
        (lambda: run(lambda x: x, data), ConfigError, "nn.Module"),
        (lambda: lpntk.load_checkpoint(None), ConfigError, "checkpoint"),
        (lambda: lpntk.checkpoint_data({}, "train"), CheckpointError, "lacks"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append((lambda: run(model, data, out_dir=tmp_path / "file"), ConfigError, "is a file"))
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            call()


def test_bad_analysis_arguments_raise_lpntk_errors():
    from lpntk.analysis import drop_redundant, farthest_point_clusters, redundant_samples
    from lpntk.kernel import block_size

    X = run(make_model("mlp"), make_data("mlp"))
    cases = [
        (lambda: farthest_point_clusters(X, 2, device="bogus"), "device"),
        (lambda: redundant_samples(X, memory=-1, progress=False), "memory"),
        (lambda: block_size(X, memory=-1), "memory"),
        (lambda: redundant_samples(np.zeros((3, 3)), progress=False), "Features store"),
        (lambda: drop_redundant(X), "Redundancy"),
        (lambda: farthest_point_clusters(X, True, progress=False), "count or a fraction"),
        (lambda: run(make_model("mlp"), make_data("mlp"), out_dir=""), "empty path"),
    ]
    for call, words in cases:
        with pytest.raises(ConfigError, match=words):
            call()
    c = farthest_point_clusters(X, np.float32(0.5), progress=False)
    assert len(c.centroids) == round(0.5 * X.n)
