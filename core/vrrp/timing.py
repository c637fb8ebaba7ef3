"""Waking on time on the speaker's own thread or process (see docs/architecture.md,
"Concurrency model").

epoll, under asyncio's timers, waits in whole milliseconds; keepalived wakes on a timerfd.
The speaker arms its asyncio timer a little early and sleeps the rest with
:func:`sleep_until`; :func:`tune_thread` makes that sleep precise and the thread
preferred by the scheduler; :func:`tune_process` does the same for the speaker's own
process, real-time first (keepalived's ``vrrp_rt_priority``), and
:func:`die_with_parent` ties that process's life to the daemon's.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable

__all__ = ["sleep_until", "tune_thread", "tune_process", "die_with_parent", "NICE",
           "RT_PRIORITY", "RT_START_PRIORITY", "raise_rt_priority"]

log = logging.getLogger(__name__)

#: prctl(2) PR_SET_TIMERSLACK
_PR_SET_TIMERSLACK = 29
#: prctl(2) PR_SET_PDEATHSIG
_PR_SET_PDEATHSIG = 1
#: SCHED_RR priority of the speaker's process (1..99; keepalived's ``vrrp_rt_priority``):
#: low among real-time tasks (kernel threads use 50 and 99), above every normal one
RT_PRIORITY = 10
#: SCHED_RR priority of the speaker's process while it starts (its interpreter, imports,
#: sockets): real-time, so a busy host does not slow its start, but below a running
#: speaker's, so a speaker starting on the same host (a restart, a second daemon) never
#: delays one that runs; :func:`raise_rt_priority` lifts it once the routers run
RT_START_PRIORITY = 1
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


def tune_thread() -> str:
    """For the calling thread only: timer slack 1 ns (``prctl(PR_SET_TIMERSLACK)``, so its
    sleeps end when asked, not up to 50 us later) and nice :data:`NICE` (root only). Best
    effort: what cannot be changed stays as it is.

    :returns: what the thread got, for ``status()``: ``"SCHED_OTHER nice -10"``.
    """
    _prctl(_PR_SET_TIMERSLACK, 1)
    try:  # Linux: a thread id is a PRIO_PROCESS target
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        return f"SCHED_OTHER nice {NICE}"
    except OSError as exc:  # not root: the default priority
        log.debug("VRRP speaker thread keeps its priority: %s", exc)
        return "SCHED_OTHER nice 0"


def _prctl(option: int, arg: int) -> int:
    """``prctl(option, arg)``: 0, or the errno (-1 when libc cannot be called)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) == 0:
            return 0
        return ctypes.get_errno()
    except (OSError, AttributeError):
        return -1


def die_with_parent(parent: int, sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``), unless the parent is gone already.

    :param parent: the pid the parent had when it started us.
    :returns: ``False`` when the parent died before the call took effect (the caller
        exits), else ``True``.
    """
    if _prctl(_PR_SET_PDEATHSIG, sig) != 0:
        log.warning("VRRP process: prctl(PR_SET_PDEATHSIG) failed: it may outlive the daemon")
    return os.getppid() == parent


def tune_process(priority: int = RT_PRIORITY) -> tuple[str, str | None]:
    """For the speaker's own process: timer slack 1 ns, a session of its own, and a
    scheduling class that puts it ahead of the daemon and the host's other work.

    In order: ``os.setsid()`` (a new session is a new autogroup when
    ``kernel.sched_autogroup_enabled`` is 1, so it no longer shares the weight of the
    daemon's session); ``SCHED_RR`` at ``priority`` with ``SCHED_RESET_ON_FORK``
    (needs CAP_SYS_NICE and, with real-time group scheduling, real-time runtime in the
    cgroup); if that is refused, nice :data:`NICE` for the process and its autogroup.
    Best effort: whatever is refused is left as it was.

    Called first thing in the speaker's process, before its imports and before its log
    reaches the daemon: it logs nothing itself.

    :returns: what the process got, for ``status()`` (``"SCHED_RR 10"`` or
        ``"SCHED_OTHER nice -10"``, or ``nice 0`` when that too was refused), and what was
        refused and why, for the caller to log (``None``: nothing was).
    """
    _prctl(_PR_SET_TIMERSLACK, 1)
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass
    policy = getattr(os, "SCHED_RR", None)
    try:
        if policy is None:
            raise OSError("no SCHED_RR on this platform")
        os.sched_setscheduler(0, policy | getattr(os, "SCHED_RESET_ON_FORK", 0),
                              os.sched_param(priority))
        return f"SCHED_RR {priority}", None
    except OSError as exc:
        refused = f"real-time scheduling refused ({exc})"
    nice = 0
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
        nice = NICE
        # the autogroup's own weight (a session alone in its group competes as a group)
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(NICE))
    except OSError as exc:
        refused += f"; nice {NICE} for the process or its autogroup refused ({exc})"
    return f"SCHED_OTHER nice {nice}", refused


def raise_rt_priority() -> str | None:
    """From :data:`RT_START_PRIORITY` to :data:`RT_PRIORITY`, when the process runs
    ``SCHED_RR`` (else nothing changes).

    :returns: the new scheduling, as :func:`tune_process` describes it, or ``None``.
    """
    policy = getattr(os, "SCHED_RR", None)
    try:
        if policy is None or os.sched_getscheduler(0) & ~getattr(
                os, "SCHED_RESET_ON_FORK", 0) != policy:
            return None
        os.sched_setscheduler(0, policy | getattr(os, "SCHED_RESET_ON_FORK", 0),
                              os.sched_param(RT_PRIORITY))
        return f"SCHED_RR {RT_PRIORITY}"
    except OSError:
        return None
