"""The conn-sync plugin wired end to end over its real CURVE channel on loopback, with its
real codec and table and a small fake of its kernel module (the real one needs IPVS; it is
tested under UML in tests/kernel): captured entries of director 1 are injected on director
2, the barrier waits for them and times out as configured, status and ``clusterbus connsync
show`` report them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tomllib
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq.auth
from click.testing import CliRunner
from loopbus import dead_endpoint

from clusterbus import ConfigError, DecodeError
from clusterbus.cli import main as cli_main
from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.pluginhost import PluginHost
from clusterbus.plugins import connsync
from clusterbus.plugins.connsync import ConnSync, codec, conn_from_wire, conn_to_wire, parse
from clusterbus.plugins.connsync import kernel as real_kernel
from clusterbus.plugins.connsync.codec import SeqOpt, SyncConn

# -- a fake of the kernel module (the real one needs IPVS: tests/kernel) --------------------


class Kernel:
    """One fake kernel per interface name: a pipe stands for the capture socket."""

    def __init__(self) -> None:
        self.captures: dict[str, Any] = {}
        self.injected: dict[str, list[bytes]] = {}
        self.committed_ok = asyncio.Event()
        self.committed_ok.set()
        self.knobs: list[dict[str, Any]] = []
        self.daemons: list[tuple[str, dict[str, Any]]] = []
        #: the backup daemon's receive size the fake reports (None: no backup daemon)
        self.backup_maxlen: int | None = 65507
        #: the backup socket's receive buffer; each look at the backup socket (a commit
        #: check, or a look for room for the next round) records how many datagrams had
        #: been injected by then
        self.capacity = 212_992
        self.commit_checks: list[int] = []
        #: the backup queue's bytes each look for room reports, in turn (then 0: the fake
        #: daemon consumes at once); each such look is recorded in ``room_looks``
        self.rx_queue: list[int] = []
        self.room_looks: list[tuple[int, int]] = []
        #: the ``ports`` each commit check and look for room was given; sync_ports reads
        self.ports_given: list[range | None] = []
        self.sync_ports_reads = 0

    def module(self) -> types.ModuleType:
        kernel = self
        m = types.ModuleType("fake_kernel")
        m.BACKUP_MAXLEN_DEFAULT = real_kernel.BACKUP_MAXLEN_DEFAULT  # type: ignore[attr-defined]
        m.SETTLE_S = real_kernel.SETTLE_S  # type: ignore[attr-defined]
        m.SYNC_GROUP4 = real_kernel.SYNC_GROUP4  # type: ignore[attr-defined]
        m.interface_mtu = real_kernel.interface_mtu  # type: ignore[attr-defined]

        class Capture:
            def __init__(self, interface: str, **_kw: Any) -> None:
                self.interface = interface
                self.pending: list[bytes] = []
                self.r, self.w = os.pipe()
                os.set_blocking(self.r, False)
                kernel.captures[interface] = self

            def open(self) -> None: ...

            def close(self) -> None:
                os.close(self.r)
                os.close(self.w)

            def fileno(self) -> int:
                return self.r

            def feed(self, data: bytes) -> None:
                self.pending.append(data)
                os.write(self.w, b"x")

            def read(self) -> list[bytes]:
                try:
                    os.read(self.r, 4096)
                except BlockingIOError:
                    pass
                out, self.pending = self.pending, []
                return out

        class Injector:
            def __init__(self, interface: str) -> None:
                self.interface = interface
                kernel.injected.setdefault(interface, [])

            def open(self) -> None: ...

            def close(self) -> None: ...

            def send(self, datagram: bytes) -> None:
                kernel.injected[self.interface].append(datagram)

        async def committed(*, port: int = 8848, timeout: float,
                            ports: range | None = None, **_kw: Any) -> bool:
            kernel.commit_checks.append(sum(map(len, kernel.injected.values())))
            kernel.ports_given.append(ports)
            try:
                async with asyncio.timeout(timeout):
                    await kernel.committed_ok.wait()
                return True
            except TimeoutError:
                return False

        def set_sync_knobs(**kw: Any) -> None:
            kernel.knobs.append(kw)

        m.Capture, m.Injector, m.committed = Capture, Injector, committed  # type: ignore[attr-defined]
        def ensure_daemons(interface: str, **kw: Any) -> list[str]:
            kernel.daemons.append((interface, kw))
            return ["started backup", "started master"]

        m.set_sync_knobs = set_sync_knobs  # type: ignore[attr-defined]
        m.ensure_daemons = ensure_daemons  # type: ignore[attr-defined]
        m.backup_maxlen = lambda: kernel.backup_maxlen  # type: ignore[attr-defined]

        def backup_queue(ports: range | None = None, group: str | None = None) -> Any:
            injected = sum(map(len, kernel.injected.values()))
            rx = kernel.rx_queue.pop(0) if kernel.rx_queue and injected else 0
            if injected:
                kernel.ports_given.append(ports)
                kernel.commit_checks.append(injected)
                kernel.room_looks.append((injected, rx))
            return real_kernel.BackupQueue(sockets=1, rx_queue=rx, drops=0)

        m.backup_queue = backup_queue  # type: ignore[attr-defined]
        def sync_ports(port: int = 8848) -> range:
            kernel.sync_ports_reads += 1
            return range(port, port + 1)

        m.sync_ports = sync_ports  # type: ignore[attr-defined]
        m.backup_capacity = lambda: kernel.capacity  # type: ignore[attr-defined]
        m.datagram_truesize = real_kernel.datagram_truesize  # type: ignore[attr-defined]
        m.POLL_S = real_kernel.POLL_S  # type: ignore[attr-defined]
        return m


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    kernel = Kernel()
    monkeypatch.setitem(sys.modules, "clusterbus.plugins.connsync.kernel", kernel.module())
    yield kernel


# -- configuration ------------------------------------------------------------------------------

def _conf(tmp: Path, node: int, listen: str, peer_ep: str, extra: str = "") -> str:
    peer = 2 if node == 1 else 1
    return f"""
