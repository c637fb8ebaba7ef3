"""The example plugin's own tests, written with clusterbus.testing.bus: a real engine and
plugin host, real events, the plugin's real service; no daemon, no sockets.

Run them with ``pytest contrib/example-plugin/tests`` (clusterbus's suite runs them too)."""

from __future__ import annotations

import json

import pytest
from clusterbus_example import ExamplePlugin

import clusterbus
from clusterbus.testing.bus import PluginBus, run, until


def test_membership_changes_reach_the_hooks_in_order():
    example = ExamplePlugin()
    bus = PluginBus({"example": example})
    bus.node_up(3, "10.0.0.3")
    bus.node_up(3, "10.0.0.3")  # a duplicate: no view change, no hook call
    bus.node_down(3)
    assert list(example.seen) == [("up", 3), ("down", 3)]
    assert bus.hooks() == ["clusterbus_node_up", "clusterbus_event",
                           "clusterbus_node_down", "clusterbus_event"]
    assert bus.failures["example"] == 0 and bus.stats()["example"]["calls"] >= 3


def test_it_keeps_only_the_last_changes_in_memory():
    # a plugin lives as long as the daemon: a flapping node must not grow it (the soak
    # found the daemon's RSS growing ~90 bytes per event while this was an unbounded list)
    from clusterbus_example import SEEN_MAX

    example = ExamplePlugin()
    bus = PluginBus({"example": example})
    for _ in range(SEEN_MAX):
        bus.node_up(5, "10.0.0.5")
        bus.node_down(5)
    assert len(example.seen) == SEEN_MAX
    assert example.seen[-1] == ("down", 5) and example.seen[0] == ("up", 5)


def test_the_service_appends_one_json_line_per_change(tmp_path):
    log_file = tmp_path / "membership.jsonl"
    example = ExamplePlugin()
    bus = PluginBus({"example": example}, config={"example": {"log_file": str(log_file)}})

    def lines() -> list[dict]:
        text = log_file.read_text() if log_file.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    async def main() -> None:
        async with bus.running():  # startup, then the writer service runs
            bus.node_up(4, "10.0.0.4", "fd00::4")
            bus.node_down(4)
            await until(lambda: len(lines()) == 2)

    run(main())
    up, down = lines()
    assert (up["what"], up["node"], up["addrs"]) == ("up", 4, ["10.0.0.4", "fd00::4"])
    assert (down["what"], down["seq"]) == ("down", 2)
    assert bus.failures["example"] == 0


def test_a_bad_section_names_the_key():
    with pytest.raises(clusterbus.ConfigError) as info:
        PluginBus({"example": ExamplePlugin()}, config={"example": {"log_fil": "/tmp/x"}})
    assert info.value.key == "example.log_fil"
