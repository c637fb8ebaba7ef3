"""LogLimiter: one line per key per interval, with the count of what was suppressed."""

from __future__ import annotations

import logging

from clusterbus.ratelimit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_one_line_per_interval_with_suppressed_count(caplog) -> None:
    clock = Clock()
    limited = LogLimiter(logging.getLogger("t.rl"), interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.rl"):
        assert limited.info("k", "drop %s", "a")
        for _ in range(99):
            assert not limited.info("k", "drop %s", "a")
        assert limited.info("other", "other key")
        clock.t += 10.0
        assert limited.info("k", "drop %s", "a")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["drop a", "other key", "drop a (99 similar suppressed in the last 10 s)"]
    assert limited.suppressed == 99


def test_keys_are_bounded() -> None:
    limited = LogLimiter(logging.getLogger("t.rl2"), max_keys=4)
    for i in range(100):
        limited.warning(("spoof", i), "x")
    assert len(limited._keys) == 4
