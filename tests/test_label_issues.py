"""Label issues: planted flips ranked first, suggested labels, the scores against a dense
float64 reference, eNTK contraction, injected noise, and the command end to end."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lpntk import SampleKernel
from lpntk._errors import ConfigError
from lpntk.analysis import label_issues
from lpntk.analysis.label_issues import lpntk_of, rank_of
from lpntk.cli import main
from lpntk.kernel import compute_features, gram
from lpntk.kernel.ops import contract, diagonal, neighbour_kernel, pair_kernel
from lpntk.noise import CONFUSABLE, flip_labels

from .test_cli import DATA_DIR, needs_mnist


def blobs(n_per=20, classes=3, flips=(5, 27, 48), seed=0):
    """Well-separated Gaussian blobs, one per class, as (1, 1, 4) inputs; ``flips`` positions
    get the next class's label. Returns x, the noisy labels, the clean labels."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.eye(classes, 4, dtype=torch.float64)
    clean = torch.arange(classes).repeat_interleave(n_per)
    x = centres[clean] + 0.3 * torch.randn(len(clean), 4, generator=g, dtype=torch.float64)
    noisy = clean.clone()
    noisy[list(flips)] = (clean[list(flips)] + 1) % classes
    return x.view(-1, 1, 1, 4), noisy, clean


