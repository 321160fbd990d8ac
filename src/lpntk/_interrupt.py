"""Ctrl-C during a long loop: finish the current step, save, then stop.

Inside :func:`deferred_interrupt` the first SIGINT only sets ``flag.requested``; the loop checks
it at a point where its state is consistent, saves what it finished and raises
:class:`~lpntk._errors.Interrupted`. A Ctrl-C that comes while the loop ends (its last
evaluation or save) is honoured too: leaving the block with the flag set raises
:class:`~lpntk._errors.Interrupted`, so that a command never carries on to its next run. A second
Ctrl-C stops at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from ._errors import Interrupted


class InterruptFlag:
    requested: bool = False


@contextmanager
def deferred_interrupt():
    """Yield an :class:`InterruptFlag` set by the first SIGINT (main thread only; elsewhere the
    flag stays unset and Ctrl-C behaves as usual). Leaving the block normally with the flag set
    raises :class:`~lpntk._errors.Interrupted`: the block's work is done and saved."""
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
    if flag.requested:  # Ctrl-C came as the work finished: stop here, before anything new starts
        raise Interrupted("stopped after the work in progress finished and was saved")
