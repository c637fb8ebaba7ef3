"""The whole daemon, end to end: senders -> netlink/ingest -> plugins -> ZeroMQ -> receivers.

One namespace per test module holds the daemon's netlink group; every sender runs in it.
Receivers (``clusterbus events --json`` and the client library) reach the daemon through
``ipc://`` endpoints. Plugins: the node map, contrib/example-plugin installed through its
entry point, and a plugin that raises in every hook, installed beside it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq
from cbdaemon import CLUSTERBUS, Daemon
from netns import Topology, run

from clusterbus.bus.client import Subscriber

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

FAULTY = '''
import clusterbus

class Faulty:
    @clusterbus.hookimpl
    def clusterbus_node_up(self, event):
        raise RuntimeError("faulty plugin: node_up")

    @clusterbus.hookimpl
    def clusterbus_node_down(self, event):
        raise RuntimeError("faulty plugin: node_down")

    @clusterbus.hookimpl
    def clusterbus_event(self, event):
        raise ValueError("faulty plugin: event")

plugin = Faulty()
'''


def _install_faulty(site: Path) -> None:
    """A second third-party plugin, found through its entry point like any other."""
    site.mkdir()
    (site / "faulty_plugin.py").write_text(FAULTY)
    info = site / "faulty_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clusterbus]\nfaulty = faulty_plugin:plugin\n")


def _ensure_example_plugin() -> None:
    names = {ep.name for ep in importlib.metadata.entry_points(group="clusterbus")}
    if "example" not in names:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e",
                        str(ROOT / "contrib" / "example-plugin")], check=True, timeout=300)


@pytest.fixture(scope="module")
def emitter(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("emit") / "cb-emit"
    run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(out),
         str(ROOT / "contrib" / "netlink-emitter" / "cb-emit.c")])
    return str(out)


@pytest.fixture()
def daemon(tmp_path):
    _ensure_example_plugin()
    _install_faulty(tmp_path / "site")
    with Topology() as topo:
        ns = topo.netns("d")
        extra = textwrap.dedent(f"""
            [netlink]
            group = 22

            [example]
            log_file = "{tmp_path}/example.jsonl"

            [nodemap.nodes]
            1 = ["10.0.0.1"]
            """)
        d = Daemon(tmp_path, ns, extra=extra,
                   env={"PYTHONPATH": str(tmp_path / "site")})
        d.start()
        try:
            yield d
        finally:
            code = d.stop()
            assert code == 0, f"daemon exit {code}:\n{d.log.read_text()}"


def _wait(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _subscribers(d: Daemon) -> int:
    c = d.status()["services"]["bus"]["counters"]
    return c.get("subscribe", 0) - c.get("unsubscribe", 0)


async def _collect(d: Daemon, n: int, ready: asyncio.Event, timeout: float = 30) -> list:
    got = []
    async with Subscriber(d.publish, d.snapshot, deliver_snapshots=False) as sub:
        ready.set()
        async with asyncio.timeout(timeout):
            async for event in sub:
                got.append(event)
                if len(got) >= n:
                    return got
    return got


def test_senders_plugins_and_receivers(daemon: Daemon, emitter: str, tmp_path: Path):
    d = daemon
    # receiver 1: the CLI, filtered to node events
    cli = subprocess.Popen([CLUSTERBUS, "events", "--json", "--filter", "node.", "--count", "4",
                            "--timeout", "60", "-c", str(d.config)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # receiver 2: the client library, everything (node events + nodemap.changed)
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    collect = loop.create_task(_collect(d, 6, ready))
    loop.run_until_complete(ready.wait())
    try:
        _wait(lambda: _subscribers(d) >= 2, what="two subscribers")
        ns = d.ns
        # senders: the C emitter, clusterbus emit (netlink), clusterbus emit --via zmq
        run(Topology.prefix(ns) + [emitter, "-g", "22", "up", "3", "10.0.0.3", "fd00::3"])
        d.cli("emit", "node-up", "4", "--addr", "10.0.0.4", ns=True)
        d.cli("emit", "node-down", "3", "--via", "zmq")
        run(Topology.prefix(ns) + [emitter, "-g", "22", "down", "4"])
        # a duplicate: no event, no hook call
        d.cli("emit", "node-down", "4", ns=True)
        events = loop.run_until_complete(collect)
    finally:
        collect.cancel()
        loop.close()
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err

    # continuous seq, the right order and content, through the client library
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [(e.topic, getattr(e, "node", None)) for e in events] == [
        ("node.up", 3), ("nodemap.changed", 3), ("node.up", 4), ("nodemap.changed", 4),
        ("node.down", 3), ("node.down", 4)]
    assert events[0].addrs == ("10.0.0.3", "fd00::3") and events[0].origin == 7
    assert [e.view for e in events if e.topic.startswith("node.")] == [1, 2, 3, 4]
    assert events[4].reason == "zmq" and events[5].reason == "netlink"

    # the CLI saw the same node events as JSON lines
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["topic"], x["node"], x["seq"]) for x in lines] == [
        ("node.up", 3, 1), ("node.up", 4, 3), ("node.down", 3, 5), ("node.down", 4, 6)]
    assert all(x["origin"] == 7 for x in lines)

    # the example plugin (entry point) was called despite the raising plugin beside it
    log = tmp_path / "example.jsonl"
    _wait(lambda: log.exists() and len(log.read_text().splitlines()) == 4, what="example log")
    assert [(r["what"], r["node"]) for r in map(json.loads, log.read_text().splitlines())] == [
        ("up", 3), ("up", 4), ("down", 3), ("down", 4)]
    plugins = {p["name"]: p for p in d.status()["plugins"]}
    assert {"nodemap", "example", "faulty"} <= set(plugins)
    # faulty: 4 specific hooks + 6 clusterbus_event calls, all isolated
    assert plugins["faulty"]["failures"] == 10
    assert plugins["example"]["failures"] == 0 and plugins["nodemap"]["failures"] == 0
    assert "plugin faulty failed in clusterbus_node_up" in d.log.read_text()

    # the node map learned from node-up and answers lookups
    assert d.cli("nodemap", "lookup", "fd00::3").stdout.strip() == "3"
    assert d.cli("nodemap", "lookup", "10.0.0.1").stdout.strip() == "1"
    assert d.cli("nodemap", "lookup", "10.9.9.9", check=False).returncode == 1

    st = d.status()
    assert st["view"] == 4 and st["seq"] == 6 and st["ignored"]["duplicate"] == 1


def test_bad_input_changes_nothing_but_counters(daemon: Daemon):
    d = daemon
    before = d.status()
    # a sender that is not root: `clusterbus emit` refuses to send what would be dropped
    # (the embedded default config: group 22 too; nobody cannot read the test's file)
    p = d.cli("emit", "node-down", "1", ns=True, user=NOBODY, check=False, config=False)
    assert p.returncode == 1 and "uid 65534 is not in" in p.stderr, p.stderr
    # ...the kernel lets anyone send to the group, and the netlink source rejects it
    nobody_sends = ("from clusterbus.netlink import sender\n"
                    "sender.send('down', 1, group=22)\n")
    run(Topology.prefix(d.ns) + NOBODY + [sys.executable, "-c", nobody_sends])
    # a malformed netlink message from root
    garbage = textwrap.dedent("""
        import socket, struct
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2)
        s.bind((0, 0))
        msg = struct.pack("=IHHII", 20, 0x4342, 0, 1, 0) + b"\\x07\\x01\\x00\\x00"
        try:
            s.sendto(msg, (0, 1 << 21))
        except ConnectionRefusedError:
            pass
        """)
    run(Topology.prefix(d.ns) + [sys.executable, "-c", garbage])
    # malformed ingest frames
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(d.ingest)
    for frames in ([b"node.up", b"\xc1"], [b"no.such", b"\x80"], [b"node.up"],
                   [b"node.down", b"\x81\xa4node\xa1x"]):
        push.send_multipart(frames)
    push.close(linger=2000)
    ctx.term()

    def counted():
        st = d.status()
        nl = st["services"]["netlink"]["counters"]
        bus = st["services"]["bus"]["counters"]
        dropped = sum(v for k, v in bus.items() if k.startswith("ingest.dropped"))
        return (nl["unauthorised_sender"] == 1 and nl["malformed"] == 1 and dropped == 4
                and st)

    after = _wait(counted, what="drop counters")
    assert after["view"] == before["view"] and after["seq"] == before["seq"]
    assert after["plugins"] and d.proc.poll() is None
    # and the daemon still works
    d.cli("emit", "node-up", "9", ns=True)
    _wait(lambda: d.status()["view"] == before["view"] + 1, what="view change after bad input")


def test_restarted_subscriber_repairs_its_gap(daemon: Daemon):
    d = daemon

    async def first() -> tuple[int, int]:
        async with Subscriber(d.publish, d.snapshot, deliver_snapshots=False) as sub:
            await asyncio.to_thread(_wait, lambda: _subscribers(d) >= 1, 15, "subscriber")
            await asyncio.to_thread(d.cli, "emit", "node-up", "11", "--via", "zmq")
            async with asyncio.timeout(15):
                event = await sub.next()
            assert (event.topic, event.node) == ("node.up", 11)
            return sub.position

    pos = asyncio.run(first())
    # while no subscriber runs, three more events happen
    for node in (12, 13, 14):
        d.cli("emit", "node-up", str(node), "--via", "zmq")
    _wait(lambda: d.status()["view"] == 4, what="three more views")

    async def second() -> list:
        got = []
        async with Subscriber(d.publish, d.snapshot, resume=pos,
                              deliver_snapshots=False) as sub:
            async with asyncio.timeout(15):
                while len(got) < 3:
                    got.append(await sub.next())
            return got, dict(sub.counters)

    got, counters = asyncio.run(second())
    assert [(e.seq, e.node) for e in got] == [(2, 12), (3, 13), (4, 14)]
    assert counters["replayed"] >= 3
