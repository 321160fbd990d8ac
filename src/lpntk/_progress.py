"""Progress bars: rate and ETA on a terminal, an occasional line in a log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int, desc: str, unit: str = "sample", initial: int = 0, enabled: bool = True):
    """A tqdm bar over ``total`` units; redrawn at most every 30 s when stderr is not a terminal."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=0.2 if sys.stderr.isatty() else 30.0,
    )
