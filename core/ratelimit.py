"""Rate-limited logging: a flood of one kind of message costs one line per interval.

A source that drops a spoofed advert, a hook that fails on every call, an ingest flood:
each would otherwise write a log line per event and turn the log into the bottleneck.
:class:`LogLimiter` logs the first occurrence of a key, then at most one line per
``interval`` seconds for that key, saying how many were suppressed in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

__all__ = ["LogLimiter"]


class LogLimiter:
    """One logger, many keys, each limited to one line per ``interval`` seconds.

    >>> limited = LogLimiter(logging.getLogger(__name__), interval=10.0)
    >>> limited.warning(("spoofed", "10.0.0.9"), "advert from %s dropped: %s", "10.0.0.9", "bad auth")

    :param logger: where lines go.
    :param interval: seconds between two lines of one key (the window of ``burst``).
    :param burst: lines one key may write per window before the rest are suppressed (1:
        one line per interval; more suits lines that are each worth reading unless they
        come in a flood, such as membership changes).
    :param max_keys: keys remembered at most (the oldest are forgotten first), so hostile
        input with ever-new keys cannot grow memory.
    :param clock: monotonic clock (tests pass a fake one).
    """

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0, max_keys: int = 1024,
                 burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        #: key -> [start of its window, lines written in it, occurrences suppressed since]
        self._keys: dict[Hashable, list[float]] = {}
        #: lines suppressed in total (for status)
        self.suppressed = 0

    def log(self, level: int, key: Hashable, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` ago.

        :returns: whether a line was written.
        """
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            if entry[1] >= self.burst:
                entry[2] += 1
                self.suppressed += 1
                return False
            entry[1] += 1
            skipped = 0
        else:
            skipped = int(entry[2]) if entry is not None else 0
            if entry is None and len(self._keys) >= self.max_keys:
                self._keys.pop(next(iter(self._keys)))
            self._keys[key] = [now, 1, 0]
        if skipped:
            msg = f"{msg} (%d similar suppressed in the last %.0f s)"
            args = (*args, skipped, self.interval)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def debug(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.DEBUG, key, msg, *args)

    def info(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: Hashable, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)
