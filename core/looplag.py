"""The loop-lag monitor: how late does the event loop wake a task that asked to sleep?

Everything in the daemon shares one asyncio loop; a hook or a source that holds it delays
every other task, heartbeats and VRRP adverts included. The monitor sleeps ``interval``
seconds again and again and measures how much later than asked it woke: that lateness is
the time something else held the loop. A lag over ``stall_ms`` is a stall: counted, and
logged (rate-limited) with its length. ``clusterbus status`` shows the counts, the last
and the worst lag under ``services.looplag``.

:meth:`LoopLagMonitor.observe` is the whole measurement without I/O (tests feed it lags);
:meth:`LoopLagMonitor.run` is the task the daemon starts in its TaskGroup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .ratelimit import LogLimiter

__all__ = ["LoopLagMonitor", "INTERVAL", "STALL_MS"]

log = logging.getLogger(__name__)

#: Seconds between two wake-ups.
INTERVAL = 0.1
#: A wake-up later than this many milliseconds is a stall.
STALL_MS = 50.0


class LoopLagMonitor:
    """Measures the event loop's lag by sleeping and timing the wake-up.

    :param interval: seconds asked for each sleep.
    :param stall_ms: a lag over this is counted as a stall and logged.
    :param clock: monotonic clock in seconds.
    :param log_interval: seconds between two stall log lines (the rest are counted).
    """

    def __init__(self, *, interval: float = INTERVAL, stall_ms: float = STALL_MS,
                 clock: Callable[[], float] = time.monotonic, log_interval: float = 10.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.stall_ms = stall_ms
        self._clock = clock
        self._limited = LogLimiter(log, interval=log_interval)
        #: ``samples`` (wake-ups measured), ``stalls`` (lags over ``stall_ms``)
        self.counters: dict[str, int] = {"samples": 0, "stalls": 0}
        self.last_ms = 0.0  #: the lag of the last wake-up
        self.worst_ms = 0.0  #: the largest lag seen

    def observe(self, lag: float) -> bool:
        """Account one wake-up that came ``lag`` seconds later than asked.

        :returns: whether it was a stall.
        """
        ms = max(lag, 0.0) * 1000.0
        self.counters["samples"] += 1
        self.last_ms = ms
        if ms > self.worst_ms:
            self.worst_ms = ms
        if ms <= self.stall_ms:
            return False
        self.counters["stalls"] += 1
        self._limited.warning("stall", "event loop stalled: a task woke %.1f ms late (over "
                              "%g ms): something held the loop (see the plugins' slow calls)",
                              ms, self.stall_ms)
        return True

    async def run(self) -> None:
        """Sleep and measure, until cancelled."""
        clock = self._clock
        while True:
            start = clock()
            await asyncio.sleep(self.interval)
            self.observe(clock() - start - self.interval)

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        return {
            "interval_ms": round(self.interval * 1000.0, 3),
            "stall_ms": self.stall_ms,
            "last_ms": round(self.last_ms, 3),
            "worst_ms": round(self.worst_ms, 3),
            "counters": dict(self.counters),
        }
