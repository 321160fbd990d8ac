"""``lpntk reproduce``: every claim end to end on a tiny setup (a folder of IDX files lpntk has
never seen, 1 epoch, 2 seeds), resumption, the results.json schema, and the HTML report."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from lpntk.cli import main
from lpntk.report import build_report
from lpntk.reproduce import CLAIMS, FIG7_READINGS, Reproduction, setup

KEYS = {"claim", "dataset", "model", "reduced", "seeds", "table", "paper", "details", "setup"}
KEYS |= {"setup_key", "seconds", "finished", "versions", "machine"}


def tiny(folder):
    s = setup(str(folder), epochs=1)
    return dataclasses.replace(
        s,
        train=dataclasses.replace(s.train, batch_size=16),
        table1=dataclasses.replace(s.table1, batch_size=16, lr=0.05),
        fig1={
            "classes": 4,
            "per_class": 3,
            "sizes": [1, 3, 6],
            "epochs": 3,
            "lr": 0.1,
            "widths": [8, 8],
        },
        window={"iterations": 2, "tracked": 16, "warmup": 1},
        theorem1={"widths": [8, 16], "pairs": 4, "hidden": 8},
        fig7_budgets=(0.02, 0.04),
        budgets=(0.9, 0.5),
        el2n={"seeds": 2, "epochs": 1},
    )


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """``all`` on a tiny IDX folder with 2 seeds; the Reproduction and its results."""
    import numpy as np

    from lpntk.data import mnist
    from lpntk.data.idx import write_idx

    root = tmp_path_factory.mktemp("repro")
    rng = np.random.default_rng(0)
    folder = root / "digits"
    for split, n in (("train", 120), ("test", 30)):
        images, labels = mnist.FILES[split]
        write_idx(folder / (images + ".gz"), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / (labels + ".gz"), (np.arange(n) % 10).astype(np.uint8))
    r = Reproduction(tiny(folder), root / "out", progress=False, device="cpu")
    return r, r.run("all", 2), folder


def test_every_claim_writes_its_results(done):
    r, results, folder = done
    assert set(results) == set(CLAIMS)
    for claim, res in results.items():
        assert KEYS <= set(res), (claim, res.get("error"))
        assert res["claim"] == claim and res["seeds"] == 2 and res["table"], claim
        assert res["dataset"] == str(folder.resolve()) or res["dataset"] == str(folder)
        saved = json.loads((r.root / claim / "results.json").read_text())
        assert saved["setup_key"] == r.setup.key() and saved["table"] == json.loads(
            json.dumps(res["table"])
        )
        assert (r.root / claim / "table.md").read_text().startswith(f"# {claim}")
        assert list((r.root / claim).glob("*.png")), claim
        assert res["versions"]["torch"] and res["machine"]["cpus"] >= 1
    fig2 = {row["training set"] for row in results["fig2"]["table"]}
    variants = {"redundant_lpntk_one_sided", "redundant_pntk_one_sided"}
    variants |= {"redundant_lpntk_whole", "redundant_pntk_whole"}
    assert fig2 == {"full", "redundant_lpntk", "redundant_pntk", *variants}
    fig7 = results["fig7"]["details"]["kept"]
    n = r.n_train()
    assert n == 110  # 120 less one validation image of each class
    assert fig7["head_0.02"] == fig7["random_0.02"] == fig7["head_whole_0.02"] == round(0.02 * n)
    assert fig7["random_balanced_0.02"] == fig7["head_0.02"]
    assert {row["training set"] for row in results["fig3"]["table"]} == {
        "full",
        "redundant_head",
        "head_public",
        "redundant_head_whole",
    }
    strategies = {row["training set"] for row in results["strategies"]["table"]}
    for name in ("el2n", "forgetting", "random", "lpntk", "pntk"):
        assert {f"{name}_0.9", f"{name}_0.5"} <= strategies, name
    kept = results["strategies"]["details"]["kept"]
    for name, size in kept.items():
        assert size == round((0.9 if name.endswith("0.9") else 0.5) * n), name
    rho = results["fig1"]["details"]["rho"]
    assert set(rho) == {"1", "3", "6"}
    readings = results["clusters"]["details"]["readings"]
    assert len(readings) == 2 and [v["easy"]["per_class"] for v in readings.values()] == [1, 0]
    for v in readings.values():
        assert 0 <= v["easy"]["p_value"] <= 1 and len(v["per_class"]["per_class"]) == 10


def test_every_claim_states_its_verdict_and_protocol(done):
    from lpntk.compare import RULES
    from lpntk.verdicts import TESTS, VERDICTS

    r, results, _ = done
    for claim, res in results.items():
        v = res["verdict"]
        assert v["setting"] and "reading" in v, claim
        assert res["protocol"]["checkpoint"].startswith("best validation"), claim
        if claim == "strategies":
            assert v["verdict"] == "beyond the paper"
            continue
        assert v["verdict"] in VERDICTS, claim
        assert res["sensitivity"] and all(s["verdict"] in VERDICTS for s in res["sensitivity"])
        text = (r.root / claim / "table.md").read_text()
        assert "Verdict: **" in text and "under each reading" in text, claim
    for claim in ("fig2", "fig3", "fig7"):
        res = results[claim]
        readings = {s["reading"] for s in res["sensitivity"]}
        assert len(res["sensitivity"]) == len(readings) * len(RULES) * len(TESTS), claim
        assert res["verdict"]["kept"] and res["protocol"]["accuracy_rules"] == list(RULES)
        assert {row["rule"] for row in res["details"]["rules"]} == set(RULES)
        assert all(0 < f <= 1 for f in res["verdict"]["kept"].values())
    # the whole set's largest cluster of random images of 10 classes is one class here
    fig7 = {s["reading"]: s["verdict"] for s in results["fig7"]["sensitivity"]}
    assert len(fig7) == 3 and fig7[FIG7_READINGS[False]] == "not tested"
    table1 = results["table1"]
    assert table1["verdict"]["reading"].startswith("eNTK (the paper's predictor")
    assert table1["details"]["public_window"]["regime"] == "public"
    predictors = {row["predictor"] for row in table1["table"]}
    assert any(p.startswith("lpNTK x I (the withdrawn claim") for p in predictors)
    windows = {row.get("window") for row in table1["table"]}
    assert any("momentum 0.9" in str(w) for w in windows)


def test_projected_kernel_claims(done, tmp_path):
    from lpntk.kernel import Features

    _, _, folder = done
    r = Reproduction(
        dataclasses.replace(tiny(folder), proj_dim=16), tmp_path, progress=False, device="cpu"
    )
    res = r.run("fig2", 2)
    assert res["proj_dim"] == 16 and res["setup"]["proj_dim"] == 16
    for store in ("features", "features_pntk"):
        meta = Features.load(r.root / "analysis" / store).meta
        assert (meta["strategy"], meta["proj_dim"]) == ("projected", 16), store
    for name in ("redundant_lpntk", "redundant_pntk"):
        manifest = json.loads((r.root / "pruned" / name / "manifest.json").read_text())
        assert manifest["proj_dim"] == 16
    other = dataclasses.replace(tiny(folder), proj_dim=8)  # the same folder, another proj_dim
    with pytest.raises(ValueError, match="proj_dim 16, not 8"):
        Reproduction(other, tmp_path, progress=False, device="cpu").run("fig2", 2)


def test_a_second_run_trains_nothing(done):
    r, results, _ = done
    stamps = {p: p.stat().st_mtime_ns for p in r.root.rglob("last.pt")}
    assert len(stamps) > 20
    (r.root / "fig2" / "results.json").unlink()  # a claim whose runs are all finished
    again = r.run("all", 2)
    assert {p: p.stat().st_mtime_ns for p in r.root.rglob("last.pt")} == stamps
    assert json.dumps(again["fig2"]["table"]) == json.dumps(results["fig2"]["table"])
    assert again["theorem1"]["finished"] == results["theorem1"]["finished"]  # read back


def test_the_report_embeds_every_plot(done, tmp_path):
    r, _, _ = done
    page = build_report(r.root, tmp_path / "page.html")
    parser = Images()
    parser.feed(page.read_text())
    pngs = [
        p
        for p in r.root.rglob("*.png")
        if any((p.parent / f).exists() for f in ("results.json", "summary.json", "comparison.json"))
    ]
    assert len(parser.images) == len({p.read_bytes() for p in pngs}) >= len(CLAIMS)  # once each
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.tags.count("section") >= len(CLAIMS) and "table" in parser.tags
    text = page.read_text()
    assert "fig2" in text and "redundant_lpntk" in text and "Paper:" in text
    first = text.index("<h2>What was run and what it found</h2>")  # the page opens with it
    assert first < text.index("<section") and "under each reading" in text
    top = text[first : text.index("<section")]
    for claim in CLAIMS:  # one line each: the question, our number, the paper's, the verdict
        result = json.loads((r.root / claim / "results.json").read_text())
        assert top.count(f"<tr><td>{claim}</td>") == 1, claim  # its comparison.json adds none
        line = re.search(f"<tr><td>{claim}</td>(.*?)</tr>", top).group(1)
        assert html.escape(result["question"]) in line and html.escape(result["ours"]) in line
        assert result["verdict"]["verdict"] in line
        if claim != "strategies":  # beyond the paper: it has no number there
            assert result["paper"] and html.escape(result["paper"]) in line, claim
    assert "slope of the scaled gap" in top and "at X = 6" in top and "redundant_lpntk" in top
    header = (r.root / "fig2" / "table.md").read_text().splitlines()[2]  # | a | b | ... |
    columns = [c.strip() for c in header.strip("| ").split(" | ")]
    assert "".join(f"<th>{html.escape(c)}</th>" for c in columns) in text  # table.md's order


def test_cli_reproduces_a_claim_and_reports(done, tmp_path, capsys):
    _, _, folder = done
    out = tmp_path / "t1"
    argv = f"reproduce theorem1 --dataset {folder} --seeds 1 --out {out} --no-progress"
    assert main(argv.split()) == 0
    printed = capsys.readouterr().out
    assert "theorem1" in printed and str(out / "report.html") in printed
    assert json.loads((out / "theorem1" / "results.json").read_text())["seeds"] == 1
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().count("<img") == 1
    assert main(["reproduce", "fig1", "--dataset", "mnist", "--reduced", "--out", "x"]) == 2
    assert "reduced" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) != 0


def test_setups_follow_the_paper():
    mnist = setup("mnist")
    assert (mnist.train.model, mnist.train.epochs, mnist.train.lr) == ("lenet5", 15, 0.05)
    assert mnist.train.log_per_sample and mnist.train.split_seed == 0
    t1 = mnist.table1
    assert (t1.optimizer, t1.lr, t1.momentum, t1.weight_decay, t1.schedule) == (
        "sgd",
        5e-4,
        0.0,
        0.0,
        "none",
    )
    cifar = setup("cifar10")
    c = cifar.train
    assert (c.model, c.lr, c.momentum, c.weight_decay, c.batch_size, c.schedule, c.augment) == (
        "resnet18",
        0.1,
        0.9,
        5e-4,
        128,
        "cosine",
        True,
    )
    reduced = setup("cifar10", reduced=True)
    assert reduced.reduced and reduced.name == "cifar10-resnet18-reduced"
    t = reduced.train
    assert (t.train_size, t.test_size, t.epochs, t.model_options) == (2000, 2000, 10, {"width": 8})
    assert reduced.window == {"iterations": 10, "tracked": 256, "window_lr": 5e-4}
    assert reduced.table1 == t  # not at chance, and its runs are the full set's
    assert (cifar.table1.lr, cifar.table1.momentum, cifar.table1.epochs) == (5e-4, 0.0, 20)
    assert cifar.window == {"iterations": 30, "tracked": 1280}
    assert len({mnist.key(), cifar.key(), reduced.key(), setup("mnist", "mnist_cnn").key()}) == 4
    assert setup("mnist").key() == mnist.key()  # the same setting, the same folder
    with pytest.raises(ValueError, match="reduced"):
        setup("mnist", reduced=True)
    # settings that did not exist when a folder was made keep its name while unset
    assert "proj_dim" not in mnist.to_dict() and "test_size" not in mnist.to_dict()["train"]
    # the per-class, within-class protocol (issue 17) made new folders: f27e4561 before it
    assert mnist.key() == "3411ecf7"
    projected = setup("cifar10", proj_dim=512)
    assert projected.name == "cifar10-resnet18-proj512" and projected.key() != cifar.key()
    with pytest.raises(ValueError, match="proj_dim"):
        setup("cifar10", proj_dim=0)


def test_an_idx_folder_is_normalised_with_its_own_training_statistics(done):
    from lpntk.data import load_dataset

    _, _, folder = done
    train, test = load_dataset(str(folder), "train"), load_dataset(str(folder), "test")
    images = train.images.astype(float) / 255
    assert train.mean[0] == pytest.approx(images.mean()) and test.mean == train.mean
    assert test.std == train.std and test.classes == train.classes and len(test) == 30
    assert train.name == str(folder.resolve())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const shown = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', images.length + '/' + shown);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (.ci/run installs it)")
def test_the_report_shows_every_plot_in_a_headless_browser(done, tmp_path):
    r, _, _ = done
    text = build_report(r.root, tmp_path / "page.html").read_text()
    probe = tmp_path / "probe.html"  # the page, and a script that counts the decoded images
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    flags += "--disable-background-networking --disable-component-update --disable-sync"
    shown = subprocess.run(
        [
            CHROMIUM,
            *flags.split(),
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'data-images="(\d+)/(\d+)"', shown.stdout)
    assert found, shown.stderr[-2000:]
    assert int(found[1]) == int(found[2]) == text.count("<img") >= len(CLAIMS)
    # a screenshot of the page's top as a newcomer opens it: the title, the verdicts table
    shot = tmp_path / "top.png"
    subprocess.run(
        [
            CHROMIUM,
            *flags.split(),
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,900",
            f"--screenshot={shot}",
            (tmp_path / "page.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1200)
    ink = (pixels.mean(2) < 0.5).mean(1)  # the share of dark pixels in each row
    assert (ink > 0).sum() > 100, "the top of the page is (nearly) blank"


def test_all_goes_on_past_a_claim_the_setting_does_not_allow(done, monkeypatch, capsys):
    from lpntk import ConfigError

    r, results, folder = done

    def refuse(out, n):
        raise ConfigError("1280 tracked samples need a larger training split", param="tracked")

    monkeypatch.setattr(r, "_table1", refuse)
    (r.root / "table1" / "results.json").unlink()
    again = r.run("all", 2)
    assert again["table1"] == {"claim": "table1", "error": again["table1"]["error"]}
    assert "larger training split" in again["table1"]["error"]
    assert again["fig3"]["finished"] == results["fig3"]["finished"]  # the others read back
