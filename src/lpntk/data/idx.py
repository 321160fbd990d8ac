"""The IDX file format (MNIST and its relatives), raw or gzipped.

Layout: two zero bytes, a dtype code, the number of dimensions ``ndim``; then ``ndim`` big-endian
uint32 sizes; then the data, big-endian, C order.  Gzip is detected by its magic bytes ``1f 8b``,
not by the file name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from .._errors import DataError
from .._io import atomic_path
from .dataset import ArrayDataset

#: IDX dtype code -> numpy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """Return the content of ``path``, gunzipped when it starts with the gzip magic bytes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path} is a corrupt gzip file ({e}); expected a complete gzip stream. "
            "Delete it and fetch it again."
        ) from e


def parse_idx(buf: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file into a native-byte-order array of the stored shape."""
    if len(buf) < 4:
        raise DataError(f"{name}: truncated IDX file: {len(buf)} bytes, expected at least 4")
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES:
        raise DataError(
            f"{name}: not an IDX file: magic bytes {buf[:4].hex(' ')}, expected "
            f"00 00 <dtype> <ndim> with dtype one of {', '.join(f'{c:#04x}' for c in IDX_DTYPES)}"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"{name}: truncated IDX header: {len(buf)} bytes, expected {header} for {ndim} dims"
        )
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) < expected:
        raise DataError(
            f"{name}: truncated IDX file: header says shape {shape} of {dtype.name} "
            f"({expected} bytes in all), but the file has {len(buf)} bytes"
        )
    if len(buf) > expected:
        raise DataError(
            f"{name}: {len(buf) - expected} trailing bytes after the IDX data: header says shape "
            f"{shape} of {dtype.name} ({expected} bytes in all), the file has {len(buf)} bytes"
        )
    count = (expected - header) // dtype.itemsize
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def read_idx_hashed(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read an IDX file (raw or gzipped); return the array and the SHA-256 of the raw IDX bytes."""
    buf = read_file_bytes(path)
    return parse_idx(buf, str(path)), hashlib.sha256(buf).hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzipped, into a numpy array of the shape its header gives."""
    buf = read_file_bytes(path)
    return parse_idx(buf, str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` (one of the IDX dtypes) as the bytes of an IDX file."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(
            f"cannot write dtype {array.dtype} as IDX; expected one of "
            f"{', '.join(str(d) for d in _CODES)}"
        )
    head = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return head + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, atomically; gzipped if ``compress`` (default: if .gz)."""
    path = Path(path)
    data = idx_bytes(array)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
    return path


# --------------------------------------------------------------------------- dataset directories

_SPLIT_KEYS = {
    "train": {"images": ("train-images",), "labels": ("train-labels",)},
    "test": {"images": ("t10k-images", "test-images"), "labels": ("t10k-labels", "test-labels")},
}


def find_idx_file(directory: str | os.PathLike, split: str, kind: str) -> Path | None:
    """Find the ``kind`` ("images"/"labels") IDX file of ``split`` in ``directory``.

    Matches names containing ``train-images`` / ``train-labels`` (train) or ``t10k-`` / ``test-``
    images/labels (test), raw or ``.gz``; prefers the raw file when both exist.  ``None`` if absent;
    :class:`DataError` when two different files match.
    """
    if split not in _SPLIT_KEYS:
        raise DataError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_KEYS)}")
    directory = Path(directory)
    if not directory.is_dir():
        return None
    keys = _SPLIT_KEYS[split][kind]
    hits: dict[str, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        base = p.name[:-3] if p.name.endswith(".gz") else p.name
        if p.is_file() and not p.name.startswith(".") and any(k in base for k in keys):
            hits.setdefault(base, []).append(p)
    if not hits:
        return None
    if len(hits) > 1:
        raise DataError(
            f"{directory}: several {split} {kind} files match ({', '.join(sorted(hits))}); "
            "expected exactly one"
        )
    (files,) = hits.values()
    return min(files, key=lambda p: p.name.endswith(".gz"))  # raw first


def load_idx_dataset(
    directory: str | os.PathLike,
    split: str = "train",
    name: str = "idx",
    classes: tuple[str, ...] | list[str] | None = None,
    checksums: dict[str, str] | None = None,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ArrayDataset:
    """Load one split of an MNIST-format directory into an :class:`ArrayDataset`.

    Images ``(N, H, W)`` uint8 become ``(N, 1, H, W)``; labels ``(N,)`` become int64.  ``classes``
    defaults to the lines of ``classes.txt`` in the folder (one name per label, in label order)
    when there is one, else ``"0".."max label"``.  ``checksums`` maps file names without
    ``.gz`` to the SHA-256 of the decompressed content; a listed file that differs raises
    :class:`DataError`.
    ``mean``/``std`` default to the per-channel statistics of the loaded images.
    """
    directory = Path(directory)
    arrays = {}
    files = {}
    for kind in ("images", "labels"):
        path = find_idx_file(directory, split, kind)
        if path is None:
            keys = " or ".join(f"{k}-*" for k in _SPLIT_KEYS[split][kind])
            raise DataError(f"{directory}: no {split} {kind} IDX file ({keys}, raw or .gz)")
        arr, digest = read_idx_hashed(path)
        base = path.name[:-3] if path.name.endswith(".gz") else path.name
        if checksums and base in checksums and checksums[base] != digest:
            raise DataError(
                checksum_message(
                    path, checksums[base], digest, "SHA-256 of the decompressed content"
                )
            )
        arrays[kind], files[kind] = arr, path
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{files['images']}: expected images of shape (N, H, W) uint8, "
            f"found {images.shape} {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{files['labels']}: expected labels of shape (N,) integer, "
            f"found {labels.shape} {labels.dtype}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{directory}: {files['images'].name} has {len(images)} images but "
            f"{files['labels'].name} has {len(labels)} labels; expected equal counts"
        )
    if classes is None:
        classes = _class_names(directory, int(labels.max(initial=0)) + 1)
    verified = " (SHA-256 verified)" if checksums else ""
    return ArrayDataset(
        images[:, None],
        labels.astype(np.int64),
        classes,
        name=name,
        split=split,
        source=f"IDX files {files['images'].name}, {files['labels'].name} in {directory}{verified}",
        mean=mean,
        std=std,
    )


def _class_names(directory: Path, k: int) -> tuple[str, ...]:
    """The names in ``directory/classes.txt`` (one a line), or ``"0" .. "k-1"``."""
    path = directory / "classes.txt"
    if not path.exists():
        return tuple(str(i) for i in range(k))
    try:
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); expected one class name a line") from None
    if len(names) < k:
        raise DataError(
            f"{path} names {len(names)} classes, but the labels go up to {k - 1}; expected one "
            "name a line for every label"
        )
    return names


def checksum_message(path: Path, expected: str, actual: str, what: str = "SHA-256") -> str:
    """The text of a checksum-mismatch error: file, both hashes, what to do."""
    return (
        f"checksum mismatch for {path}: expected {what} {expected}, got {actual}. "
        f"The file is corrupt or not the expected one: delete it and fetch it again "
        f"(lpntk data fetch, or lpntk.data.fetch())."
    )