def trained_mlp(x, y, classes=3, steps=150, seed=0):
    """A small MLP fitted for a few steps: it learns the blobs, not yet the flips."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, classes))
    model = model.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def planted():
    x, noisy, clean = blobs()
    model = trained_mlp(x, noisy)
    data = torch.utils.data.TensorDataset(x, noisy)
    entk = compute_features(model, data, "entk", dtype="float64", progress=False)
    return model, data, entk, noisy.numpy(), clean.numpy()


@pytest.mark.parametrize("design", ["agreement", "contradiction", "vote"])
def test_planted_flips_rank_first_and_get_their_true_label(planted, design):
    _, _, entk, noisy, clean = planted
    li = label_issues(entk, k=5, design=design, progress=False)
    flipped = np.flatnonzero(noisy != clean)
    assert sorted(li.top(len(flipped)).tolist()) == flipped.tolist()
    assert sorted(li.rank[flipped].tolist()) == [1, 2, 3]
    np.testing.assert_array_equal(li.suggested[flipped], clean[flipped])
    assert (li.suggested != li.labels).all()  # always another label than the given one


def test_scores_match_a_dense_float64_reference(planted):
    """Every quantity recomputed from the full eNTK Gram matrix with plain loops."""
    _, _, entk, noisy, _ = planted
    k, K, n = 4, 3, entk.n
    li = label_issues(entk, k=k, progress=False)
    G = gram(entk).numpy()  # (n, n, K, K)
    s = 2 * np.eye(K) - 1
    pntk = G.sum((2, 3)) / K
    norm = np.sqrt(np.diag(pntk))
    cos = pntk / np.outer(norm, norm)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        order = sorted(others, key=lambda j: (-cos[i, j], j))[:k]
        assert li.neighbours[i].tolist() == order
        w = np.clip(cos[i, order], 0, None)
        np.testing.assert_allclose(li.weights[i], w, rtol=1e-12, atol=1e-14)
        for c in range(K):
            vals = []
            for j in order:
                num = s[c] @ G[i, j] @ s[noisy[j]]
                den = math.sqrt(s[c] @ G[i, i] @ s[c]) * math.sqrt(
                    s[noisy[j]] @ G[j, j] @ s[noisy[j]]
                )
                vals.append(num / den)
            want = float(np.dot(w, vals) / w.sum())
            assert li.agreement[i, c] == pytest.approx(want, rel=1e-10, abs=1e-12)
        other = max(li.agreement[i, c] for c in range(K) if c != noisy[i])
        given = li.agreement[i, noisy[i]]
        assert li.scores["agreement"][i] == pytest.approx(other - given, abs=1e-12)
        assert li.scores["contradiction"][i] == pytest.approx(-given, abs=1e-12)
        vote = sum(w[t] for t, j in enumerate(order) if noisy[j] != noisy[i]) / w.sum()
        assert li.scores["vote"][i] == pytest.approx(vote, abs=1e-12)
    assert li.design == "vote" and li.score is li.scores["vote"]  # the default
    np.testing.assert_array_equal(li.rank, rank_of(li.score))


def test_contract_gives_every_scalar_kind_exactly(planted):
    model, data, entk, noisy, _ = planted
    for kind in ("lpntk", "pntk"):
        want = gram(compute_features(model, data, kind, dtype="float64", progress=False))
        K = entk.m
        c = np.ones(K) / math.sqrt(K) if kind == "pntk" else None
        got = gram(lpntk_of(entk) if kind == "lpntk" else contract(entk, c))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the lpNTK under other labels than the given ones: s(y')^T Theta s(y'') / K
    other = (noisy + 1) % 3
    G, s = gram(entk).numpy(), 2 * np.eye(3) - 1
    want = np.einsum("ik,ijkl,jl->ij", s[other], G, s[other]) / 3
    np.testing.assert_allclose(gram(lpntk_of(entk, other)).numpy(), want, rtol=1e-11, atol=1e-12)
    with pytest.raises(ConfigError, match="shape"):
        contract(entk, np.ones(5))
    with pytest.raises(ConfigError, match="eNTK features"):
        contract(lpntk_of(entk), np.ones(1))


def test_pair_kernel_and_diagonal_against_the_gram_matrix(planted):
    _, _, entk, _, _ = planted
    G = gram(entk)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, entk.n, 40), rng.integers(0, entk.n, 40)
    torch.testing.assert_close(pair_kernel(entk, i, j), G[i, j], rtol=1e-13, atol=1e-13)
    everyone = np.arange(entk.n)
    torch.testing.assert_close(diagonal(entk), G[everyone, everyone], rtol=1e-13, atol=1e-13)
    assert pair_kernel(entk, [], []).shape == (0, 3, 3)
    with pytest.raises(ConfigError, match="one length"):
        pair_kernel(entk, [0, 1], [0])
    with pytest.raises(ConfigError, match="positions must lie"):
        pair_kernel(entk, [0, -1], [0, 1])


def test_neighbour_kernel_on_dense_and_factored_pieces():
    """A convolution (dense per-sample pieces) and linear layers (factored ones), float64:
    eNTK rows against label-signed rows, and a scalar kind against itself, by the Gram matrix."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 5),
        nn.Tanh(),
        nn.Linear(5, 4),
    ).double()
    x = torch.randn(12, 1, 6, 6, dtype=torch.float64)
    y = torch.arange(12) % 4
    entk = compute_features(
        model, torch.utils.data.TensorDataset(x, y), "entk", dtype="float64", progress=False
    )
    assert {p.form for p in entk.pieces} == {"dense", "factored"}
    G = gram(entk)  # (n, n, K, K)
    partners = np.random.default_rng(1).integers(0, 12, (12, 5))
    c = np.random.default_rng(2).standard_normal((12, 4))
    got = neighbour_kernel(entk, partners, contract(entk, c, "signed"))
    want = torch.einsum(
        "ntkl,ntl->nkt", G[np.arange(12)[:, None], partners], torch.from_numpy(c[partners])
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    scalar = contract(entk, c, "signed")
    Gs = torch.einsum("ijkl,ik,jl->ij", G, torch.from_numpy(c), torch.from_numpy(c))
    torch.testing.assert_close(
        neighbour_kernel(scalar, partners),
        Gs[np.arange(12)[:, None], partners],
        rtol=1e-12,
        atol=1e-12,
    )
    with pytest.raises(ConfigError, match="partners"):
        neighbour_kernel(entk, partners[:3], scalar)
    with pytest.raises(ConfigError, match="scalar-kind features of the same model"):
        neighbour_kernel(entk, partners, entk)


def test_sample_kernel_label_issues_and_table(planted):
    model, data, entk, noisy, clean = planted
    sk = SampleKernel(model, data, dtype="float64", progress=False)
    li = sk.label_issues()  # the default options: plain column names
    ref = label_issues(entk, progress=False)
    np.testing.assert_allclose(li.score, ref.score, rtol=1e-10, atol=1e-12)
    table = sk.table()
    flipped = np.flatnonzero(noisy != clean)
    top = table.sort_values("label_error_rank").head(3)
    assert sorted(top["index"]) == flipped.tolist()
    assert list(top["suggested_label"]) == list(clean[top["index"]])
    with pytest.raises(ConfigError, match="eNTK features of the model"):
        SampleKernel(features=sk.features, progress=False).label_issues()
    shuffled = compute_features(
        model, torch.utils.data.Subset(data, list(range(10))), "entk", progress=False
    )
    with pytest.raises(ConfigError, match="other samples"):
        SampleKernel(features=sk.features, progress=False).label_issues(entk=shuffled)


def test_bad_input_is_named(planted):
    _, _, entk, _, _ = planted
    with pytest.raises(ConfigError, match="kind entk"):
        label_issues(lpntk_of(entk), progress=False)
    with pytest.raises(ConfigError, match="unknown design"):
        label_issues(entk, design="best", progress=False)
    with pytest.raises(ConfigError, match="neighbours >= 1"):
        label_issues(entk, k=0, progress=False)
    with pytest.raises(ConfigError, match="Features store"):
        label_issues(np.zeros((3, 3)), progress=False)
    assert label_issues(entk, k=10_000, progress=False).k == entk.n - 1


def test_a_sample_with_non_finite_features_ranks_last_and_spoils_no_other(planted):
    from lpntk.kernel import Features

    _, _, entk, noisy, clean = planted
    arrays = {name: np.array(a) for name, a in entk.arrays.items()}
    for a in arrays.values():
        a[0] = np.nan
    broken = Features(entk.pieces, arrays, entk.labels, entk.indices, dict(entk.meta))
    li = label_issues(broken, k=5, progress=False)
    assert all(np.isnan(v[0]) for v in li.scores.values()) and li.rank[0] == entk.n
    assert np.isfinite(li.score[1:]).all() and 0 not in li.neighbours[1:][li.weights[1:] > 0]
    flipped = np.flatnonzero(noisy != clean)
    assert sorted(li.top(len(flipped)).tolist()) == flipped.tolist()


def test_flip_labels_flips_exactly_the_rate_and_every_chosen_label_changes():
    labels = np.arange(1000) % 10
    for rate in (0.05, 0.2):
        noisy = flip_labels(labels, rate, "uniform", seed=3)
        assert (noisy != labels).sum() == round(rate * 1000)
        assert noisy.min() >= 0 and noisy.max() <= 9
        np.testing.assert_array_equal(noisy, flip_labels(labels, rate, "uniform", seed=3))
        pairs = flip_labels(labels, rate, "pairs", seed=3, pairs=CONFUSABLE["mnist"])
        changed = np.flatnonzero(pairs != labels)
        assert len(changed) == round(rate * 1000)
        assert all(CONFUSABLE["mnist"][labels[i]] == pairs[i] for i in changed)
    with pytest.raises(ConfigError, match="only 200 samples"):
        flip_labels(labels, 0.5, "pairs", pairs={1: 7, 7: 1})
    with pytest.raises(ConfigError, match="rate"):
        flip_labels(labels, 1.5)
    with pytest.raises(ConfigError, match="confusable pairs"):
        flip_labels(labels, 0.1, "pairs")


def test_pair_noise_names_class_ids_and_follows_kept_classes():
    from lpntk.data import ArrayDataset
    from lpntk.noise import noisy_dataset

    images = np.zeros((100, 1, 4, 4), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(100) % 10, classes=[str(c) for c in range(10)])
    kept = data.filter_classes([3, 5, 8])  # labels 0, 1, 2 for digits 3, 5, 8
    noisy = noisy_dataset(kept, {"rate": 0.2, "kind": "pairs", "seed": 0}, "mnist")
    changed = noisy.labels != kept.labels
    assert changed.sum() == 6 and set(noisy.labels[changed]) == {2}  # only 3 -> 8 has both
    with pytest.raises(ConfigError, match="none of the confusable pairs"):
        noisy_dataset(data.filter_classes([0, 1]), {"rate": 0.1, "kind": "pairs"}, "mnist")
    for bad in ([[1]], {0: 0}, "2-7", [[1, -2]]):
        with pytest.raises(ConfigError, match="pairs"):
            flip_labels(np.arange(30) % 3, 0.1, "pairs", pairs=bad)
    with pytest.raises(ConfigError, match="outside 0..2"):
        flip_labels(np.arange(30) % 3, 0.1, "pairs", pairs={0: 9})
    assert (flip_labels(np.arange(30) % 3, np.float32(0.1)) != np.arange(30) % 3).sum() == 3


@needs_mnist
def test_label_issues_command_on_a_noisy_checkpoint(tmp_path, capsys):
    """Train with injected noise through the API, then the command: the csv schema in original
    order, the grid, the summary, the report section; the flips rank high."""
    from lpntk.kernel_stage import checkpoint_data
    from lpntk.report import build_report
    from lpntk.training import TrainConfig, load_checkpoint, run_training

    noise = {"rate": 0.1, "kind": "uniform", "seed": 0}
    cfg = TrainConfig(
        model="lenet5", epochs=2, train_size=400, batch_size=32, label_noise=noise, seed=0
    )
    run = run_training(cfg, tmp_path / "run", data_dir=DATA_DIR, progress=False)
    out = tmp_path / "li"
    argv = f"label-issues --checkpoint {run.out_dir} --out {out} --top 16 --no-progress"
    assert main([*argv.split(), "--data-dir", DATA_DIR]) == 0
    assert "400 samples scored" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "per_sample.csv")))
    for column in ("index", "label", "label_error_score", "label_error_rank", "suggested_label"):
        assert column in rows[0], column
    indices = [int(r["index"]) for r in rows]
    assert indices == sorted(indices) and len(rows) == 400
    assert sorted(int(r["label_error_rank"]) for r in rows) == list(range(1, 401))
    _, ckpt = load_checkpoint(run.best_checkpoint)
    noisy = checkpoint_data(ckpt, "train", data_dir=DATA_DIR)
    clean = checkpoint_data(
        dict(ckpt, config=dict(ckpt["config"], label_noise=None)), "train", data_dir=DATA_DIR
    )
    flips = set(noisy.indices[noisy.labels != clean.labels].tolist())
    assert len(flips) > 20  # the training file's 10%, of which this split holds its share
    assert all(
        int(r["label"]) == noisy.labels[noisy.positions_of([int(r["index"])])[0]] for r in rows[:50]
    )
    rank = {int(r["index"]): int(r["label_error_rank"]) for r in rows}
    top = {i for i, r in rank.items() if r <= len(flips)}
    assert len(top & flips) > 0.5 * len(flips)  # two epochs of LeNet-5: most flips found
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["table"]) == 16 and summary["label_noise"] == noise
    assert (out / "label_issues.png").stat().st_size > 5000
    page = build_report(out).read_text()
    assert "label_issues.png" in page and str(summary["table"][0]["index"]) in page


