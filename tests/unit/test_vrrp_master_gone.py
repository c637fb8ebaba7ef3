"""fast_takeover's forwarding on the daemon's side: which ``director.down`` events reach
the speaker, with which addresses (no sockets: the speaker is not started)."""

from __future__ import annotations

import tomllib
from typing import Any

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.events import DirectorDown, DirectorUp
from clusterbus.pluginhost import PluginHost
from clusterbus.vrrp.speaker import FAST_REASONS, VrrpSpeaker

CONF = """
[corosync]
enabled = true

[[vrrp.instance]]
name = "VI_1"
interface = "lo"
vrid = 51
virtual_ipaddress = ["10.79.0.100/24"]
fast_takeover = "corosync"
"""


def speaker() -> tuple[Engine, VrrpSpeaker, list[tuple[Any, ...]]]:
    engine = Engine(origin=2, plugins=PluginHost())
    engine.nodemap.add(1, ["10.79.0.1"], pinned=True)
    sp = VrrpSpeaker(engine, parse_config(tomllib.loads(CONF), file="t.toml"))
    calls: list[tuple[Any, ...]] = []
    sp._to_speaker = lambda fn, *args: calls.append((fn.__name__, *args))  # type: ignore
    engine.sinks.append(sp._on_event)
    return engine, sp, calls


def test_a_process_exit_is_forwarded_with_the_nodes_addresses() -> None:
    engine, sp, calls = speaker()
    assert FAST_REASONS == {"corosync.procdown", "corosync.leave"}
    engine.publish(DirectorDown, node=1, reason="corosync.procdown")
    engine.publish(DirectorDown, node=1, reason="corosync.leave")
    assert calls == [("_master_daemon_gone", 1, ("10.79.0.1",), "corosync.procdown"),
                     ("_master_daemon_gone", 1, ("10.79.0.1",), "corosync.leave")]


def test_a_node_loss_and_other_events_are_not_forwarded() -> None:
    engine, sp, calls = speaker()
    engine.publish(DirectorDown, node=1, reason="corosync.nodedown")  # host failure: RFC
    engine.publish(DirectorDown, node=1, reason="corosync.resync")
    engine.publish(DirectorUp, node=1, reason="corosync.join")
    assert calls == []
    assert sp.counters["fast_takeover.ignored"] == 2
