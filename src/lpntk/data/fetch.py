"""Where datasets live, how they are downloaded, and the cache of decoded arrays.

A *data directory* is a root with one folder per dataset (``<root>/mnist``, ``<root>/cifar10``).
Places are searched in this order, first hit wins:

1. the explicit ``data_dir`` argument (the root, or the dataset folder itself);
2. ``$LPNTK_DATA_DIR`` (a root; may be read-only);
3. the user cache ``$LPNTK_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/lpntk``;
4. a download into the cache (or into the explicit directory, for :func:`lpntk.data.fetch`).

Decoded-array caches (``.npy``) always go to ``<cache>/arrays``, never into a data directory.

Note: ``lpntk.data.fetch`` as a package attribute is the *function*; import helpers from this
module with ``from lpntk.data.fetch import ...``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import atomic_path

ENV_DATA_DIR = "LPNTK_DATA_DIR"
ENV_CACHE_DIR = "LPNTK_CACHE_DIR"
#: Seconds before a download attempt gives up waiting for the server.
URL_TIMEOUT = 60.0
#: Bump to invalidate every decoded-array cache.
CACHE_VERSION = 1


def cache_root() -> Path:
    """The user cache: ``$LPNTK_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/lpntk``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "lpntk"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The root searched first: ``data_dir`` if given, else ``$LPNTK_DATA_DIR``, else the cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    return cache_root()


def search_places(name: str, data_dir: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    """``(label, folder)`` pairs to look in for dataset ``name``, in order (folder None: unset)."""
    places: list[tuple[str, Path | None]] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        places += [("data_dir argument", d / name), ("data_dir argument", d)]
    env = os.environ.get(ENV_DATA_DIR)
    places.append((f"${ENV_DATA_DIR}", Path(env).expanduser() / name if env else None))
    places.append(("user cache", cache_root() / name))
    return places


def download_target(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The folder a download of ``name`` goes to: ``<data_dir>/<name>`` (or data_dir itself if it
    is already named ``name``) when given, else ``<cache>/<name>``."""
    if data_dir is None:
        return cache_root() / name
    d = Path(data_dir).expanduser()
    return d if d.name == name else d / name


@dataclass
class Attempts:
    """What a lookup tried, for the single error message given when everything fails."""

    looked: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)

    def message(self, headline: str, manual: str) -> str:
        lines = [headline, "Looked in:"]
        lines += [f"  - {x}" for x in self.looked] or ["  (nowhere)"]
        lines.append("Downloads tried:")
        lines += [f"  - {x}" for x in self.downloads] or ["  (none)"]
        lines.append(manual)
        return "\n".join(lines)


def locate(
    name: str,
    data_dir: str | os.PathLike | None,
    find: Callable[[Path], Path | None],
    attempts: Attempts,
) -> Path | None:
    """Return the first folder of :func:`search_places` that ``find`` accepts (its answer), or None.

    ``find(folder)`` returns the folder holding the files, or None; every place is recorded.
    """
    for label, folder in search_places(name, data_dir):
        if folder is None:
            attempts.looked.append(f"{label} (not set)")
            continue
        found = find(folder)
        if found is not None:
            return found
        state = "empty or incomplete" if folder.is_dir() else "does not exist"
        attempts.looked.append(f"{label}: {folder} ({state})")
    return None


# --------------------------------------------------------------------------- hashing and downloads


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_url(url: str, dest: Path, verify: Callable[[Path], None] | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically; ``verify(tmp_path)`` may raise to reject the file.

    Raises whatever urllib raises (``URLError``, ``OSError``, timeouts) or ``verify`` raises.
    """
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        if verify is not None:
            verify(tmp)
        make_readable(tmp)
    return dest


def describe_error(e: BaseException) -> str:
    """One line: the exception type and message."""
    text = " ".join(str(e).split()) or "no message"
    return f"{type(e).__name__}: {text[:300]}"


# --------------------------------------------------------------------------- decoded-array cache


def array_cache_key(source: str | os.PathLike, *extra: object) -> str:
    """A short hash of ``source``'s absolute path, size and mtime_ns (plus ``extra``)."""
    p = Path(source).resolve()
    st = p.stat()
    text = "|".join(str(x) for x in (p, st.st_size, st.st_mtime_ns, CACHE_VERSION, *extra))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def array_cache_paths(tag: str, key: str, parts: tuple[str, ...]) -> dict[str, Path]:
    """``{part: <cache>/arrays/<tag>-<key>-<part>.npy}``."""
    root = cache_root() / "arrays"
    return {part: root / f"{tag}-{key}-{part}.npy" for part in parts}


def load_cached_arrays(paths: dict[str, Path]) -> dict[str, np.ndarray] | None:
    """Load every array of ``paths``, or None when any is missing or unreadable."""
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        return {k: np.load(p, allow_pickle=False) for k, p in paths.items()}
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring unreadable array cache ({describe_error(e)})", stacklevel=2)
        return None


def save_cached_arrays(paths: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """Write each array atomically; a cache that cannot be written only gives a warning."""
    try:
        for k, p in paths.items():
            with atomic_path(p) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arrays[k], allow_pickle=False)
                make_readable(tmp)
    except OSError as e:
        warnings.warn(
            f"could not write the array cache in {cache_root() / 'arrays'} "
            f"({describe_error(e)}); the next load will decode again",
            stacklevel=2,
        )


def make_readable(path: str | os.PathLike) -> None:
    """Give a finished temp file (created 0600) the usual ``rw-r--r--`` mode before publishing."""
    os.chmod(path, 0o644)
