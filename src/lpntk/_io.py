"""Atomic file output: a crash never leaves a half-written result behind; and reading the
files users hand back (JSON, .npy, .csv) with errors that say which file is corrupt.

Files are created with the user's umask, like any other file the user writes (a temporary file
from :mod:`tempfile` would be private, mode 0600).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._errors import ConfigError, DataError, MissingFileError


@contextmanager
def naming(path: str | os.PathLike):
    """OSErrors in the block (a full disk, a lost permission) name ``path`` when they name no
    file themselves: a write to a full disk says only "No space left on device"."""
    try:
        yield
    except OSError as e:
        if e.filename or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically; its own writer's failures (a full disk reads as
    "unexpected pos ...") become an OSError that names ``path``."""
    import errno
    import shutil

    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "write failed"
            full = shutil.disk_usage(tmp.parent).free < (1 << 20)
            code = errno.ENOSPC if full else errno.EIO
            why = os.strerror(code) if full else f"could not write a checkpoint ({first})"
            raise OSError(code, why, str(path)) from None


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a new empty file beside ``path``; move it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:  # mode 0o666 is reduced by the umask, as open() does for any new file
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a lost permission: name the file the user asked for
        tmp.unlink(missing_ok=True)
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write(
        path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    )


def output_folder(path: str | os.PathLike, param: str = "out_dir") -> Path:
    """``path`` checked as a folder to write results into: a ConfigError naming ``param`` when
    it, or a folder above it, is a file or cannot be written."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{p} is a file; expected a folder", param=param)
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"{p} cannot be written to; expected a writable folder", param=param
                )
            break
    return path


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The JSON in ``path``, or a DataError naming ``what`` it is and how to ``fix`` it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{what} {path} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{what} {path} is corrupt or not a JSON file ({_reason(e)}); {fix}"
        ) from None


def _reason(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:120]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def read_npy(path: str | os.PathLike, what: str, fix: str, mmap_mode=None):
    """The array in the .npy file ``path`` (no pickles), or an error naming ``what`` it is, why
    it cannot be read and how to ``fix`` it."""
    import numpy as np

    path = Path(path)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise MissingFileError(f"{what} {path} is missing; {fix}") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(
            f"{what} {path} is corrupt or not a .npy file ({_reason(e)}); {fix}"
        ) from None


def read_csv(path: str | os.PathLike, what: str, fix: str):
    """The pandas table in the .csv file ``path``, or an error naming ``what`` it is, why it
    cannot be read and how to ``fix`` it."""
    import pandas as pd

    path = Path(path)
    try:
        with open(path, "rb") as f:
            if b"\0" in f.read(1 << 16):  # no text table holds a NUL byte
                raise ValueError("binary content")
        return pd.read_csv(path)
    except FileNotFoundError:
        raise MissingFileError(f"{what} {path} is missing; {fix}") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        # EmptyDataError is a ValueError
        raise DataError(
            f"{what} {path} is corrupt or not a .csv file ({_reason(e)}); {fix}"
        ) from None