def test_label_issues_command_on_an_idx_folder_with_flips_in_its_files(tmp_path, capsys):
    """A dataset we never saw, as IDX files whose labels carry planted flips: 16x16 images of
    three classes (a bright bar in one of three places). Trained, then scored by the command:
    the flips rank first and their true class is suggested."""
    from lpntk.data.idx import write_idx

    rng = np.random.default_rng(0)
    folder = tmp_path / "bars"
    for split, n in (("train", 150), ("test", 30)):
        clean = np.arange(n) % 3
        images = rng.integers(0, 60, size=(n, 16, 16)).astype(np.uint8)
        for i, c in enumerate(clean):
            images[i, 2 + 5 * c : 4 + 5 * c, 2:14] = 255
        labels = clean.copy()
        if split == "train":
            flips = np.array([7, 40, 101])
            labels[flips] = (clean[flips] + 1) % 3
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8))
    run = tmp_path / "run"
    argv = f"train --dataset {folder} --model mlp3 --epochs 3 --batch-size 16 --lr 0.05 "
    argv += f"--val-fraction 0.2 --out {run} --no-progress"
    assert main(argv.split()) == 0
    out = tmp_path / "li"
    assert main(f"label-issues --checkpoint {run} --out {out} --top 8 --no-progress".split()) == 0
    assert "samples scored" in capsys.readouterr().out
    rows = {int(r["index"]): r for r in csv.DictReader(open(out / "per_sample.csv"))}
    planted_in_train = [i for i in flips if i in rows]  # some may sit in the validation split
    assert planted_in_train
    for i in planted_in_train:
        assert int(rows[i]["label_error_rank"]) <= len(planted_in_train), rows[i]
        assert int(rows[i]["suggested_label"]) == i % 3
    assert (out / "label_issues.png").exists()


def test_train_command_injects_label_noise_and_names_bad_values(tmp_path, capsys):
    from lpntk.data.idx import write_idx
    from lpntk.training import load_checkpoint

    folder = tmp_path / "tiny"
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        write_idx(
            folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 12, 12), np.uint8)
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte", (np.arange(n) % 3).astype(np.uint8))
    base = f"train --dataset {folder} --model mlp3 --epochs 1 --no-progress --out "
    assert main((base + f"{tmp_path / 'r'} --label-noise 0.2 --noise-seed 4").split()) == 0
    _, ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt["config"]["label_noise"] == {"rate": 0.2, "kind": "uniform", "seed": 4}
    assert main((base + f"{tmp_path / 'bad'} --label-noise 1.5").split()) != 0
    assert "expected a rate in [0, 1)" in capsys.readouterr().err
    assert main((base + f"{tmp_path / 'bad'} --label-noise 0.1 --noise-kind pairs").split()) != 0
    assert "needs its confusable pairs" in capsys.readouterr().err
