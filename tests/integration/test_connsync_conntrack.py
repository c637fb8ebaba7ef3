"""conn-sync's netfilter side (clusterbus.plugins.connsync.conntrack) on the host kernel's
real conntrack, in two network namespaces this test creates.

Namespace A carries a real TCP connection (over its loopback); its ctnetlink events
arrive through the event loop and its dump holds the connection. The dumped entry crosses
to namespace B as msgpack (``to_wire``), is created there through ctnetlink, and B's table
(``conntrack -L`` when installed, and a dump) shows it. A fresh namespace tracks nothing
until a ruleset asks for conntrack, so A gets a one-rule nftables table (``nft`` needed).
The pytest process never changes namespace: each side runs as a script inside its own.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import msgpack
import pytest
from netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("nft") is None,
                       reason="nft is needed to switch conntrack on in a fresh namespace"),
]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
if not Path(PYTHON).exists():
    PYTHON = sys.executable

SIDE_A = r'''
import asyncio, json, socket, sys, msgpack
from clusterbus.plugins.connsync.conntrack import Conntrack

PORT = int(sys.argv[1])

async def main():
    ct = Conntrack()
    seen = []
    established, destroyed = asyncio.Event(), asyncio.Event()
    def on_event(ev):
        if ev.entry.dport == PORT:
            seen.append(ev)
            if ev.entry.tcp and ev.entry.tcp[0] == 3:      # TCP_CONNTRACK_ESTABLISHED
                established.set()
            if ev.kind == "destroy":
                destroyed.set()
    ct.subscribe(on_event)
    srv = socket.socket(); srv.bind(("127.0.0.1", PORT)); srv.listen()
    cli = socket.create_connection(("127.0.0.1", PORT)); acc, _ = srv.accept()
    cli.sendall(b"x"); acc.recv(1); acc.sendall(b"y"); cli.recv(1)
    try:
        await asyncio.wait_for(established.wait(), 10)
    except TimeoutError:
        pass
    dump = [e for e in await ct.dump() if e.dport == PORT]
    deleted = [await ct.delete(e) for e in dump]
    deleted_again = [await ct.delete(e) for e in dump]
    try:
        await asyncio.wait_for(destroyed.wait(), 10)
    except TimeoutError:
        pass
    print(json.dumps({
        "client_port": cli.getsockname()[1],
        "deleted": deleted, "deleted_again": deleted_again,
        "events": [[ev.kind, ev.entry.sport, ev.entry.tcp] for ev in seen],
        "dump": [msgpack.packb(e.to_wire()).hex() for e in dump],
        "counters": ct.counters}))
    ct.close()
    for s in (cli, acc, srv):
        s.close()

asyncio.run(main())
'''

SIDE_B = r'''
import asyncio, json, sys, msgpack
from clusterbus.plugins.connsync.conntrack import Conntrack, CtEntry

async def main():
    ct = Conntrack()
    entries = [CtEntry.from_wire(msgpack.unpackb(bytes.fromhex(h), use_list=False)) for h in sys.argv[1:]]
    first = [await ct.apply(e) for e in entries]
    again = [await ct.apply(e, timeout=777) for e in entries]
    keys = {e.key() for e in entries}
    dump = [e for e in await ct.dump() if e.key() in keys]
    print(json.dumps({"first": first, "again": again,
                      "dump": [msgpack.packb(e.to_wire()).hex() for e in dump],
                      "counters": ct.counters}))

asyncio.run(main())
'''


def _entry(hexed: str):
    from clusterbus.plugins.connsync.conntrack import CtEntry

    return CtEntry.from_wire(msgpack.unpackb(bytes.fromhex(hexed), use_list=False))


def _run(t: Topology, ns: str, script: str, *args: str) -> dict:
    p = t.exec(ns, [PYTHON, "-c", script, *args], timeout=60)
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_dump_events_and_create_on_a_peer() -> None:
    with Topology() as t:
        a, b = t.netns("cta"), t.netns("ctb")
        t.exec(a, ["nft", "add table inet cb; add chain inet cb in { type filter hook input priority 0; };"
                          " add rule inet cb in ct state established counter"])
        out = _run(t, a, SIDE_A, "5555")
        cport = out["client_port"]
        # events came through the event loop: a "new" one, then one carrying ESTABLISHED
        kinds = [k for k, sport, _ in out["events"] if sport == cport]
        assert "new" in kinds, out
        assert any(tcp and tcp[0] == 3 for _, sport, tcp in out["events"] if sport == cport), out
        # deleting it through ctnetlink gives a destroy event; a second delete finds nothing
        assert out["deleted"] and all(out["deleted"]) and not any(out["deleted_again"]), out
        assert "destroy" in kinds, out
        # the dump held the real connection
        dumped = [_entry(h) for h in out["dump"]]
        ours = [e for e in dumped if e.sport == cport]
        assert len(ours) == 1, out
        e = ours[0]
        assert (e.src, e.dst, e.dport, e.rsrc, e.rdst, e.rsport, e.rdport) == (
            "127.0.0.1", "127.0.0.1", 5555, "127.0.0.1", "127.0.0.1", 5555, cport)
        assert e.tcp is not None and e.tcp[0] == 3 and e.timeout > 0

        # B has nothing of it, then gets it through ctnetlink from A's dump
        if shutil.which("conntrack"):
            before = t.exec(b, ["conntrack", "-L"], check=False).stdout
            assert f"sport={cport}" not in before
        res = _run(t, b, SIDE_B, *[h for h in out["dump"] if _entry(h).sport == cport])
        assert res["first"] == ["created"] and res["again"] == ["updated"], res
        got = [_entry(h) for h in res["dump"]]
        assert len(got) == 1, res
        g = got[0]
        assert g.key() == e.key()
        assert (g.rsrc, g.rdst, g.rsport, g.rdport) == (e.rsrc, e.rdst, e.rsport, e.rdport)
        assert g.tcp is not None and g.tcp[0] == 3                   # ESTABLISHED, as in A
        assert 700 < g.timeout <= 777                                # the update took effect
        if shutil.which("conntrack"):
            listed = t.exec(b, ["conntrack", "-L"]).stdout
            line = [ln for ln in listed.splitlines() if f"sport={cport} dport=5555" in ln]
            assert len(line) == 1 and "ESTABLISHED" in line[0], listed


def test_created_nat_and_ipv6_entries_keep_their_tuples() -> None:
    """Hand-built entries, as a peer would send them: a DNAT one (reply tuple translated)
    and an IPv6 UDP one."""
    from clusterbus.plugins.connsync.conntrack import IPS_ASSURED, IPS_DST_NAT, IPS_SEEN_REPLY, CtEntry

    dnat = CtEntry(family=2, proto=6, src="10.61.0.7", dst="10.62.0.100", sport=40001, dport=80,
                   rsrc="10.63.0.3", rdst="10.61.0.7", rsport=8080, rdport=40001,
                   status=IPS_SEEN_REPLY | IPS_ASSURED | IPS_DST_NAT, timeout=300,
                   tcp=(3, 7, 7, 0x23, 0x23))
    udp6 = CtEntry(family=10, proto=17, src="2001:db8::7", dst="2001:db8::100", sport=5353,
                   dport=53, rsrc="2001:db8::100", rdst="2001:db8::7", rsport=53, rdport=5353,
                   status=IPS_SEEN_REPLY, timeout=120, mark=42)
    hexed = [msgpack.packb(x.to_wire()).hex() for x in (dnat, udp6)]
    with Topology() as t:
        b = t.netns("ctn")
        res = _run(t, b, SIDE_B, *hexed)
        assert res["first"] == ["created", "created"], res
        got = {g.key(): g for g in map(_entry, res["dump"])}
        assert set(got) == {dnat.key(), udp6.key()}, res
        g = got[dnat.key()]
        assert (g.rsrc, g.rdst, g.rsport, g.rdport) == ("10.63.0.3", "10.61.0.7", 8080, 40001)
        assert g.status & IPS_DST_NAT
        g6 = got[udp6.key()]
        assert (g6.rsrc, g6.rdst, g6.mark) == ("2001:db8::100", "2001:db8::7", 42)


BULK = r'''
import asyncio, json, sys
from clusterbus.plugins.connsync.conntrack import Conntrack, CtEntry

async def main():
    n = int(sys.argv[1])
    ct = Conntrack()
    es = [CtEntry(family=2, proto=6, src=f"10.64.{i >> 8 & 255}.{i & 255}", dst="10.65.0.1", sport=1024 + i,
                  dport=443, rsrc="10.65.0.1", rdst=f"10.64.{i >> 8 & 255}.{i & 255}", rsport=443,
                  rdport=1024 + i, status=14, timeout=600, tcp=(3, 7, 7, 0x23, 0x23)) for i in range(n)]
    first = await ct.apply_many(es)
    again = await ct.apply_many(es[: n // 2], timeout=900)
    dump = await ct.dump()
    mine = [e for e in dump if e.dst == "10.65.0.1"]
    print(json.dumps({"first": first, "again": again, "dumped": len(mine),
                      "long": sum(1 for e in mine if e.timeout > 600), "counters": ct.counters}))
    ct.close()

asyncio.run(main())
'''


def test_bulk_apply_and_dump() -> None:
    """A peer's table in one go: 3,000 entries created pipelined, half of them updated."""
    with Topology() as t:
        b = t.netns("ctk")
        res = _run(t, b, BULK, "3000")
        assert res["first"] == {"created": 3000, "updated": 0, "failed": 0}, res
        assert res["again"] == {"created": 0, "updated": 1500, "failed": 0}, res
        assert res["dumped"] == 3000 and res["long"] == 1500, res
        if shutil.which("conntrack"):
            listed = t.exec(b, ["conntrack", "-L"]).stdout
            assert sum(1 for ln in listed.splitlines() if "dst=10.65.0.1 " in ln) == 3000


