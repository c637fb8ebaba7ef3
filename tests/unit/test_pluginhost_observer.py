"""PluginHost.set_observer: every hook call timed, failed ones included; off costs nothing."""

from __future__ import annotations

import clusterbus
from clusterbus import Engine, NodeReport, NodeState, PluginHost


class Good:
    @clusterbus.hookimpl
    def clusterbus_node_up(self, event):
        pass

    @clusterbus.hookimpl
    def clusterbus_status(self):
        return {"ok": True}


class Bad:
    @clusterbus.hookimpl
    def clusterbus_event(self, event, cluster):
        raise RuntimeError("boom")


def _engine():
    host = PluginHost()
    host.register(Good(), "good")
    host.register(Bad(), "bad")
    return host, Engine(origin=1, plugins=host)


def test_event_hooks_and_call_each_are_observed_failures_included():
    host, engine = _engine()
    seen: list[tuple[str, str, float]] = []
    engine.report(NodeReport(state=NodeState.UP, node=2, reason="test"))  # before: nothing observed
    host.set_observer(lambda plugin, hook, s: seen.append((plugin, hook, s)))
    engine.report(NodeReport(state=NodeState.UP, node=3, reason="test"))
    host.call_each("clusterbus_status", cluster=engine.cluster)
    assert [(p, h) for p, h, _ in seen] == [("good", "clusterbus_node_up"),
                                            ("bad", "clusterbus_event"),
                                            ("good", "clusterbus_status")]
    assert all(s >= 0 for _, _, s in seen)
    assert host.failures["bad"] == 2
    host.set_observer(None)
    engine.report(NodeReport(state=NodeState.UP, node=4, reason="test"))
    assert len(seen) == 3
