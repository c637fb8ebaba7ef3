from __future__ import annotations

import logging

import pytest

import clusterbus
from clusterbus import Engine, NodeReport, NodeState, PluginHost
from clusterbus.errors import PluginError


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    @clusterbus.hookimpl
    def clusterbus_node_up(self, event):
        self.calls.append(("up", event.node))

    @clusterbus.hookimpl
    def clusterbus_node_down(self, event, cluster):
        self.calls.append(("down", event.node))
        assert cluster.state(event.node) is NodeState.DOWN  # the view already changed

    @clusterbus.hookimpl
    def clusterbus_event(self, event):
        self.calls.append(("event", event.seq))


class Raiser:
    @clusterbus.hookimpl
    def clusterbus_node_up(self, event):
        raise RuntimeError("boom")

    @clusterbus.hookimpl
    def clusterbus_event(self, event):
        raise KeyError("bad")


def make(*plugins):
    host = PluginHost()
    for i, p in enumerate(plugins):
        host.register(p, f"p{i}")
    return host, Engine(origin=9, plugins=host, clock=lambda: 100.0)


def up(node):
    return NodeReport(state=NodeState.UP, node=node, reason="test")


def down(node):
    return NodeReport(state=NodeState.DOWN, node=node, reason="test")


def test_a_raising_plugin_does_not_stop_the_others(caplog):
    rec = Recorder()
    # registered after rec, so it runs first: rec must still be called
    host, engine = make(rec, Raiser())
    published = []
    engine.sinks.append(published.append)
    with caplog.at_level(logging.ERROR):
        engine.report(up(1))
        engine.report(down(1))
    assert rec.calls == [("up", 1), ("event", 1), ("down", 1), ("event", 2)]
    assert host.failures["p1"] == 3 and host.failures["p0"] == 0
    assert [e.seq for e in published] == [1, 2]
    assert "plugin p1 failed in clusterbus_node_up" in caplog.text


def test_duplicates_call_no_hook():
    rec = Recorder()
    _, engine = make(rec)
    engine.report(up(4))
    assert engine.report(up(4)) is None
    assert rec.calls == [("up", 4), ("event", 1)]


def test_events_emitted_inside_a_hook_are_dispatched_after_in_seq_order():
    order: list[tuple[str, int]] = []

    class Emitter:
        @clusterbus.hookimpl
        def clusterbus_event(self, event, cluster):
            order.append((event.topic, event.seq))
            if event.topic == "node.up":
                cluster.emit(clusterbus.NodemapChanged, node=event.node, addrs=(), reason="t")

    _, engine = make(Emitter())
    engine.report(up(2))
    assert order == [("node.up", 1), ("nodemap.changed", 2)]


def test_historic_startup_reaches_late_plugins():
    seen = []

    class Late:
        @clusterbus.hookimpl
        def clusterbus_startup(self, cluster):
            seen.append(cluster.view_id)

    host, engine = make()
    engine.report(up(1))
    host.call_historic("clusterbus_startup", cluster=engine.cluster)
    host.register(Late(), "late")
    assert seen == [1]  # called at registration, with the live cluster


def test_wrappers_are_refused():
    class Wrapper:
        @clusterbus.hookimpl(wrapper=True)
        def clusterbus_event(self, event):
            return (yield)

    host = PluginHost()
    with pytest.raises(PluginError, match="wrappers"):
        host.register(Wrapper(), "w")
    assert "w" not in host.names()


def test_unknown_hook_is_refused():
    class Typo:
        @clusterbus.hookimpl
        def clusterbus_node_upp(self, event):
            pass

    with pytest.raises(PluginError):
        PluginHost().register(Typo(), "typo")


def test_resolve_node_first_result():
    class A:
        @clusterbus.hookimpl
        def clusterbus_resolve_node(self, addr):
            return None

    class B:
        @clusterbus.hookimpl
        def clusterbus_resolve_node(self, addr):
            return 7 if addr == "10.0.0.7" else None

    _, engine = make(B(), A())
    assert engine.cluster.resolve_node("10.0.0.7") == 7
    assert engine.cluster.resolve_node("10.0.0.8") is None


def test_entry_point_enable_disable(tmp_path):
    host = PluginHost(disable=["nodemap"])
    host.load_entrypoints()
    assert "nodemap" not in host.names()
    host = PluginHost(enable=["nodemap"])
    host.load_entrypoints()
    assert host.names() == ["nodemap"]
    with pytest.raises(clusterbus.ConfigError, match="no installed plugin named nodmap"):
        PluginHost(disable=["nodmap"]).load_entrypoints(file="x.toml")


def test_a_plugin_registered_later_is_called_by_later_events():
    first, second = Recorder(), Recorder()
    host, engine = make(first)
    engine.report(up(1))
    host.register(second, "second")
    engine.report(up(2))
    assert ("up", 2) in first.calls and second.calls == [("up", 2), ("event", 2)]