# -- the plugin end to end: A's table reaches B's kernel over conn-sync --------------------------

DAEMON = r'''
import asyncio, json, os, socket, sys, time, tomllib, types
from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.pluginhost import PluginHost
from clusterbus.plugins.connsync import ConnSync, parse

path, out, stop, role = sys.argv[1:5]
config = parse_config(tomllib.loads(open(path).read()), file=path)
cluster = Engine(origin=config["daemon"]["node"], plugins=PluginHost()).cluster
svc = ConnSync(parse(config, config.plugin_sections["connsync"]), config, cluster)

# The IPVS side (capture, injection) is the UML tests' subject: stood in for here.
kernel = types.ModuleType("no_ipvs")
class Capture:
    def __init__(self, interface, **kw): self.r, self.w = os.pipe()
    def open(self): pass
    def fileno(self): return self.r
    def read(self): return []
    def close(self): os.close(self.r); os.close(self.w)
class Injector:
    def __init__(self, interface): pass
    def open(self): pass
    def send(self, d): pass
    def close(self): pass
async def committed(*, port=8848, timeout, ports=None, **kw): return True
kernel.Capture, kernel.Injector, kernel.committed = Capture, Injector, committed
kernel.set_sync_knobs = lambda **kw: None
kernel.ensure_daemons = lambda interface, **kw: []
kernel.backup_maxlen = lambda: None
from clusterbus.plugins.connsync import kernel as real_kernel  # these need no IPVS
kernel.backup_queue, kernel.backup_capacity = real_kernel.backup_queue, real_kernel.backup_capacity
kernel.datagram_truesize = real_kernel.datagram_truesize
kernel.sync_ports, kernel.SETTLE_S = real_kernel.sync_ports, real_kernel.SETTLE_S
kernel.interface_mtu, kernel.SYNC_GROUP4 = real_kernel.interface_mtu, real_kernel.SYNC_GROUP4
svc.kernel = kernel

def write(doc):
    with open(out + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(out + ".tmp", out)

async def side_a():
    peer = svc.peer_nodes[0]
    for _ in range(400):                      # until B was heard from
        if svc.relay.status(svc.clock())[peer]["since_heard_s"] is not None:
            break
        await asyncio.sleep(0.05)
    srv = socket.socket(); srv.bind(("10.71.0.1", 5555)); srv.listen()
    conns = []
    def connect():
        cli = socket.create_connection(("10.71.0.1", 5555)); acc, _ = srv.accept()
        cli.sendall(b"x"); acc.recv(1); acc.sendall(b"y"); cli.recv(1)
        conns.extend((cli, acc))
        return cli.getsockname()[1]
    ports = [connect()]
    await asyncio.sleep(0.5)
    # garbage from an authorized peer (our own CURVE key): a batch B cannot decode (a seq
    # ahead of the stream: a stale or duplicate seq is dropped undecoded)
    svc.channel.send(peer, ["B", svc.relay.run, 1, 1_000_000, 0,
                            [["ct", "u", {"f": 2, "p": 6}], ["ct", "x", {}], "junk"]])
    svc.channel.send(peer, ["B", svc.relay.run, 1, 1_000_001, 0, [["ct", "u", {"f": 99, "p": 6,
                            "o": [b"", b"", 1, 2], "r": [b"", b"", 2, 1], "s": 0, "t": 1}]]])
    await asyncio.sleep(0.5)
    ports.append(connect())                   # still synced after the garbage
    while not os.path.exists(stop):
        write({"ports": ports, "status": svc.status()})
        await asyncio.sleep(0.2)
    for s in conns + [srv]:
        s.close()

async def side_b():
    while not os.path.exists(stop):
        if svc.ct is not None:
            dump = [[e.src, e.dst, e.sport, e.dport, e.tcp[0] if e.tcp else None]
                    for e in await svc.ct.dump() if e.dport == 5555]
            write({"dump": dump, "status": svc.status(), "show": svc.show()["conntrack"]})
        await asyncio.sleep(0.2)

async def main():
    task = asyncio.create_task(svc.run())
    try:
        async with asyncio.timeout(90):
            await (side_a() if role == "a" else side_b())
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

asyncio.run(main())
'''


