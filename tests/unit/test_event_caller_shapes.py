"""Event hooks may take any subset of (event, cluster), in any order: each shape gets
the right arguments on the per-event path."""

from __future__ import annotations

import clusterbus
from clusterbus import Engine, NodeReport, NodeState, PluginHost


class Shapes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    @clusterbus.hookimpl
    def clusterbus_node_up(self, cluster, event):  # reversed order
        self.calls.append(("reversed", (cluster.local_node, event.node)))

    @clusterbus.hookimpl
    def clusterbus_event(self, cluster):
        self.calls.append(("cluster", cluster.local_node))


class NoArgs:
    def __init__(self) -> None:
        self.n = 0

    @clusterbus.hookimpl
    def clusterbus_event(self):
        self.n += 1


def test_every_argument_shape_gets_its_arguments():
    shapes, noargs = Shapes(), NoArgs()
    host = PluginHost()
    host.register(shapes, "shapes")
    host.register(noargs, "noargs")
    engine = Engine(origin=9, plugins=host, clock=lambda: 100.0)
    engine.report(NodeReport(state=NodeState.UP, node=5, reason="test"))
    engine.report(NodeReport(state=NodeState.DOWN, node=5, reason="test"))
    assert shapes.calls == [("reversed", (9, 5)), ("cluster", 9), ("cluster", 9)]
    assert noargs.n == 2
