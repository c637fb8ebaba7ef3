"""Every hook call is timed: slow calls are counted and logged (rate-limited) with the
plugin's name; failing calls log one traceback per plugin and hook per interval.

Small real sleeps; the assertions are on counts, never on how fast anything ran."""

from __future__ import annotations

import logging
import time

import pytest
from click.testing import CliRunner

import clusterbus
from clusterbus import ConfigError, Engine, NodeReport, NodeState, PluginHost
from clusterbus.cli import main
from clusterbus.config import parse_config
from clusterbus.daemon import Daemon


class Sleeper:
    """Sleeps 20 ms in node_down; node_up does nothing."""

    @clusterbus.hookimpl
    def clusterbus_node_down(self, event):
        time.sleep(0.02)

    @clusterbus.hookimpl
    def clusterbus_node_up(self, event):
        pass


class Fast:
    @clusterbus.hookimpl
    def clusterbus_event(self, event):
        pass


class Failing:
    @clusterbus.hookimpl
    def clusterbus_node_up(self, event):
        raise RuntimeError("boom")

    @clusterbus.hookimpl
    def clusterbus_status(self):
        return {"ok": True}


def report(engine, state, node):
    engine.report(NodeReport(state=state, node=node, reason="test"))


def flap(engine, times):
    for i in range(times):
        report(engine, NodeState.UP, 1 + i)
        report(engine, NodeState.DOWN, 1 + i)


def test_a_slow_hook_is_counted_and_logged_once_a_fast_one_is_not(caplog):
    host = PluginHost(slow_call_ms=5)
    host.register(Sleeper(), "sleeper")
    host.register(Fast(), "fast")
    engine = Engine(origin=1, plugins=host)
    with caplog.at_level(logging.WARNING, logger="clusterbus.pluginhost"):
        flap(engine, 3)
    stats = host.hook_stats()
    assert stats["sleeper"]["calls"] == 6 and stats["sleeper"]["slow"] == 3
    assert stats["sleeper"]["worst_hook"] == "clusterbus_node_down"
    assert stats["sleeper"]["worst_ms"] >= 20  # it slept that long: a lower bound
    assert stats["fast"]["calls"] == 6 and stats["fast"]["slow"] == 0
    assert stats["fast"]["failures"] == stats["sleeper"]["failures"] == 0
    lines = [r.getMessage() for r in caplog.records]
    # three slow calls of one plugin's hook within the interval: one line
    assert len(lines) == 1, lines
    assert "plugin sleeper: clusterbus_node_down took" in lines[0]
    assert "slow_call_ms = 5" in lines[0]
    assert host.limited.suppressed == 2


def test_the_same_plugin_under_the_default_threshold_is_not_slow():
    host = PluginHost()  # slow_call_ms = 50: a 20 ms hook is not slow
    host.register(Sleeper(), "sleeper")
    flap(Engine(origin=1, plugins=host), 1)
    assert host.hook_stats()["sleeper"] == {
        **host.hook_stats()["sleeper"], "calls": 2, "slow": 0, "failures": 0}


def test_call_each_and_call_first_are_timed_too():
    class SlowStatus:
        @clusterbus.hookimpl
        def clusterbus_status(self):
            time.sleep(0.02)
            return {}

        @clusterbus.hookimpl
        def clusterbus_resolve_node(self, addr):
            return None

    host = PluginHost(slow_call_ms=5)
    host.register(SlowStatus(), "s")
    engine = Engine(origin=1, plugins=host)
    host.call_each("clusterbus_status", cluster=engine.cluster)
    engine.cluster.resolve_node("10.0.0.1")
    st = host.hook_stats()["s"]
    assert (st["calls"], st["slow"], st["worst_hook"]) == (2, 1, "clusterbus_status")


