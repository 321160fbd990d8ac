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


class Stages:
    """Where a command of several runs stands: ``[3/6] redundant, seed 0, 664 samples; about
    4 min left`` before each run, the time left from the runs trained so far (runs found
    finished are not counted). ``eta=False``: no time left (stages of unlike cost)."""

    def __init__(self, total: int, enabled: bool = True, eta: bool = True):
        self.total, self.enabled, self.done, self.spent, self.timed = total, enabled, 0, 0.0, 0
        self._start, self.eta = None, eta

    def start(self, what: str) -> None:
        import time

        self.done += 1
        self._start = time.perf_counter()
        if not self.enabled:
            return
        left = self.total - self.done + 1
        timed = self.eta and self.timed
        eta = f"; about {_duration(self.spent / self.timed * left)} left" if timed else ""
        tqdm.write(f"[{self.done}/{self.total}] {what}{eta}", file=sys.stderr)

    def finish(self, trained: bool = True) -> None:
        """The run started last ended; ``trained=False``: it was found finished (no time)."""
        import time

        if trained and self._start is not None:
            self.spent += time.perf_counter() - self._start
            self.timed += 1


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
