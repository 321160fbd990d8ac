import json

import numpy as np
import pytest
import torch

from lpntk import (
    ArrayDataset,
    ConfigError,
    ModelError,
    TrainConfig,
    build_model,
    load_checkpoint,
    train,
)
from lpntk.training import derive_seed, evaluate, random_crop_flip


def make_set(n, shape=(1, 12, 12), k=3, seed=0, split="train", offset=0):
    """Learnable synthetic images: each class lights up its own block of pixels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    images = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    for c in range(k):
        images[labels == c, :, c * 3 : c * 3 + 3, :] += 150
    return ArrayDataset(
        images,
        labels,
        classes=tuple(str(c) for c in range(k)),
        name="toy",
        split=split,
        indices=np.arange(n) + offset,
        mean=(0.3,) * shape[0],
        std=(0.3,) * shape[0],
    )


def sets():
    return (
        make_set(96, seed=0),
        make_set(30, seed=1, split="val", offset=1000),
        make_set(30, seed=2, split="test", offset=2000),
    )


CFG = dict(model="mnist_cnn", epochs=3, batch_size=16, lr=0.05, seed=3, dataset="toy")


def run(tmp_path, name, cfg=None, model_seed=0, **kwargs):
    cfg = cfg or TrainConfig(**CFG)
    torch.manual_seed(model_seed)
    tr, va, te = sets()
    model = build_model(cfg.model, tr.input_shape, tr.num_classes)
    result = train(model, tr, va, te, cfg, tmp_path / name, progress=False, **kwargs)
    return model, result


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_gives_bit_identical_weights(tmp_path):
    a, ra = run(tmp_path, "a")
    b, _ = run(tmp_path, "b")
    assert same_weights(a, b)
    c, _ = run(tmp_path, "c", TrainConfig(**{**CFG, "seed": 4}))
    assert not same_weights(a, c)
    assert ra.best_val_acc > 0.9  # the toy task is learnable
    assert [r["epoch"] for r in ra.history] == [1, 2, 3]


def test_best_checkpoint_is_chosen_on_validation(tmp_path):
    _, result = run(tmp_path, "a")
    best = max(result.history, key=lambda r: r["val_acc"])
    assert result.best_epoch == best["epoch"]
    model, ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["metrics"]["epoch"] == result.best_epoch
    _, _, te = sets()
    acc, _ = evaluate(model, *te.tensors())
    assert acc == pytest.approx(result.test_acc)
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == result.history


def test_resume_after_stop_mid_epoch_equals_uninterrupted(tmp_path):
    full, _ = run(tmp_path, "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", stop_after_steps=8)  # 6 steps per epoch: stops inside epoch 2
    resumed, result = run(tmp_path, "resumed", model_seed=123)  # fresh weights, then resume
    assert same_weights(full, resumed)
    assert len(result.history) == 3


class Crash(Exception):
    pass


def test_resume_after_crash_replays_from_last_checkpoint(tmp_path, monkeypatch):
    full, _ = run(tmp_path, "full")
    cfg = TrainConfig(**{**CFG, "checkpoint_every": 4})
    ref, _ = run(tmp_path, "ref", cfg)
    assert same_weights(full, ref)  # periodic checkpoints do not change the result
    calls = {"n": 0}
    original = torch.optim.SGD.step

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 11:  # dies without a checkpoint; the last one was after step 8
            raise Crash()
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", flaky_step)
    with pytest.raises(Crash):
        run(tmp_path, "crashed", cfg)
    monkeypatch.setattr(torch.optim.SGD, "step", original)
    crashed, _ = run(tmp_path, "crashed", cfg, model_seed=7)
    assert same_weights(full, crashed)


def test_finished_run_is_returned_without_training(tmp_path):
    _, first = run(tmp_path, "a")
    _, again = run(tmp_path, "a")
    assert again.history == first.history and again.best_epoch == first.best_epoch


def test_ctrl_c_during_the_last_evaluation_stops_after_saving(tmp_path, monkeypatch):
    import os
    import signal

    import lpntk.training as training

    calls = {"n": 0}
    original = training.evaluate

    def evaluate_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 3 of 3, the validation pass: the run is about to finish
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="finished and was saved"):
        run(tmp_path, "a")
    monkeypatch.setattr(training, "evaluate", original)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state"]
    assert state["finished"] and len(state["history"]) == 3
    _, again = run(tmp_path, "a")  # the finished run, not trained again
    assert [r["epoch"] for r in again.history] == [1, 2, 3]


@pytest.mark.parametrize("damaged", ["best.pt", "last.pt"])
def test_a_damaged_run_is_moved_aside_and_trained_again(tmp_path, damaged):
    reference, first = run(tmp_path, "a")
    path = tmp_path / "a" / damaged
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk or a kill
    with pytest.warns(UserWarning, match="damaged"):
        model, again = run(tmp_path, "a", model_seed=0)
    assert (tmp_path / "a" / f"{damaged}.damaged").exists()
    assert again.history[-1]["val_acc"] == first.history[-1]["val_acc"]
    assert same_weights(reference, model)
    load_checkpoint(tmp_path / "a")  # readable again


def test_resume_refuses_other_settings(tmp_path):
    run(tmp_path, "a")
    with pytest.raises(ConfigError, match="different settings"):
        run(tmp_path, "a", TrainConfig(**{**CFG, "lr": 0.01}))


def test_per_sample_logs(tmp_path):
    cfg = TrainConfig(**{**CFG, "log_per_sample": True})
    _, result = run(tmp_path, "a", cfg)
    d = tmp_path / "a" / "per_sample"
    loss, correct, step = (np.load(d / f"{k}.npy") for k in ("loss", "correct", "step"))
    assert loss.shape == correct.shape == step.shape == (3, 96)
    assert np.isfinite(loss).all() and set(np.unique(correct)) <= {0, 1}
    steps_per_epoch = 96 // 16
    for e in range(3):  # every sample is trained exactly once per epoch, in that epoch's steps
        assert (
            step[e].min() == e * steps_per_epoch and step[e].max() == (e + 1) * steps_per_epoch - 1
        )
        assert np.bincount(step[e] - e * steps_per_epoch).tolist() == [16] * steps_per_epoch
    np.testing.assert_array_equal(np.load(d / "indices.npy"), np.arange(96))
    # the epoch mean of the logged losses is the logged training loss
    for e, row in enumerate(result.history):
        assert loss[e].mean() == pytest.approx(row["train_loss"], rel=1e-5)


def test_per_sample_logs_survive_resume(tmp_path):
    cfg = TrainConfig(**{**CFG, "log_per_sample": True})
    run(tmp_path, "full", cfg)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", cfg, stop_after_steps=9)
    run(tmp_path, "resumed", cfg)
    for k in ("loss", "correct", "step"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "full" / "per_sample" / f"{k}.npy"),
            np.load(tmp_path / "resumed" / "per_sample" / f"{k}.npy"),
        )


def test_adam_step_schedule_and_augmentation_run(tmp_path):
    cfg = TrainConfig(
        **{
            **CFG,
            "optimizer": "adam",
            "lr": 1e-3,
            "schedule": "step",
            "step_size": 1,
            "gamma": 0.5,
            "augment": True,
            "epochs": 2,
        }
    )
    _, result = run(tmp_path, "a", cfg)
    assert [r["lr"] for r in result.history] == pytest.approx([1e-3, 5e-4])


def test_random_crop_flip_keeps_content():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, torch.tensor([-1.0]), gen, pad=2)
    assert out.shape == x.shape
    for b in range(2):  # every output pixel is padding or a pixel of the same image
        vals = set(out[b].flatten().tolist()) - {-1.0}
        assert vals <= set(x[b].flatten().tolist())
    same = random_crop_flip(x, torch.tensor([-1.0]), torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(out, same)


def test_train_seeds_names_each_run_and_the_time_left(tmp_path, monkeypatch, capsys):
    import lpntk.training as training

    def fake(cfg, out_dir, **kwargs):  # a run that writes what a finished run has
        (out_dir / "metrics.json").parent.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text("[]")
        return type("Result", (), {"out_dir": out_dir})()

    monkeypatch.setattr(training, "run_training", fake)
    cfg = TrainConfig(**CFG)
    assert list(training.train_seeds(cfg, [3], tmp_path)) == [tmp_path / "seed_3"]
    runs = list(training.train_seeds(cfg, [3, 4, 5], tmp_path))
    assert runs == [tmp_path / f"seed_{s}" for s in (3, 4, 5)]
    err = capsys.readouterr().err.splitlines()
    name = f"training {cfg.model} on {cfg.dataset}"
    assert err[:3] == [f"[1/1] {name}, seed 3", f"[1/3] {name}, seed 3", f"[2/3] {name}, seed 4"]
    assert err[3].startswith(f"[3/3] {name}, seed 5; about ")  # seed 3 was found finished
    assert not list(training.train_seeds(cfg, [], tmp_path, progress=False))


def test_bad_settings_and_mismatched_data(tmp_path):
    tr, va, te = sets()
    model = build_model("mlp3", tr.input_shape, tr.num_classes)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        train(model, tr, va, te, TrainConfig(optimizer="lbfgs"), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="epochs: expected an integer >= 1"):
        train(model, tr, va, te, TrainConfig(epochs=0), tmp_path / "x", progress=False)
    wrong = build_model("mlp3", (1, 28, 28), tr.num_classes)
    with pytest.raises(ConfigError, match="built for"):
        train(wrong, tr, va, te, TrainConfig(), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="unknown training settings"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 0.1})


def test_model_that_does_not_output_logits(tmp_path):
    tr, va, te = sets()
    model = build_model("mlp3", tr.input_shape, tr.num_classes)
    model.forward = lambda x: torch.zeros(len(x), 2, 2, requires_grad=True)
    with pytest.raises(ModelError, match=r"logits of shape \(batch, K\) = \(\d+, 3\)") as e:
        train(model, tr, va, te, TrainConfig(epochs=1), tmp_path / "x", progress=False)
    assert isinstance(e.value, ValueError)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(1, 2) == derive_seed(1, 2)
    assert len({derive_seed(0, e) for e in range(100)}) == 100
