"""CIFAR-10 from the python pickles, an image zip, or an image folder tree.

Layouts inside a ``cifar10`` folder, in order of preference:

1. ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``): the lossless
   originals; original order = batch order.
2. a ``*.zip`` laid out ``[prefix/]train/<class>/<image>`` and ``test/<class>/<image>``
   (e.g. ``cifar10-jpeg75.zip``, a JPEG q75 re-encoding);
3. ``train/`` and ``test/`` folders laid out the same way.

For (2) and (3) the classes are the sorted class-folder names, the original index is the position
in (class, file name) order, and the decoded arrays are cached as ``.npy`` in the user cache.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._errors import DataError
from .._io import atomic_path
from .dataset import ArrayDataset
from .fetch import (
    Attempts,
    array_cache_key,
    array_cache_paths,
    describe_error,
    download_url,
    file_digest,
    load_cached_arrays,
    make_readable,
    save_cached_arrays,
)
from .idx import checksum_message

NAME = "cifar10"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IMAGE_SIZE = (32, 32)  # (width, height)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
META = "batches.meta"
BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

JPEG_CAVEAT = (
    "JPEG q75 re-encoding of CIFAR-10, not the lossless originals: accuracies on it run about "
    "2-3 points below published CIFAR-10 numbers"
)
#: Archives known by name: their SHA-256 (checked before decoding) and what to say about them.
KNOWN_ARCHIVES = {
    "cifar10-jpeg75.zip": {
        "sha256": "05b4c8c8bf43c21250b5d4abc4621c4fed6837d691555b00c9215bfc6b363d11",
        "caveat": JPEG_CAVEAT,
    },
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm"}
SPLITS = ("train", "test")
DECODE_THREADS = min(8, os.cpu_count() or 1)

MANUAL_HELP = (
    "To provide the files by hand: extract cifar-10-python.tar.gz so that "
    "<dir>/cifar10/cifar-10-batches-py/ holds data_batch_1..5, test_batch and batches.meta (or put "
    "a zip laid out train/<class>/*.png, test/<class>/*.png in <dir>/cifar10/), then set "
    "LPNTK_DATA_DIR=<dir>, or pass --data-dir <dir>."
)


# --------------------------------------------------------------------------- finding the files


def _pickle_dir(folder: Path, split: str | None) -> Path | None:
    names = (META, *BATCHES[split]) if split else (META, *BATCHES["train"], *BATCHES["test"])
    for d in (folder, folder / BATCHES_DIR):
        if all((d / n).is_file() for n in names):
            return d
    return None


def find_source(folder: Path, split: str | None = None) -> tuple[str, Path] | None:
    """``(kind, path)`` of the preferred CIFAR-10 layout in ``folder``, or None.

    ``kind`` is ``"pickles"`` (path: the batches folder), ``"zip"`` (the zip file) or ``"tree"``
    (the folder holding ``train/`` and ``test/``).
    """
    if not folder.is_dir():
        return None
    pickles = _pickle_dir(folder, split)
    if pickles is not None:
        return "pickles", pickles
    zips = sorted(p for p in folder.glob("*.zip") if p.is_file())
    if zips:
        known = [p for p in zips if p.name in KNOWN_ARCHIVES]
        return "zip", (known or zips)[0]
    if all((folder / s).is_dir() for s in ((split,) if split else SPLITS)):
        return "tree", folder
    return None


def find(folder: Path, split: str | None = None) -> Path | None:
    """``folder`` if it holds CIFAR-10 in one of the known layouts, else None."""
    return folder if find_source(folder, split) is not None else None


# --------------------------------------------------------------------------- pickles


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(
            f"cannot read CIFAR-10 pickle {path}: {describe_error(e)}; delete it and fetch again"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def load_pickles(directory: Path, split: str) -> ArrayDataset:
    """One split of a ``cifar-10-batches-py`` folder: images ``(N, 3, 32, 32)`` uint8."""
    meta = _unpickle(directory / META)
    names = meta.get(b"label_names")
    if not names:
        raise DataError(f"{directory / META}: no b'label_names' entry")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    images, labels = [], []
    for batch in BATCHES[split]:
        path = directory / batch
        d = _unpickle(path)
        data, lab = d.get(b"data"), d.get(b"labels")
        if data is None or lab is None:
            raise DataError(f"{path}: expected keys b'data' and b'labels', found {sorted(d)}")
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
            raise DataError(
                f"{path}: expected data of shape (N, 3072) uint8, found {data.shape} {data.dtype}"
            )
        if len(lab) != len(data):
            raise DataError(f"{path}: {len(data)} images but {len(lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(lab, dtype=np.int64))
    return ArrayDataset(
        np.concatenate(images),
        np.concatenate(labels),
        classes,
        name=NAME,
        split=split,
        source=f"CIFAR-10 python batches in {directory} (lossless)",
        mean=MEAN,
        std=STD,
    )


# --------------------------------------------------------------------------- image zips and trees


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one image file's bytes to ``(3, 32, 32)`` uint8 RGB; DataError naming ``name``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size != IMAGE_SIZE:
                raise DataError(
                    f"{name}: image is {img.size[0]}x{img.size[1]}, expected "
                    f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
                )
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: cannot decode image ({describe_error(e)})") from e
    return rgb.transpose(2, 0, 1)


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and Path(base).suffix.lower() in IMAGE_SUFFIXES


def list_zip(zf: zipfile.ZipFile, where: str) -> dict[str, list[tuple[str, str]]]:
    """``{split: [(class, member name), ...]}`` sorted by (class, file name)."""
    out: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    prefixes = set()
    for info in zf.infolist():
        parts = info.filename.split("/")
        if info.is_dir() or len(parts) < 3 or "__MACOSX" in parts or not _is_image(parts[-1]):
            continue
        split, cls, base = parts[-3:]
        if split in out:
            prefixes.add("/".join(parts[:-3]))
            out[split].append((cls, base, info.filename))
    if len(prefixes) > 1:
        raise DataError(
            f"{where}: train/ and test/ folders found under several prefixes "
            f"{sorted(prefixes)}; expected one"
        )
    return {s: [(c, n) for c, _, n in sorted(v)] for s, v in out.items()}


def list_tree(root: Path) -> dict[str, list[tuple[str, str]]]:
    """``{split: [(class, file path), ...]}`` of ``root/<split>/<class>/<image>``, sorted."""
    out = {}
    for split in SPLITS:
        items = []
        base = root / split
        if base.is_dir():
            for cls_dir in sorted(p for p in base.iterdir() if p.is_dir()):
                items += [
                    (cls_dir.name, str(p))
                    for p in sorted(cls_dir.iterdir())
                    if p.is_file() and _is_image(p.name)
                ]
        out[split] = items
    return out


def _decode_all(items: list[tuple[str, str]], read, where: str) -> np.ndarray:
    """Decode each ``(class, name)`` item with ``read(name) -> bytes``: ``(N, 3, 32, 32)`` uint8."""
    out = np.empty((len(items), 3, IMAGE_SIZE[1], IMAGE_SIZE[0]), dtype=np.uint8)

    def work(chunk: range) -> None:
        for i in chunk:
            name = items[i][1]
            out[i] = decode_image(read(name), f"{where}:{name}")

    step = 2048
    chunks = [range(a, min(a + step, len(items))) for a in range(0, len(items), step)]
    if DECODE_THREADS > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            for f in [pool.submit(work, c) for c in chunks]:
                f.result()
    else:
        for c in chunks:
            work(c)
    return out


def _images_source(path: Path, kind: str, items: list[tuple[str, str]]) -> str:
    known = KNOWN_ARCHIVES.get(path.name) if kind == "zip" else None
    what = f"image {'zip' if kind == 'zip' else 'folders'} {path}"
    if known:
        return f"{what}: {known['caveat']}"
    if any(Path(n).suffix.lower() in (".jpg", ".jpeg") for _, n in items):
        return f"{what}: lossy JPEG images, not the lossless CIFAR-10 originals"
    return what


def verify_archive(path: Path) -> None:
    """Check a known archive's SHA-256 (DataError with both hashes when it differs)."""
    known = KNOWN_ARCHIVES.get(path.name)
    if known:
        digest = file_digest(path, "sha256")
        if digest != known["sha256"]:
            raise DataError(checksum_message(path, known["sha256"], digest))


