"""Reading and writing users' files: atomic writes name the file asked for when the disk is
full; corrupt files are named as corrupt."""

import errno
import os

import numpy as np
import pytest

from lpntk import ConfigError, DataError, MissingFileError
from lpntk._io import atomic_path, read_csv, read_json, read_npy, write_json


def test_a_full_disk_names_the_file_not_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.json"

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as e:
        write_json(target, {"a": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert not target.exists() and not list(tmp_path.iterdir())  # no temporary left behind


@pytest.mark.parametrize("free, code", [(0, errno.ENOSPC), (1 << 40, errno.EIO)])
def test_a_checkpoint_that_cannot_be_written_names_its_path(tmp_path, monkeypatch, free, code):
    import shutil

    import torch

    from lpntk._io import torch_save

    def failing(obj, f):  # torch's own writer on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 37440")

    monkeypatch.setattr(torch, "save", failing)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(9, 9, free))
    with pytest.raises(OSError) as e:
        torch_save({"w": 1}, tmp_path / "best.pt")
    assert e.value.errno == code and e.value.filename == str(tmp_path / "best.pt")
    assert ("unexpected pos" in e.value.strerror) == (code == errno.EIO)
    assert not list(tmp_path.iterdir())


def test_a_full_disk_inside_a_feature_store_names_the_store(tmp_path, monkeypatch):
    import zarr

    from lpntk.kernel import compute_features

    from .test_kernel_helpers import make_data, make_model

    def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() says: no file

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    with pytest.raises(OSError) as e:
        compute_features(
            make_model("mlp"), make_data("mlp"), out_dir=tmp_path / "f", progress=False
        )
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "f")


def test_a_store_that_cannot_be_made_is_an_os_error_naming_it(tmp_path, monkeypatch):
    import zarr

    from lpntk.kernel import compute_features

    from .test_kernel_helpers import make_data, make_model

    def cannot(*args, **kwargs):  # as under /proc, where even root makes no folder
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(zarr, "open_group", cannot)
    with pytest.raises(OSError, match="cannot create a feature store") as e:
        compute_features(
            make_model("mlp"), make_data("mlp"), out_dir=tmp_path / "f", progress=False
        )
    assert e.value.filename == str(tmp_path / "f")


def test_an_error_inside_the_block_removes_the_temporary(tmp_path):
    with pytest.raises(ZeroDivisionError), atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("half")
        raise ZeroDivisionError
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "content", [b"", b"\x00\x01 garbage", b"\x93NUMPY\x01\x00 truncated", "é".encode("latin-1")]
)
def test_corrupt_files_are_named_as_corrupt(tmp_path, content):
    for name, read, kind in (
        ("a.npy", read_npy, ".npy"),
        ("a.csv", read_csv, ".csv"),
        ("a.json", read_json, "JSON"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match=f"the thing {path} is corrupt or not a {kind} file"):
            read(path, "the thing", "make it again")
        with pytest.raises(MissingFileError, match="is missing; make it again"):
            read(tmp_path / f"none{name}", "the thing", "make it again")


def test_good_files_read_back(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    (tmp_path / "a.csv").write_text("index,x\n0,1\n")
    write_json(tmp_path / "a.json", {"k": [1]})
    assert read_npy(tmp_path / "a.npy", "", "").tolist() == [0, 1, 2]
    assert read_csv(tmp_path / "a.csv", "", "")["x"].tolist() == [1]
    assert read_json(tmp_path / "a.json", "", "") == {"k": [1]}


def test_report_out_errors_name_the_option(tmp_path):
    from lpntk.report import build_report

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as e:
        build_report(tmp_path, tmp_path / "file" / "report.html")
    assert e.value.param == "out"
    with pytest.raises(ConfigError, match="is a folder; expected the path of an .html file"):
        build_report(tmp_path, tmp_path)


def test_the_report_shows_a_result_s_key_numbers_unfolded(tmp_path):
    from lpntk.report import build_report

    result = {"n": 600, "redundant_fraction": 0.15, "seconds": 3.0, "one_sided": False}
    write_json(tmp_path / "a" / "summary.json", {**result, "checkpoint_sha256": "abc"})
    page = build_report(tmp_path).read_text()
    unfolded = page.split("<details><summary>summary.json")[0]
    assert "<td>redundant_fraction</td><td>0.15</td>" in unfolded
    assert "<td>n</td><td>600</td>" in unfolded and "seconds" not in unfolded


def test_the_report_shows_a_plot_once(tmp_path):
    from lpntk.report import build_report

    png = b"\x89PNG\r\n\x1a\n" + b"0" * 50
    for name in ("a", "b"):
        write_json(tmp_path / name / "summary.json", {"n": 1})
        (tmp_path / name / "accuracy.png").write_bytes(png)
    page = build_report(tmp_path).read_text()
    assert page.count("<img") == 1 and "the same plot as in <a href='#s0'>a</a>" in page


def test_the_report_opens_with_what_was_run_and_what_it_found(tmp_path):
    from lpntk.report import build_report

    analysis = {
        "n": 600,
        "redundant_fraction": 0.15,
        "clusters": 60,
        "largest_cluster_share": 0.3,
        "relationships": None,
    }
    write_json(tmp_path / "analysis" / "summary.json", analysis)
    issues = {"n": 600, "design": "vote", "table": [{"index": 7, "label": 3, "suggested": 5}]}
    write_json(tmp_path / "issues" / "summary.json", issues)
    dynamics = {
        "n": 600,
        "runs": ["a", "b"],
        "never_learned_share": 0.01,
        "unforgettable_share": 0.5,
        "mean_forgetting_events": 0.25,
    }
    write_json(tmp_path / "dynamics" / "summary.json", dynamics)
    write_json(tmp_path / "old" / "summary.json", {"design": "vote", "table": [{}]})  # no n
    page = build_report(tmp_path).read_text()
    top = page[page.index("What was run and what it found") : page.index("<section")]
    assert "15.0% of 600 samples redundant; 60 clusters, the largest 30.0%" in top
    assert "the most suspect #7 labelled 3, suggested 5" in top
    assert "600 samples over 2 runs: 1.0% never learned, 50.0% never forgotten" in top
    assert top.count("<tr>") == 4  # the header and three findings; the old format is left out


def test_grids_name_classes_as_the_dataset_does():
    from lpntk import ArrayDataset
    from lpntk.report import class_name

    data = ArrayDataset(
        np.zeros((2, 1, 2, 2), np.uint8), np.array([0, 1]), classes=("cat", "dog"), name="toy"
    )
    assert class_name(data, 1) == "dog" and class_name(data, 5) == "5"
