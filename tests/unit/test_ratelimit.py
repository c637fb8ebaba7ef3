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


def test_burst_writes_that_many_lines_per_window(caplog) -> None:
    clock = Clock()
    limited = LogLimiter(logging.getLogger("t.rl3"), interval=1.0, burst=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.rl3"):
        written = [limited.info("change", "node %d", i) for i in range(10)]
        clock.t += 1.0
        limited.info("change", "node %d", 10)
    assert written == [True] * 3 + [False] * 7
    assert [r.getMessage() for r in caplog.records] == [
        "node 0", "node 1", "node 2", "node 10 (7 similar suppressed in the last 1 s)"]


def test_a_flood_of_membership_changes_is_not_a_flood_of_log_lines(caplog) -> None:
    from clusterbus.engine import CHANGE_LOG_BURST, Engine
    from clusterbus.pluginhost import PluginHost
    from clusterbus.view import NodeReport, NodeState

    engine = Engine(origin=1, plugins=PluginHost())
    with caplog.at_level(logging.INFO, logger="clusterbus.engine"):
        for node in range(1, 1001):
            assert engine.report(NodeReport(state=NodeState.UP, node=node, reason="test"))
    changes = [r for r in caplog.records if "view" in r.getMessage()]
    # a test run takes far less than the 50 s that 1000 lines would need at this rate
    assert CHANGE_LOG_BURST <= len(changes) < 1000