[daemon]
node = {node}
[bus]
certificate = "{tmp}/d{node}.key_secret"
[[cluster.peer]]
node = {peer}
publish = "tcp://127.0.0.1:{17000 + peer}"
snapshot = "tcp://127.0.0.1:{17100 + peer}"
public_key = "{tmp}/d{peer}.key"
connsync = "{peer_ep}"
[connsync]
interface = "d{node}"
listen = "{listen}"
syncid = 3
{extra}
"""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for n in ("d1", "d2"):
        zmq.auth.create_certificates(tmp_path, n)
    return tmp_path


async def _running(fakes: Kernel, *services: ConnSync) -> Any:
    """Wait until every service runs and director 1's capture is open; that capture."""
    while "d1" not in fakes.captures or not all(d.running for d in services):
        await asyncio.sleep(0.01)
    return fakes.captures["d1"]


def _service(keys: Path, node: int, listen: str, peer_ep: str, extra: str = "") -> ConnSync:
    config = parse_config(tomllib.loads(_conf(keys, node, listen, peer_ep, extra)),
                          file=f"d{node}.toml")
    cluster = Engine(origin=node, plugins=PluginHost()).cluster
    return ConnSync(parse(config, config.plugin_sections["connsync"]), config, cluster)


@pytest.mark.parametrize(("extra", "key", "words"), [
    ('on_barrier_timeout = "maybe"', "connsync.on_barrier_timeout", "proceed"),
    ("conntrack = 1", "connsync.conntrack", "bool"),
    ("sync_threshold = [1]", "connsync.sync_threshold", "two integers"),
    ("barrier_timeout = -1", "connsync.barrier_timeout", "expected a value"),
    ("colour = 1", "connsync.colour", "unknown key"),
])
def test_bad_section_names_the_key(keys: Path, extra: str, key: str, words: str) -> None:
    config = parse_config(tomllib.loads(_conf(keys, 1, "tcp://127.0.0.1:7700",
                                              "tcp://127.0.0.1:7701", extra)), file="d1.toml")
    with pytest.raises(ConfigError) as err:
        parse(config, config.plugin_sections["connsync"])
    assert key in str(err.value) and words in str(err.value)


def test_defaults(keys: Path) -> None:
    config = parse_config(tomllib.loads(_conf(keys, 1, "tcp://127.0.0.1:7700",
                                              "tcp://127.0.0.1:7701")), file="d1.toml")
    cfg = parse(config, config.plugin_sections["connsync"])
    assert (cfg.barrier_timeout, cfg.on_barrier_timeout, cfg.conntrack) == (0.5, "proceed", False)
    assert config["cluster"]["peer"][0]["connsync"] == "tcp://127.0.0.1:7701"


def test_wire_form_round_trips_and_refuses_garbage(fakes: Kernel) -> None:
    c = SyncConn(af=10, protocol=6, flags=0x1183, state=1, cport=0, vport=443, dport=443,
                 caddr="2001:db8::1", vaddr="2001:db8::100", daddr="2001:db8::5", timeout=300,
                 in_seq=SeqOpt(init_seq=1, delta=2, previous_delta=3),
                 out_seq=SeqOpt(init_seq=4, delta=5, previous_delta=6), pe_name=b"sip",
                 pe_data=b"\x01")
    assert conn_from_wire(msgpack.unpackb(msgpack.packb(conn_to_wire(c))), codec) == c
    for bad in (None, [], conn_to_wire(c)[:-1], [2] + conn_to_wire(c)[1:],
                conn_to_wire(c)[:7] + ["1.2.3"] + conn_to_wire(c)[8:],
                conn_to_wire(c)[:4] + [70000] + conn_to_wire(c)[5:]):
        with pytest.raises(DecodeError):
            conn_from_wire(bad, codec)


def _conn(i: int) -> SyncConn:
    return SyncConn(af=2, protocol=6, flags=0x0, state=1, cport=1000 + i, vport=80, dport=80,
                    caddr="10.0.0.9", vaddr="10.0.0.100", daddr="10.0.1.5", timeout=900)


def test_captured_entries_are_injected_on_the_peer_and_the_barrier_waits(
        fakes: Kernel, keys: Path) -> None:
    ep1, ep2 = dead_endpoint(), dead_endpoint()
    d1 = _service(keys, 1, ep1, ep2)
    d2 = _service(keys, 2, ep2, ep1, 'barrier_timeout = 0.3\non_barrier_timeout = "veto"')

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(d1.run())
            t2 = tg.create_task(d2.run())
            cap = await _running(fakes, d1, d2)
            cap.feed(codec.encode_many([_conn(i) for i in range(10)], syncid=3)[0])
            cap.feed(codec.encode_many([_conn(99)], syncid=4)[0])  # another syncid
            cap.feed(b"\xc1garbage")
            for i in range(10, 25, 10):
                cap.feed(codec.encode_many([_conn(j) for j in range(i, i + 10)], syncid=3)[0])
            for _ in range(1000):
                if d2.injected[1] >= 25:
                    break
                await asyncio.sleep(0.01)
            out["barrier_ok"] = await d2.barrier("VI_1")
            fakes.committed_ok.clear()  # the backup daemon does not consume
            out["barrier_stuck"] = await d2.barrier("VI_1")
            fakes.committed_ok.set()
            out["show"] = await asyncio.to_thread(
                CliRunner().invoke, cli_main,
                ["connsync", "show", "--json", "-c", str(keys / "d2.toml")])
            t1.cancel()
            t2.cancel()
        return out

    (keys / "d2.toml").write_text(_conf(keys, 2, ep2, ep1))
    out = asyncio.run(main())
    got = [c for d in fakes.injected["d2"] for c in codec.decode(d).conns]
    assert sorted(c.cport for c in got)[:25] == [1000 + i for i in range(25)]
    assert 1099 not in {c.cport for c in got}
    assert out["barrier_ok"] is None
    assert out["barrier_stuck"] == "synced connections not committed within 0.3 s"
    st = d2.status()
    assert st["peers"]["1"]["entries.received"] >= 25
    assert st["peers"]["1"]["entries.injected"] >= 25
    assert st["counters"]["barrier.timeouts"] == 1 and st["counters"]["barrier.vetoes"] == 1
    assert st["counters"]["barrier.passed"] == 1
    s1 = d1.status()
    assert s1["counters"]["capture.dropped.bad_datagram"] == 1
    assert s1["counters"]["capture.dropped.other_syncid"] == 1
    assert s1["peers"]["2"]["entries.sent"] >= 25
    assert fakes.knobs[0] == {"kernel_maxlen": 1, "sync_threshold": (2, 50)}
    assert sorted(fakes.daemons) == [(f"d{n}", {"syncid": 3, "kernel_maxlen": 1}) for n in (1, 2)]
    res = out["show"]
    assert res.exit_code == 0, res.output
    table = json.loads(res.output)
    assert table["node"] == 2 and table["total"] >= 25
    assert {r["origin"] for r in table["rows"]} == {1}
    assert any(r["client"] == "10.0.0.9:1000" and r["virtual"] == "10.0.0.100:80"
               and r["real"] == "10.0.1.5:80" and r["protocol"] == "tcp" for r in table["rows"])


