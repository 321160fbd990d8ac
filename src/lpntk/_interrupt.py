"""Ctrl-C during a long loop: finish the current step, save, then stop.

Inside :func:`deferred_interrupt` the first SIGINT only sets ``flag.requested``; the loop checks
it at a point where its state is consistent, saves what it finished and raises
:class:`~lpntk._errors.Interrupted`. A second Ctrl-C stops at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class InterruptFlag:
    requested: bool = False


@contextmanager
def deferred_interrupt():
    """Yield an :class:`InterruptFlag` set by the first SIGINT (main thread only; elsewhere the
    flag stays unset and Ctrl-C behaves as usual)."""
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # installed outside Python: restore Python's default afterwards
        previous = signal.default_int_handler

    def handler(signum, frame):
        if flag.requested:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