def _tree_stamp(items: list[tuple[str, str]]) -> tuple[int, int, int]:
    sizes = mtimes = 0
    for _, name in items:
        st = os.stat(name)
        sizes += st.st_size
        mtimes = max(mtimes, st.st_mtime_ns)
    return len(items), sizes, mtimes


def load_images(kind: str, path: Path, split: str) -> ArrayDataset:
    """One split of an image zip (``kind="zip"``) or tree (``"tree"``), via the array cache."""
    if kind == "zip":
        paths = array_cache_paths(
            "cifar10-zip", array_cache_key(path, split), ("images", "labels", "classes", "source")
        )
        cached = load_cached_arrays(paths)
        if cached is None:
            verify_archive(path)
            try:
                with zipfile.ZipFile(path) as zf:
                    listing = list_zip(zf, str(path))
                    cached = _build(listing, split, zf.read, path, kind)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"cannot read zip {path}: {describe_error(e)}") from e
            save_cached_arrays(paths, cached)
    else:
        listing = list_tree(path)
        key = array_cache_key(path / split, split, *_tree_stamp(listing[split]))
        paths = array_cache_paths("cifar10-tree", key, ("images", "labels", "classes", "source"))
        cached = load_cached_arrays(paths)
        if cached is None:
            cached = _build(listing, split, lambda n: Path(n).read_bytes(), path, kind)
            save_cached_arrays(paths, cached)
    return ArrayDataset(
        cached["images"],
        cached["labels"],
        tuple(cached["classes"].tolist()),
        name=NAME,
        split=split,
        source=str(cached["source"][0]),
        mean=MEAN,
        std=STD,
    )