def test_failing_hook_logs_one_traceback_per_interval_and_counts_all(caplog):
    host = PluginHost()
    host.register(Failing(), "failing")
    engine = Engine(origin=1, plugins=host)
    with caplog.at_level(logging.ERROR, logger="clusterbus.pluginhost"):
        flap(engine, 5)
    assert host.failures["failing"] == 5
    assert host.hook_stats()["failing"]["failures"] == 5
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert tracebacks[0].getMessage() == "plugin failing failed in clusterbus_node_up"
    assert host.limited.suppressed == 4


def test_failures_of_different_hooks_each_get_their_line(caplog):
    class TwoHooks:
        @clusterbus.hookimpl
        def clusterbus_node_up(self, event):
            raise RuntimeError("up")

        @clusterbus.hookimpl
        def clusterbus_node_down(self, event):
            raise RuntimeError("down")

    host = PluginHost()
    host.register(TwoHooks(), "two")
    with caplog.at_level(logging.ERROR, logger="clusterbus.pluginhost"):
        flap(Engine(origin=1, plugins=host), 3)
    assert sorted(r.getMessage() for r in caplog.records) == [
        "plugin two failed in clusterbus_node_down", "plugin two failed in clusterbus_node_up"]
    assert host.failures["two"] == 6


def test_slow_call_ms_comes_from_the_plugins_section():
    cfg = parse_config({"plugins": {"slow_call_ms": 1}}, file="t.toml")
    assert PluginHost.from_config(cfg).slow_call_ms == 1.0
    assert PluginHost.from_config(parse_config({}, file="t.toml")).slow_call_ms == 50.0
    with pytest.raises(ConfigError, match="plugins.slow_call_ms"):
        parse_config({"plugins": {"slow_call_ms": -1}}, file="t.toml")


def test_daemon_status_and_describe_carry_the_counts():
    cfg = parse_config({"plugins": {"slow_call_ms": 5}, "netlink": {"enabled": False},
                        "bus": {"enabled": False}}, file="t.toml")
    daemon = Daemon(cfg, load_entrypoints=False)
    daemon.plugins.register(Sleeper(), "sleeper")
    daemon.plugins.register(Failing(), "failing")
    daemon.setup()
    flap(daemon.engine, 1)
    rows = {r["name"]: r for r in daemon.status()["plugins"]}
    assert rows["sleeper"]["calls"] == 2 and rows["sleeper"]["slow"] == 1
    assert rows["sleeper"]["worst_ms"] >= 20
    # the status hook itself was called (and timed) while building the status
    assert rows["failing"]["failures"] == 1 and rows["failing"]["calls"] == 2


def test_cli_plugins_shows_the_columns():
    r = CliRunner().invoke(main, ["plugins", "--local"])
    assert r.exit_code == 0, r.output
    for col in ("calls", "slow", "worst ms", "failures"):
        assert col in r.output


def test_calls_are_counted_across_a_rebuilt_call_table():
    host = PluginHost()
    fast = Fast()
    host.register(fast, "fast")
    engine = Engine(origin=1, plugins=host)
    flap(engine, 2)  # 4 events, one clusterbus_event call each
    assert host.hook_stats()["fast"]["calls"] == 4
    host.register(Sleeper(), "sleeper")  # the call tables are rebuilt
    flap(engine, 1)
    assert host.hook_stats()["fast"]["calls"] == 6
    assert host.hook_stats()["sleeper"]["calls"] == 2


def test_a_slow_call_below_the_worst_so_far_is_still_counted():
    durations = iter([0.03, 0.01, 0.02])

    class Varying:
        @clusterbus.hookimpl
        def clusterbus_event(self, event):
            time.sleep(next(durations))

    host = PluginHost(slow_call_ms=5)
    host.register(Varying(), "varying")
    engine = Engine(origin=1, plugins=host)
    report(engine, NodeState.UP, 1)
    report(engine, NodeState.DOWN, 1)
    report(engine, NodeState.UP, 1)
    st = host.hook_stats()["varying"]
    assert st["slow"] == 3 and st["calls"] == 3 and st["worst_ms"] >= 30
