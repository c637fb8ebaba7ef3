"""Waking on time on the speaker's own thread (see docs/architecture.md, "Concurrency
model").

epoll, under asyncio's timers, waits in whole milliseconds; keepalived wakes on a timerfd.
The speaker arms its asyncio timer a little early and sleeps the rest with
:func:`sleep_until`; :func:`tune_thread` makes that sleep precise and the thread
preferred by the scheduler.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable

__all__ = ["sleep_until", "tune_thread", "NICE"]

log = logging.getLogger(__name__)

#: prctl(2) PR_SET_TIMERSLACK
_PR_SET_TIMERSLACK = 29
#: nice value of the speaker thread (like keepalived's ``vrrp_priority``): when it wakes
#: the scheduler prefers it over the daemon's own busy thread and other processes
NICE = -10
_CLOCK_MONOTONIC, _TIMER_ABSTIME = 1, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _nanosleep() -> Callable[[float], None]:
    """``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` called *holding the GIL*
    (``ctypes.PyDLL``): the last moments before a deadline are slept without giving the
    interpreter lock away, so the speaker does not have to win it back from a busy daemon
    thread right before it sends (that would be one more wait of up to a switch interval,
    or longer when that thread is off the CPU). The daemon's thread waits at most that
    long. ``time.sleep`` when libc cannot be loaded."""
    try:
        fn = ctypes.PyDLL(None).clock_nanosleep
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Timespec), ctypes.c_void_p]
        fn.restype = ctypes.c_int
    except (OSError, AttributeError):
        return lambda deadline: time.sleep(max(0.0, deadline - time.monotonic()))

    def sleep_until(deadline: float) -> None:
        sec = int(deadline)
        ts = _Timespec(sec, int((deadline - sec) * 1e9))
        for _ in range(3):  # EINTR: a signal (the daemon's thread gets them, rarely us)
            if fn(_CLOCK_MONOTONIC, _TIMER_ABSTIME, ctypes.byref(ts), None) == 0:
                return
    return sleep_until


#: Sleep until a ``time.monotonic()`` (= ``loop.time()``) deadline, holding the GIL.
#: Call it only for short waits (the speaker: at most 1.5 ms).
sleep_until: Callable[[float], None] = _nanosleep()


def tune_thread() -> None:
    """For the calling thread only: timer slack 1 ns (``prctl(PR_SET_TIMERSLACK)``, so its
    sleeps end when asked, not up to 50 us later) and nice :data:`NICE` (root only). Best
    effort: what cannot be changed stays as it is."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:  # Linux: a thread id is a PRIO_PROCESS target
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except OSError as exc:  # not root: the default priority
        log.debug("VRRP speaker thread keeps its priority: %s", exc)