def test_the_plugin_is_inert_without_a_section() -> None:
    host = PluginHost()
    host.register(connsync.plugin, "connsync")
    engine = Engine(origin=1, plugins=host)
    config = parse_config({}, file="x.toml")
    connsync.plugin.clusterbus_configure(config, None, engine.cluster)
    assert connsync.plugin.clusterbus_services(engine.cluster) is None
    assert host.call_each("clusterbus_vrrp_prepare_master", instance="VI_1", vrid=1,
                          cluster=engine.cluster) == []
    assert connsync.plugin.clusterbus_status(engine.cluster) is None


def test_the_speaker_asks_before_a_takeover_only_when_connsync_is_configured(
        fakes: Kernel, keys: Path) -> None:
    """No [connsync]: no implementation of the barrier hook, so the speaker's routers are
    built without PrepareMaster (no crossing to the daemon's loop); with it, they ask."""
    from clusterbus.vrrp import machine
    from clusterbus.vrrp.speaker import VrrpSpeaker

    def routers_ask(text: str) -> tuple[bool, bool, list[str]]:
        host = PluginHost()
        host.register(connsync.plugin, "connsync")
        engine = Engine(origin=1, plugins=host)
        config = parse_config(tomllib.loads(text), file="d1.toml")
        host.configure(config, engine.cluster)
        speaker = VrrpSpeaker(engine, config)
        ask = speaker._asks_plugins()
        router = machine.Router(machine.RouterConfig(
            name="VI_1", vrid=1, priority=100, primary_address="10.9.0.2",
            virtual_addresses=("10.9.0.1",), advert_interval=0.1, ask_prepare=ask), now=0.0)
        router.start(0.0)
        kinds = [type(e).__name__ for e in router.drain()]
        for t in range(1, 30):  # no master heard: the backup takes over
            router.handle_timer(t / 10)
            kinds += [type(e).__name__ for e in router.drain()]
        return ask, "PrepareMaster" in kinds, host.names()

    with_section = _conf(keys, 1, "tcp://127.0.0.1:7700", "tcp://127.0.0.1:7701")
    without = with_section.split("[connsync]")[0]
    assert routers_ask(without)[:2] == (False, False)
    ask, prepared, names = routers_ask(with_section)
    assert (ask, prepared) == (True, True) and connsync.BARRIER_HOOKS in names
    # configured again without the section (a second configure): the hook goes away
    host = PluginHost()
    engine = Engine(origin=1, plugins=host)
    cfg = parse_config(tomllib.loads(with_section), file="d1.toml")
    connsync.plugin.clusterbus_configure(cfg, cfg.plugin_sections["connsync"], engine.cluster)
    assert host.names() == [connsync.BARRIER_HOOKS]
    connsync.plugin.clusterbus_configure(cfg, None, engine.cluster)
    assert host.names() == []


def test_the_barrier_waits_for_a_live_peers_full_table(fakes: Kernel, keys: Path) -> None:
    d = _service(keys, 2, "tcp://127.0.0.1:7702", "tcp://127.0.0.1:7701",
                 'barrier_timeout = 0.2\non_barrier_timeout = "veto"')
    resyncing = [1]
    d.relay.incomplete = lambda now, within: list(resyncing)  # type: ignore[method-assign]
    d.started -= 60  # running for a while: the start-up grace is over

    async def main() -> tuple[str | None, str | None]:
        stuck = await d.barrier("VI_1")  # peer 1 is sending its table: not done in time
        resyncing.clear()
        return stuck, await d.barrier("VI_1")

    stuck, done = asyncio.run(main())
    assert stuck is not None and done is None
    assert d.counters["barrier.timeouts"] == 1 and d.counters["barrier.passed"] == 1


def test_a_starting_director_takes_no_vip_before_every_peers_full_table(
        fakes: Kernel, keys: Path) -> None:
    d = _service(keys, 2, "tcp://127.0.0.1:7702", "tcp://127.0.0.1:7701")
    veto = asyncio.run(d.barrier("VI_1"))  # peer 1 not heard from yet, just started
    assert veto is not None and "node(s) [1]" in veto
    d.resync_done[1] = d.clock()  # its full table arrived
    assert asyncio.run(d.barrier("VI_1")) is None
    d.resync_done[1] = None
    d.started -= 60  # after the grace a silent peer counts as down
    assert asyncio.run(d.barrier("VI_1")) is None
    assert d.counters["barrier.startup_vetoes"] == 1 and d.counters["barrier.passed"] == 2


