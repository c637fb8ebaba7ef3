"""clusterbus.testing.bus, the helper plugin authors test with: what it records, how it
runs services, its loopback BusService, and the example plugin's tests that use it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

import clusterbus
from clusterbus import NodeDown, NodemapChanged, NodeUp, PluginError
from clusterbus.testing import HookCall, PluginBus
from clusterbus.testing.bus import SPY, run, until

ROOT = Path(__file__).resolve().parents[2]


class Emitter:
    """Emits a nodemap.changed from node_up; raises in node_down."""

    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    @clusterbus.hookimpl
    def clusterbus_startup(self):
        self.started += 1

    @clusterbus.hookimpl
    def clusterbus_shutdown(self):
        self.stopped += 1

    @clusterbus.hookimpl
    def clusterbus_node_up(self, event, cluster):
        cluster.emit(NodemapChanged, node=event.node, addrs=event.addrs, reason="emitter")

    @clusterbus.hookimpl
    def clusterbus_node_down(self, event):
        raise RuntimeError("down")

    @clusterbus.hookimpl
    def clusterbus_status(self):
        return {"started": self.started}


def test_records_events_and_hook_calls_in_order():
    bus = PluginBus({"emitter": Emitter()}, node=7)
    first = bus.node_up(3, "10.0.0.3")
    assert isinstance(first, NodeUp) and first.origin == 7
    assert bus.node_up(3, "10.0.0.3") is None  # a duplicate
    bus.node_down(3)
    assert bus.topics() == ["node.up", "nodemap.changed", "node.down"]
    assert [e.seq for e in bus.events] == [1, 2, 3]
    assert bus.hooks() == ["clusterbus_node_up", "clusterbus_event", "clusterbus_event",
                           "clusterbus_node_down", "clusterbus_event"]
    assert bus.calls[3] == HookCall(hook="clusterbus_node_down", event=bus.events[2])
    assert isinstance(bus.events[2], NodeDown)
    assert bus.cluster.state(3) is clusterbus.NodeState.DOWN
    assert bus.failures["emitter"] == 1
    assert SPY not in bus.stats() and bus.stats()["emitter"]["failures"] == 1
    bus.clear()
    assert bus.events == [] and bus.calls == []


def test_vrrp_and_own_events():
    bus = PluginBus()
    bus.vrrp("VI_1", "MASTER")
    conflict = bus.emit(clusterbus.AddressConflict, addr="10.0.0.1", owner=1, claimant=2,
                        reason="test")
    assert conflict.seq == 2
    assert bus.topics() == ["vrrp.transition", "nodemap.conflict"]
    assert bus.hooks()[0] == "clusterbus_vrrp_transition"


def test_configuration_reaches_the_plugin_and_bad_plugins_are_refused():
    class Configured:
        section = None

        @clusterbus.hookimpl
        def clusterbus_configure(self, section):
            Configured.section = section

    PluginBus({"conf": Configured()}, config={"conf": {"x": 1}})
    assert Configured.section == {"x": 1}
    with pytest.raises(clusterbus.ConfigError, match="unknown section"):
        PluginBus({"conf": Configured()}, config={"other": {}})

    class Typo:
        @clusterbus.hookimpl
        def clusterbus_node_donw(self, event):
            pass

    with pytest.raises(PluginError, match="did you mean clusterbus_node_down"):
        PluginBus({"typo": Typo()})


def test_slow_calls_are_counted_as_in_the_daemon():
    class Slow:
        @clusterbus.hookimpl
        def clusterbus_node_up(self):
            time.sleep(0.02)

    bus = PluginBus({"slow": Slow()}, slow_call_ms=5)
    bus.node_up(1)
    assert bus.stats()["slow"]["slow"] == 1


def test_running_starts_services_and_shuts_down():
    emitter = Emitter()
    served: list[int] = []

    class Service:
        @clusterbus.hookimpl
        def clusterbus_services(self, cluster):
            async def count() -> None:
                while True:
                    served.append(cluster.view_id)
                    await asyncio.sleep(0.01)

            async def broken() -> None:
                raise RuntimeError("service failed")

            return [count, broken]

    bus = PluginBus({"emitter": emitter, "service": Service()})

    async def main() -> None:
        async with bus.running() as svc:
            assert svc is None
            assert emitter.started == 1
            bus.node_up(1)
            await until(lambda: 1 in served and bus.failures["service"] == 1)
            assert bus.status() == {"emitter": {"started": 1}}
        assert emitter.stopped == 1

    run(main())


def test_running_with_a_loopback_bus_service_publishes_to_subscribers():
    from clusterbus.bus.client import Subscriber

    bus = PluginBus({"emitter": Emitter()})

    async def main() -> None:
        async with bus.running(zmq=True) as svc:
            assert svc is not None and svc.endpoints["publish"].startswith("tcp://127.0.0.1:")
            async with Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"]) as sub:
                await until(lambda: svc.counters["subscribe"] >= 1)
                bus.node_up(5, "10.0.0.5")
                got = [await sub.next() for _ in range(2)]
        assert [e.topic for e in got] == ["node.up", "nodemap.changed"]  # type: ignore[union-attr]

    run(main())


def test_run_is_bounded():
    with pytest.raises(TimeoutError):
        run(asyncio.sleep(5), limit=0.05)


def test_the_example_plugins_own_tests_pass():
    pytest_bin = Path(sys.executable).with_name("pytest")
    p = subprocess.run([str(pytest_bin), "-q", "-p", "no:cacheprovider",
                        str(ROOT / "contrib" / "example-plugin" / "tests")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "4 passed" in p.stdout