def _daemon_conf(tmp: Path, node: int) -> str:
    peer = 2 if node == 1 else 1
    return f"""
[daemon]
node = {node}
[bus]
certificate = "{tmp}/d{node}.key_secret"
[[cluster.peer]]
node = {peer}
publish = "tcp://10.71.0.{peer}:17001"
snapshot = "tcp://10.71.0.{peer}:17002"
public_key = "{tmp}/d{peer}.key"
connsync = "tcp://10.71.0.{peer}:7801"
[connsync]
interface = "eth0"
listen = "tcp://10.71.0.{node}:7801"
conntrack = true
"""


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_a_connection_on_a_reaches_b_through_connsync(tmp_path: Path) -> None:
    """Two plugin instances with real CURVE channels between two namespaces: a real TCP
    connection tracked in A is created in B's conntrack table (ESTABLISHED), garbage
    batches from A change only B's counters, and a later connection still crosses."""
    import subprocess

    import zmq.auth

    for n in ("d1", "d2"):
        zmq.auth.create_certificates(tmp_path, n)
    for node in (1, 2):
        (tmp_path / f"d{node}.toml").write_text(_daemon_conf(tmp_path, node))
    stop = tmp_path / "stop"
    with Topology() as t:
        a, b = t.host("csa", "10.71.0.1/24"), t.host("csb", "10.71.0.2/24")
        t.exec(a, ["nft", "add table inet cb; add chain inet cb in { type filter hook input "
                          "priority 0; }; add rule inet cb in ct state established counter"])
        procs = [subprocess.Popen([*Topology.prefix(ns), PYTHON, "-c", DAEMON,
                                   str(tmp_path / f"d{node}.toml"), str(tmp_path / f"{role}.json"),
                                   str(stop), role], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for ns, node, role in ((b, 2, "b"), (a, 1, "a"))]
        try:
            got: dict | None = None
            ports: list[int] = []
            for _ in range(300):  # bounded: 60 s
                sa, got = _read(tmp_path / "a.json"), _read(tmp_path / "b.json")
                ports = sa["ports"] if sa else []
                # both connections in B's table, and B not in the middle of applying A's
                # next updates (A's own links keep changing state, so a sample can catch
                # entries queued; the assertion below is about a settled table)
                if (got and len(ports) == 2 and {p for _, _, p, _, _ in got["dump"]} >= set(ports)
                        and got["status"]["peers"]["1"]["conntrack.queued"] == 0):
                    break
                if any(p.poll() is not None for p in procs):
                    break
                time.sleep(0.2)
            if shutil.which("conntrack"):
                listed = t.exec(b, ["conntrack", "-L"], check=False).stdout
        finally:
            stop.touch()
            outs = [p.communicate(timeout=30) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert got is not None and len(ports) == 2, (got, outs)
        mine = {p: row for row in got["dump"] for p in [row[2]] if p in ports}
        assert set(mine) == set(ports), (got["dump"], ports, outs)
        for src, dst, _, dport, state in mine.values():
            assert (src, dst, dport, state) == ("10.71.0.1", "10.71.0.1", 5555, 3)  # ESTABLISHED
        peer = got["status"]["peers"]["1"]
        assert peer["conntrack.created"] + peer["conntrack.updated"] >= 2, peer
        assert peer["conntrack.held"] >= 2 and peer["conntrack.queued"] == 0, peer
        # the garbage: counted as undecodable entries, nothing else changed
        assert got["status"]["counters"]["channel.dropped.bad_entry"] >= 2, got["status"]
        assert any(r["original"] == f"10.71.0.1:{ports[0]} -> 10.71.0.1:5555"
                   for r in got["show"]["rows"]), got["show"]
        if shutil.which("conntrack"):
            assert any(f"sport={ports[0]} dport=5555" in ln for ln in listed.splitlines()), listed