def test_a_missing_part_stops_start_up_with_a_config_error(
        fakes: Kernel, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(tomllib.loads(_conf(keys, 1, "tcp://127.0.0.1:7700",
                                              "tcp://127.0.0.1:7701")), file="d1.toml")
    cluster = Engine(origin=1, plugins=PluginHost()).cluster
    connsync.plugin.clusterbus_configure(config, config.plugin_sections["connsync"], cluster)
    monkeypatch.setitem(sys.modules, "clusterbus.plugins.connsync.kernel", None)
    with pytest.raises(ConfigError) as err:
        connsync.plugin.clusterbus_configure(config, config.plugin_sections["connsync"],
                                             cluster)
    assert "kernel module is missing" in str(err.value) and "d1.toml" in str(err.value)


@pytest.mark.parametrize(("value", "words"), [
    ("tcp://127.0.0.1:17002", "same endpoint as publish"),
    ("tcp://*:7701", "connect to"),
    ("http://x", "ZeroMQ endpoint"),
])
def test_bad_peer_connsync_endpoint_names_the_key(keys: Path, value: str, words: str) -> None:
    text = _conf(keys, 1, "tcp://127.0.0.1:7700", value)
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text), file="d1.toml")
    assert "cluster.peer[0].connsync" in str(err.value) and words in str(err.value)


def test_a_peer_without_connsync_keeps_its_table_as_before(keys: Path) -> None:
    text = _conf(keys, 1, "tcp://127.0.0.1:7700", "x").replace('connsync = "x"\n', "")
    peer = parse_config(tomllib.loads(text), file="d1.toml")["cluster"]["peer"][0]
    assert set(peer) == {"node", "publish", "snapshot", "public_key"}


# -- conntrack entries (conntrack = true) over the same relay ------------------------------------