def _build(listing, split, read, path: Path, kind: str) -> dict[str, np.ndarray]:
    classes = sorted({c for items in listing.values() for c, _ in items})
    items = listing[split]
    if not items:
        raise DataError(
            f"{path}: no {split} images; expected {split}/<class>/<image> with one of "
            f"{sorted(IMAGE_SUFFIXES)}"
        )
    lookup = {c: i for i, c in enumerate(classes)}
    return {
        "images": _decode_all(items, read, str(path)),
        "labels": np.array([lookup[c] for c, _ in items], dtype=np.int64),
        "classes": np.array(classes),
        "source": np.array([_images_source(path, kind, items)]),
    }


# --------------------------------------------------------------------------- public interface


def load(folder: Path, split: str) -> ArrayDataset:
    """Load one split of CIFAR-10 from ``folder`` (its preferred layout)."""
    src = find_source(folder, split)
    if src is None:
        raise DataError(f"{folder}: no CIFAR-10 files for split {split!r}. {MANUAL_HELP}")
    kind, path = src
    return load_pickles(path, split) if kind == "pickles" else load_images(kind, path, split)


def download(target: Path, attempts: Attempts) -> Path | None:
    """Download and extract the python tarball into ``target``; None (recorded) on failure."""
    target.mkdir(parents=True, exist_ok=True)
    tgz = target / URL.rsplit("/", 1)[-1]

    def check_md5(tmp: Path) -> None:
        digest = file_digest(tmp, "md5")
        if digest != MD5:
            raise DataError(checksum_message(tgz, MD5, digest, "MD5"))

    try:
        download_url(URL, tgz, verify=check_md5)
        extract_batches(tgz, target)
        tgz.unlink()
    except Exception as e:  # noqa: BLE001 - every failure is reported in one message
        attempts.downloads.append(f"{URL}: {describe_error(e)}")
        return None
    return find(target)


def extract_batches(tgz: Path, target: Path) -> Path:
    """Extract the ``cifar-10-batches-py/*`` files of ``tgz`` into ``target``, each atomically."""
    wanted = {META, *BATCHES["train"], *BATCHES["test"]}
    out = target / BATCHES_DIR
    with tarfile.open(tgz, "r:*") as tar:
        found = set()
        for m in tar.getmembers():
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 2 and parts[0] == BATCHES_DIR and parts[1] in wanted:
                with atomic_path(out / parts[1]) as tmp:
                    tmp.write_bytes(tar.extractfile(m).read())
                    make_readable(tmp)
                found.add(parts[1])
    missing = wanted - found
    if missing:
        raise DataError(f"{tgz}: missing {BATCHES_DIR}/{', '.join(sorted(missing))}")
    return out


def info(folder: Path) -> dict:
    """Layout, files, sizes, per-class counts and checksum status of CIFAR-10 in ``folder``."""
    kind, path = find_source(folder)
    result = {
        "directory": str(folder),
        "layout": kind,
        "path": str(path),
        "splits": {},
        "image_shape": [3, 32, 32],
    }
    if kind == "pickles":
        result["source"] = f"CIFAR-10 python batches in {path} (lossless)"
        result["classes"] = [n.decode() for n in _unpickle(path / META)[b"label_names"]]
        result["files"] = {
            n: {"path": str(path / n), "bytes": (path / n).stat().st_size}
            for n in (META, *BATCHES["train"], *BATCHES["test"])
        }
        for split in SPLITS:
            labels = np.concatenate(
                [np.asarray(_unpickle(path / b)[b"labels"]) for b in BATCHES[split]]
            )
            counts = np.bincount(labels, minlength=len(result["classes"]))
            result["splits"][split] = {"size": int(len(labels)), "class_counts": counts.tolist()}
        result["checksums"] = "not checked (no published per-file checksums)"
        result["checksums_ok"] = None
        return result
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            listing = list_zip(zf, str(path))
        result["files"] = {path.name: {"path": str(path), "bytes": path.stat().st_size}}
        known = KNOWN_ARCHIVES.get(path.name)
        if known:
            digest = file_digest(path)
            ok = digest == known["sha256"]
            result["checksums"] = (
                "ok" if ok else (f"MISMATCH: expected {known['sha256']}, got {digest}")
            )
            result["checksums_ok"] = ok
        else:
            result["checksums"], result["checksums_ok"] = "no checksum known", None
    else:
        listing = list_tree(path)
        result["checksums"], result["checksums_ok"] = "no checksum known", None
    classes = sorted({c for items in listing.values() for c, _ in items})
    result["classes"] = classes
    result["source"] = _images_source(path, kind, listing["train"] + listing["test"])
    for split, items in listing.items():
        counts = [sum(1 for c, _ in items if c == name) for name in classes]
        result["splits"][split] = {"size": len(items), "class_counts": counts}
    return result