class FakeCt:
    """Stands for ``conntrack.Conntrack``: a dict as the kernel's table."""

    instances: list[FakeCt] = []

    def __init__(self) -> None:
        self.table: dict[Any, Any] = {}
        self.dump_result: list[Any] = []
        self.callback: Any = None
        self.counters: dict[str, int] = {"apply.created": 0}
        self.open = asyncio.Event()
        self.open.set()
        self.closed = False
        FakeCt.instances.append(self)

    def subscribe(self, callback: Any, *, on_overrun: Any = None) -> None:
        self.callback = callback

    async def dump(self) -> list[Any]:
        return list(self.dump_result)

    async def apply_many(self, entries: list[Any]) -> dict[str, int]:
        await self.open.wait()
        created = updated = 0
        for e in entries:
            if e.key() in self.table:
                updated += 1
            else:
                created += 1
            self.table[e.key()] = e
        return {"created": created, "updated": updated, "failed": 0}

    async def delete(self, e: Any) -> bool:
        return self.table.pop(e.key(), None) is not None

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_ct(fakes: Kernel, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    from clusterbus.plugins.connsync import conntrack as real

    m = types.ModuleType("fake_conntrack")
    m.CtEntry, m.CtEvent, m.Conntrack = real.CtEntry, real.CtEvent, FakeCt  # type: ignore[attr-defined]
    FakeCt.instances = []
    monkeypatch.setitem(sys.modules, "clusterbus.plugins.connsync.conntrack", m)
    yield m


def _ct(sport: int, src: str = "10.0.0.9") -> Any:
    from clusterbus.plugins.connsync.conntrack import CtEntry
    return CtEntry(family=2, proto=6, src=src, dst="10.0.0.100", sport=sport, dport=80,
                   rsrc="10.0.1.5", rdst=src, rsport=80, rdport=sport, status=0x0E,
                   timeout=431999, tcp=(3, 7, 7, 0x23, 0x23))


def test_conntrack_entries_are_created_on_the_peer_and_the_barrier_waits(
        fake_ct: types.ModuleType, keys: Path) -> None:
    ep1, ep2 = dead_endpoint(), dead_endpoint()
    d1 = _service(keys, 1, ep1, ep2, "conntrack = true")
    d2 = _service(keys, 2, ep2, ep1, 'conntrack = true\nbarrier_timeout = 0.3\n'
                  'on_barrier_timeout = "veto"')
    ev = fake_ct.CtEvent  # type: ignore[attr-defined]

    async def until(cond: Any) -> None:
        for _ in range(1000):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not reached: {d1.counters} {d2.status()['peers']}")

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(d1.run())
            t2 = tg.create_task(d2.run())
            await until(lambda: d1.running and d2.running)
            k1, k2 = d1.ct, d2.ct
            k1.dump_result = [_ct(1000), _ct(1001, src="127.0.0.1")]
            d1._ct_redump.set()  # as at start: the table as it is
            await until(lambda: d1.counters["conntrack.dumps"] == 2)
            k1.callback(ev(kind="new", entry=_ct(1002)))
            k1.callback(ev(kind="update", entry=_ct(1003, src="127.0.0.1")))
            await until(lambda: len(k2.table) == 2)
            out["created"] = sorted(k[4] for k in k2.table)
            # the entries created on d2 come back as d2's own events: not relayed
            k2.callback(ev(kind="new", entry=_ct(1000)))
            k1.callback(ev(kind="destroy", entry=_ct(1002)))
            await until(lambda: len(k2.table) == 1)
            out["barrier_ok"] = await d2.barrier("VI_1")
            k2.open.clear()  # the kernel does not answer: nothing is committed
            k1.callback(ev(kind="new", entry=_ct(1004)))
            await until(lambda: d2.ct_stats[1]["received"] >= 4)
            out["barrier_stuck"] = await d2.barrier("VI_1")
            k2.open.set()
            await until(lambda: len(k2.table) == 2)
            out["barrier_after"] = await d2.barrier("VI_1")
            out["show"] = d2.show()
            for args in (["--json"], []):
                out[f"cli{args}"] = await asyncio.to_thread(
                    CliRunner().invoke, cli_main, ["connsync", "show", "--conntrack", *args,
                                                   "-c", str(keys / "d2.toml")])
            out["echo_sent"] = d2.counters["conntrack.originated"]
            t1.cancel()
            t2.cancel()
        return out

    (keys / "d2.toml").write_text(_conf(keys, 2, ep2, ep1, "conntrack = true"))
    out = asyncio.run(main())
    assert out["created"] == [1000, 1002]
    assert out["barrier_ok"] is None and out["barrier_after"] is None
    assert out["barrier_stuck"] == "synced connections not committed within 0.3 s"
    assert out["echo_sent"] == 0
    assert d2.counters["conntrack.skipped.peer_owned"] == 1
    assert d1.counters["conntrack.skipped.local"] == 2
    assert d1.counters["conntrack.originated"] == 4  # 1000, 1002, destroy 1002, 1004
    assert d2.last_barrier is not None and d2.last_barrier["passed"]
    peer = d2.status()["peers"]["1"]
    assert (peer["conntrack.received"], peer["conntrack.created"], peer["conntrack.deleted"],
            peer["conntrack.queued"], peer["conntrack.held"]) == (4, 3, 1, 0, 2)
    ct = out["show"]["conntrack"]
    assert ct["total"] == 2 and {r["origin"] for r in ct["rows"]} == {1}
    assert any(r["original"] == "10.0.0.9:1004 -> 10.0.0.100:80"
               and r["reply"] == "10.0.1.5:80 -> 10.0.0.9:1004" for r in ct["rows"])
    assert all(k.closed for k in FakeCt.instances)
    res = out["cli['--json']"]
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert listed["node"] == 2 and listed["total"] == 2 and listed["enabled"]
    res = out["cli[]"]
    assert res.exit_code == 0 and "2 synced conntrack entries" in res.output, res.output
    assert "10.0.0.9:1004 -> 10.0.0.100:80" in res.output


def test_conntrack_wire_form_round_trips_and_refuses_garbage(fake_ct: types.ModuleType) -> None:
    from clusterbus.plugins.connsync import CtOp, entry_from_wire, entry_to_wire
    codec = sys.modules["clusterbus.plugins.connsync.codec"]
    for op in (CtOp(entry=_ct(5)), CtOp(entry=_ct(6), destroy=True)):
        wire = msgpack.unpackb(msgpack.packb(entry_to_wire(op)), strict_map_key=True)
        assert entry_from_wire(wire, codec, fake_ct) == op
    # an IPVS entry travels as the bytes of one sync v1 entry, and stays bytes
    wire = msgpack.unpackb(msgpack.packb(entry_to_wire(_conn(1))), strict_map_key=True)
    assert wire == codec.encode_conn(_conn(1))
    assert codec.decode_entry(entry_from_wire(wire, codec, fake_ct)) == _conn(1)
    # the list form of an older sender is taken too
    assert entry_from_wire(conn_to_wire(_conn(1)), codec, fake_ct) == wire
    good = msgpack.unpackb(msgpack.packb(entry_to_wire(CtOp(entry=_ct(5)))))
    for bad in (["ct", "x", good[2]], ["ct", "u", {}], ["ct", "u", {**good[2], "p": 1}],
                ["ct", "u", {**good[2], "o": [b"\x01", b"\x02", 1, 2]}], ["ct", "u"],
                ["ct", "u", None]):
        with pytest.raises(DecodeError):
            entry_from_wire(bad, codec, fake_ct)


def test_conntrack_entries_are_ignored_where_conntrack_is_off(
        fake_ct: types.ModuleType, keys: Path) -> None:
    from clusterbus.plugins.connsync import CtOp
    from clusterbus.plugins.connsync.relay import Deliver
    d = _service(keys, 2, "tcp://127.0.0.1:7702", "tcp://127.0.0.1:7701")
    d._effect(Deliver(peer=1, entries=(CtOp(entry=_ct(5)),), snapshot=False))
    assert d.counters["conntrack.ignored.disabled"] == 1 and not d._ct_queue
    assert d.status()["peers"]["1"]["conntrack.received"] == 0


def _capture_on_1_until(fakes: Kernel, keys: Path, n: int,
                        done: Callable[[ConnSync], bool]) -> None:
    """Directors 1 and 2 running; ``n`` entries captured on 1 (40 per datagram, as the
    master sends them); return once ``done(director 2)`` (bounded: 10 s)."""
    ep1, ep2 = dead_endpoint(), dead_endpoint()
    d1 = _service(keys, 1, ep1, ep2)
    d2 = _service(keys, 2, ep2, ep1)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(d1.run())
            t2 = tg.create_task(d2.run())
            cap = await _running(fakes, d1, d2)
            for i in range(0, n, 40):
                cap.feed(codec.encode_many([_conn(j) for j in range(i, min(n, i + 40))],
                                           syncid=3)[0])
            for _ in range(1000):
                if done(d2):
                    break
                await asyncio.sleep(0.01)
            t1.cancel()
            t2.cancel()

    asyncio.run(main())


@pytest.mark.parametrize("backup_maxlen", [65507, None])
def test_injected_datagrams_fit_the_backup_daemons_receive_size(
        fakes: Kernel, keys: Path, backup_maxlen: int | None) -> None:
    """The backup daemon's receive size, read once it runs, bounds the injected datagrams:
    raised (as ensure_daemons does), 100 entries go in one datagram; unknown, in datagrams
    of the kernel's default 1,472 bytes (a longer one would be cut and dropped)."""
    fakes.backup_maxlen = backup_maxlen
    _capture_on_1_until(fakes, keys, 100, lambda d2: d2.injected[1] >= 100)
    grams = fakes.injected["d2"]
    got = [c for d in grams for c in codec.decode(d).conns]
    assert sorted(c.cport for c in got) == [1000 + i for i in range(100)]
    if backup_maxlen:
        assert max(len(codec.decode(d).conns) for d in grams) > 40
    else:
        assert max(map(len, grams)) <= 1472


@pytest.mark.parametrize(("capacity", "per_round"), [(212_992, 4), (425_984, 9)])
def test_injection_rounds_fill_a_share_of_the_backup_socket(
        fakes: Kernel, keys: Path, capacity: int, per_round: int) -> None:
    """A backlog is injected in rounds of as many 255-entry datagrams as fill 40 % of the
    backup socket's receive buffer (at least 4); after each the backup socket is looked at
    (for room for the next round, or the commit check after the last) before the next
    goes."""
    fakes.capacity = capacity
    n = 255 * per_round * 3

    def all_injected_and_checked(d2: ConnSync) -> bool:
        return d2.injected[1] >= n and fakes.commit_checks[-1:] == [len(fakes.injected["d2"])]

    _capture_on_1_until(fakes, keys, n, all_injected_and_checked)
    grams = fakes.injected["d2"]
    assert sum(len(codec.decode(d).conns) for d in grams) == n
    assert max(len(codec.decode(d).conns) for d in grams) == 255
    checks = [c for c in fakes.commit_checks if c]
    rounds = [b - a for a, b in zip([0, *checks], checks) if b > a]
    assert sum(rounds) == len(grams)  # every datagram's round was checked
    assert max(rounds) == per_round, (rounds, checks)


def test_a_full_backup_queue_holds_the_next_round_back(fakes: Kernel, keys: Path) -> None:
    """With a backlog, the next round goes once the backup socket has room for it (its
    queue at most 40 % of the buffer), not before: a look that finds it fuller is followed
    by another look, with nothing injected in between; then everything is injected."""
    n = 255 * 4 * 6
    limit = fakes.capacity * 0.4
    fakes.rx_queue = [fakes.capacity // 2, fakes.capacity // 2, int(limit) + 1]

    def all_injected_and_checked(d2: ConnSync) -> bool:
        return d2.injected[1] >= n and fakes.commit_checks[-1:] == [len(fakes.injected["d2"])]

    _capture_on_1_until(fakes, keys, n, all_injected_and_checked)
    assert sum(len(codec.decode(d).conns) for d in fakes.injected["d2"]) == n
    assert fakes.rx_queue == [], fakes.room_looks  # the full queue was seen, three times
    looks = fakes.room_looks
    for (injected, rx), (after, _) in zip(looks, looks[1:]):
        if rx > limit:
            assert after == injected, looks  # no round went into a full queue


@pytest.mark.parametrize(("instance_extra", "warned"), [
    ("", True), ("prepare_timeout = 1.0\n", False)])
def test_a_veto_the_takeover_would_not_wait_for_is_warned_about(
        keys: Path, caplog: pytest.LogCaptureFixture, instance_extra: str, warned: bool) -> None:
    """With ``on_barrier_timeout = "veto"``, an instance whose takeover waits less than
    ``barrier_timeout`` (advert_interval 0.1 s, barrier 0.5 s) is named at configure time;
    its ``prepare_timeout`` above the barrier silences it."""
    text = _conf(keys, 1, "tcp://127.0.0.1:7700", "tcp://127.0.0.1:7701",
                 'barrier_timeout = 0.5\non_barrier_timeout = "veto"') + f"""
[[vrrp.instance]]
name = "VI_9"
interface = "lo"
vrid = 9
advert_interval = 0.1
virtual_ipaddress = ["10.79.0.100/24"]
{instance_extra}"""
    cfg = parse_config(tomllib.loads(text), file="d1.toml")
    engine = Engine(origin=1, plugins=PluginHost())
    with caplog.at_level(logging.WARNING, logger="clusterbus.plugins.connsync"):
        connsync.plugin.clusterbus_configure(cfg, cfg.plugin_sections["connsync"],
                                             engine.cluster)
    said = [r.getMessage() for r in caplog.records if "VI_9" in r.getMessage()]
    assert bool(said) == warned, said
    connsync.plugin.clusterbus_configure(cfg, None, engine.cluster)


def test_kernel_maxlen_is_fitted_to_the_interfaces_mtu() -> None:
    """The master's datagrams must fit one frame: kernel_maxlen is lowered to the MTU less
    the IPv4 and UDP headers; the MTU is asked of the kernel (``lo``, read beside sysfs)."""
    assert connsync.fitting_maxlen(1, 1500) == 1
    assert connsync.fitting_maxlen(9000, 1500) == 1472
    assert connsync.fitting_maxlen(9000, None) == 9000  # unknown: as configured
    mtu = real_kernel.interface_mtu("lo")
    assert mtu == int(Path("/sys/class/net/lo/mtu").read_text())
    assert real_kernel.interface_mtu("no-such-if0") is None
    assert connsync.fitting_maxlen(65507, mtu) == min(65507, mtu - 28)


def test_the_sync_ports_are_read_once_per_start(fakes: Kernel, keys: Path) -> None:
    """``net.ipv4.vs.sync_ports`` is read once when the daemons run (a sysctl read costs
    system calls, expensive in a VM) and passed to every look at the backup socket."""
    n = 255 * 4 * 3
    fakes.rx_queue = [fakes.capacity // 2]

    def all_injected_and_checked(d2: ConnSync) -> bool:
        return d2.injected[1] >= n and fakes.commit_checks[-1:] == [len(fakes.injected["d2"])]

    _capture_on_1_until(fakes, keys, n, all_injected_and_checked)
    assert fakes.sync_ports_reads == 2  # one per director
    assert fakes.room_looks and fakes.ports_given
    assert set(fakes.ports_given) == {range(8848, 8849)}


def test_more_entries_cut_the_wait_after_the_last_round_short(
        fakes: Kernel, keys: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After its last round the injection waits for the backup daemon to apply it (its
    queue seen empty twice, SETTLE_S apart), but entries arriving meanwhile end that wait:
    they go at once. The backup socket's drops seen on the way are counted and warned
    about."""
    d1 = _service(keys, 1, dead_endpoint(), dead_endpoint())

    class Busy:  # a backup daemon that still has datagrams queued, and dropped some
        SETTLE_S = real_kernel.SETTLE_S
        SYNC_GROUP4 = real_kernel.SYNC_GROUP4
        committed = staticmethod(real_kernel.committed)
        looks = 0

        def backup_queue(self, ports: range | None = None, group: str | None = None) -> Any:
            Busy.looks += 1
            return real_kernel.BackupQueue(sockets=1, rx_queue=4096, drops=2 + Busy.looks)

    d1.kernel = Busy()

    async def main() -> bool:
        wait = asyncio.create_task(d1._drained(timeout=600))
        for _ in range(1000):  # bounded: until it has looked a few times
            await asyncio.sleep(0.001)
            if Busy.looks >= 3:
                break
        done_before = wait.done()
        d1._wake.set()  # a batch arrived
        await asyncio.wait_for(wait, 30)
        return done_before

    with caplog.at_level(logging.WARNING, logger="clusterbus.plugins.connsync"):
        assert asyncio.run(main()) is False
    assert d1.counters["inject.dropped.kernel"] == 2 + Busy.looks
    assert any("dropped" in r.getMessage() and "backup" in r.getMessage()
               for r in caplog.records)


def test_a_stream_of_datagrams_is_read_on_a_timer_not_per_datagram(
        fakes: Kernel, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a read that found datagrams the capture is read again CAPTURE_LINGER later,
    not at each datagram's wake-up; a read that finds none hands it back to the loop's
    readiness. Nothing is lost either way. (A long linger here: the test looks between.)"""
    monkeypatch.setattr(connsync, "CAPTURE_LINGER", 0.2)
    d1 = _service(keys, 1, dead_endpoint(), dead_endpoint())
    originated: list[bytes] = []
    d1.link.originate = lambda conns, now=None: originated.extend(conns)  # type: ignore[method-assign]
    cap = fakes.module().Capture("d1")  # type: ignore[attr-defined]
    d1._capture = cap

    async def main() -> list[tuple[bool, bool]]:
        loop = asyncio.get_running_loop()
        watched = lambda: cap.fileno() in {k.fd for k in loop._selector.get_map().values()}  # type: ignore[attr-defined]  # noqa: E731
        seen: list[tuple[bool, bool]] = []
        loop.add_reader(cap.fileno(), d1._capture_ready)
        try:
            for burst in range(3):
                cap.feed(codec.encode_many([_conn(burst * 10 + j) for j in range(10)],
                                           syncid=3)[0])
                for _ in range(3000):  # bounded: until read
                    await asyncio.sleep(0.001)
                    if len(originated) >= 10 * (burst + 1):
                        break
                seen.append((watched(), d1._capture_timer is not None))
            for _ in range(3000):  # bounded: until a timed read found nothing
                await asyncio.sleep(0.001)
                if d1._capture_timer is None:
                    break
            seen.append((watched(), d1._capture_timer is not None))
        finally:
            loop.remove_reader(cap.fileno())
            if d1._capture_timer is not None:
                d1._capture_timer.cancel()
        return seen

    seen = asyncio.run(main())
    assert seen[:3] == [(False, True)] * 3  # read on readiness, then on the timer
    assert seen[-1] == (True, False)        # quiet: back to readiness
    assert len(originated) == 30
    cap.close()


def test_a_failing_timed_capture_read_goes_back_to_readiness(
        fakes: Kernel, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error in a timed read is the loop's to log; the capture is then
    watched for readiness again, not left with neither reader nor timer."""
    d1 = _service(keys, 1, dead_endpoint(), dead_endpoint())
    cap = fakes.module().Capture("d1")  # type: ignore[attr-defined]
    d1._capture = cap

    def boom() -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(d1, "_on_capture", boom)

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        try:
            with pytest.raises(RuntimeError):
                d1._capture_due()
            return cap.fileno() in {k.fd for k in loop._selector.get_map().values()}  # type: ignore[attr-defined]
        finally:
            loop.remove_reader(cap.fileno())

    assert asyncio.run(main()) and d1._capture_timer is None
    cap.close()


# -- reload -------------------------------------------------------------------------------------

def _reload_setup(keys: Path, extra: str = "") -> tuple[PluginHost, Engine, str]:
    host = PluginHost()
    host.register(connsync.plugin, "connsync")
    engine = Engine(origin=1, plugins=host)
    text = _conf(keys, 1, "tcp://127.0.0.1:7700", "tcp://127.0.0.1:7701", extra)
    config = parse_config(tomllib.loads(text), file="d1.toml")
    host.configure(config, engine.cluster)
    return host, engine, text


@contextlib.asynccontextmanager
async def _serving(fakes: Kernel, engine: Engine) -> AsyncIterator[ConnSync]:
    """The cluster's conn-sync service running (its capture open) until the block ends."""
    (run,) = connsync.plugin.clusterbus_services(engine.cluster) or []
    task = asyncio.create_task(run())
    try:
        svc = connsync.plugin.service(engine.cluster)
        assert svc is not None
        await _running(fakes, svc)
        yield svc
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _reloaded(host: PluginHost, engine: Engine, text: str) -> dict[str, str | None]:
    return host.reload(parse_config(tomllib.loads(text), file="d1.toml"), engine.cluster)


def test_reload_applies_the_barrier_and_the_kernels_knobs_at_run_time(
        fakes: Kernel, keys: Path) -> None:
    """barrier_timeout, on_barrier_timeout and sync_threshold change on a running service:
    the barrier reads the new values, the kernel's knobs are set again; nothing needs a
    restart."""
    host, engine, text = _reload_setup(keys)

    async def go() -> None:
        async with _serving(fakes, engine) as svc:
            assert fakes.knobs == [{"kernel_maxlen": 1, "sync_threshold": (2, 50)}]
            new = text.replace('syncid = 3', 'syncid = 3\nbarrier_timeout = 0.8\n'
                               'on_barrier_timeout = "veto"\nsync_threshold = [3, 60]\n'
                               'kernel_maxlen = 200')
            assert _reloaded(host, engine, new) == {"connsync": None}
            for _ in range(200):  # the knobs are set in a thread
                if len(fakes.knobs) == 2:
                    break
                await asyncio.sleep(0.01)
            assert fakes.knobs[1] == {"kernel_maxlen": 200, "sync_threshold": (3, 60)}
            st = connsync.plugin.clusterbus_status(engine.cluster)
            assert st is not None
            assert (st["barrier_timeout"], st["on_barrier_timeout"], st["sync_threshold"],
                    st["kernel_maxlen"], st["restart_needed"]) == (0.8, "veto", [3, 60], 200, {})
            assert svc.cfg.barrier_timeout == 0.8  # what the barrier waits for now
            assert _reloaded(host, engine, new) == {"connsync": None}
            await asyncio.sleep(0.05)
            assert len(fakes.knobs) == 2  # unchanged: not set again

    asyncio.run(go())


def test_reload_keeps_what_needs_a_restart_and_says_so(
        fakes: Kernel, keys: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A new interface, listen endpoint, syncid or conntrack keeps its running value, is
    warned about and listed in the status's restart_needed (the reload's verdict reads
    it); the live keys beside them still apply; a bad section changes nothing."""
    host, engine, text = _reload_setup(keys)

    async def go() -> None:
        async with _serving(fakes, engine) as svc:
            new = (text.replace('interface = "d1"', 'interface = "d9"')
                       .replace("syncid = 3", "syncid = 4\nbarrier_timeout = 0.9\nconntrack = true"))
            assert _reloaded(host, engine, new) == {"connsync": None}
            st = connsync.plugin.clusterbus_status(engine.cluster)
            assert st is not None
            assert st["restart_needed"] == {"interface": "'d1' -> 'd9'", "syncid": "3 -> 4",
                                            "conntrack": "False -> True"}
            assert (svc.cfg.interface, svc.cfg.syncid, svc.cfg.conntrack,
                    svc.cfg.barrier_timeout) == ("d1", 3, False, 0.9)
            assert "connsync: interface changed ('d1' -> 'd9'): restart the daemon" in caplog.text
            bad = text.replace("syncid = 3", "syncid = 3\nbarrier_timeout = -2")
            result = _reloaded(host, engine, bad)["connsync"]
            assert result is not None and "connsync.barrier_timeout" in result
            assert svc.cfg.barrier_timeout == 0.9
            # the file as it started: nothing left to restart for
            assert _reloaded(host, engine, text) == {"connsync": None}
            st = connsync.plugin.clusterbus_status(engine.cluster)
            assert st is not None and st["restart_needed"] == {}
            assert svc.cfg.barrier_timeout == 0.5

    asyncio.run(go())


def test_reload_of_a_kernel_maxlen_beyond_the_capture_frames_needs_a_restart(
        fakes: Kernel, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a jumbo-frame interface a larger kernel_maxlen would send datagrams the
    capture's ring frames (sized at start) cannot hold: it waits for a restart."""
    monkeypatch.setattr(sys.modules["clusterbus.plugins.connsync.kernel"], "interface_mtu",
                        lambda name: 9000)
    host, engine, text = _reload_setup(keys)

    async def go() -> None:
        async with _serving(fakes, engine) as svc:
            fits = text.replace("syncid = 3", "syncid = 3\nkernel_maxlen = 1400")
            assert _reloaded(host, engine, fits) == {"connsync": None}
            assert svc.kernel_maxlen == 1400 and svc.restart_needed == {}
            big = text.replace("syncid = 3", "syncid = 3\nkernel_maxlen = 8000")
            assert _reloaded(host, engine, big) == {"connsync": None}
            assert svc.kernel_maxlen == 1400
            assert svc.restart_needed == {
                "kernel_maxlen": "1400 -> 8000 (beyond the capture's 1500-byte frames)"}

    asyncio.run(go())


def test_adding_or_removing_the_section_by_reload_needs_a_restart(keys: Path) -> None:
    """The daemon's reload verdict names the section; the plugin keeps what it started
    with; a bad new section is refused with its key."""
    from clusterbus.config import load_config
    from clusterbus.daemon import Daemon

    with_section = _conf(keys, 1, "tcp://127.0.0.1:7700", "tcp://127.0.0.1:7701")
    without = with_section.split("[connsync]")[0]
    conf = keys / "d1.toml"

    def daemon(text: str) -> Daemon:
        conf.write_text(text)
        d = Daemon(load_config(str(conf)), load_entrypoints=False)
        d.plugins.register(connsync.plugin, "connsync")
        d.plugins.configure(d.config, d.engine.cluster)
        return d

    d = daemon(with_section)
    conf.write_text(without)
    assert d.reload()
    assert d.status()["reload"]["restart_needed"] == ["connsync: removed"]
    d = daemon(without)
    assert connsync.plugin.clusterbus_status(d.engine.cluster) is None
    conf.write_text(with_section)
    assert d.reload()
    assert d.status()["reload"]["restart_needed"] == ["connsync: added"]
    assert connsync.plugin.clusterbus_services(d.engine.cluster) is None  # not started
    conf.write_text(with_section.replace("syncid = 3", "syncid = 3\ncolour = 1"))
    assert d.reload()
    result = d.status()["reload"]["failed"].get("connsync")
    assert result is not None and "connsync.colour" in result


def test_reload_of_a_kernel_maxlen_beyond_the_mtu_is_fitted_and_warned_about(
        fakes: Kernel, keys: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """As at start: a reloaded kernel_maxlen above the interface's MTU less 28 is lowered
    to it (a larger datagram would leave in fragments), with a WARNING."""
    monkeypatch.setattr(sys.modules["clusterbus.plugins.connsync.kernel"], "interface_mtu",
                        lambda name: 1500)
    host, engine, text = _reload_setup(keys)

    async def go() -> None:
        async with _serving(fakes, engine) as svc:
            big = text.replace("syncid = 3", "syncid = 3\nkernel_maxlen = 5000")
            assert _reloaded(host, engine, big) == {"connsync": None}
            assert svc.kernel_maxlen == 1472 and svc.restart_needed == {}
            assert "kernel_maxlen 5000 does not fit one frame of d1 (MTU 1500): the master " \
                "daemon gets 1472" in caplog.text

    asyncio.run(go())
