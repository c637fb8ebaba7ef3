"""conn-sync's kernel side against real IPVS in UML: capture on A, inject on B.

Topology (every namespace made here; the test process first moves into its own fresh
namespace, which holds the bridge):

    br0: client csC 10.79.0.20, director csA 10.79.0.1, director csB 10.79.0.2,
         DR server csR 10.79.0.10 (VIP on lo)
    csA 10.79.2.1 --veth-- csN 10.79.2.10 (NAT server, gateway A)

Director A (csA) holds two persistent virtual services, DR (10.79.9.100:80 -> R) and NAT
(10.79.9.101:80 -> N); the client reaches them through A and R answers it directly. Directors A and B run the kernel's
master and backup sync daemons together on a dummy ``sync0`` (the kernel's own multicast
never leaves a director, so B can only learn A's connections through injection). With the
clusterbus knobs (``sync_threshold`` 2 50, master ``sync_maxlen`` 1) the Capture on A sees
A's master datagrams for real TCP connections; injecting them on B makes the entries
appear in B's ``/proc/net/ip_vs_conn``; a captured datagram that is not injected never
appears there (the test can fail).
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from clusterbus.errors import ConfigError
from clusterbus.plugins.connsync import kernel

CLONE_NEWNET = 0x40000000
VIP_DR, VIP_NAT = "10.79.9.100", "10.79.9.101"
RS, NAT_RS = "10.79.0.10", "10.79.2.10"
CLIENT = "10.79.0.20"
SYNCID = 7
SYNC_ADDR = {"csA": "10.79.200.1", "csB": "10.79.200.2"}

SERVER = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(64)
def serve(c):
    with c:
        while (d := c.recv(4096)):
            c.sendall(d)
print("ready", flush=True)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

#: Connects to each VIP given, does 3 round trips, prints the local ports, holds the
#: connections open until stdin closes.
CLIENT_CODE = """
import json, socket, sys, time
conns = []
for vip in sys.argv[1:]:
    s = socket.create_connection((vip, 80), timeout=10)
    for i in range(3):
        s.sendall(b"ping"); assert s.recv(16) == b"ping"; time.sleep(0.03)
    conns.append(s)
print(json.dumps([s.getsockname()[1] for s in conns]), flush=True)
sys.stdin.read()
"""

_libc = ctypes.CDLL(None, use_errno=True)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def nsx(ns: str, *cmd: str) -> str:
    return sh("ip", "netns", "exec", ns, *cmd)


@contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the block in network namespace ``name`` (this thread), then come back."""
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        if _libc.setns(orig, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(target)
        os.close(orig)


@pytest.fixture
def lab() -> Iterator[dict[str, Any]]:
    assert _libc.unshare(CLONE_NEWNET) == 0  # this process: the switch namespace
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "link", "set", "br0", "up")
    made: list[str] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        for ns in ("csA", "csB", "csR", "csC", "csN"):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            nsx(ns, "ip", "link", "set", "lo", "up")
        for ns, addr in (("csA", "10.79.0.1"), ("csB", "10.79.0.2"), ("csR", RS),
                         ("csC", CLIENT)):
            sh("ip", "link", "add", f"v{ns}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "link", "set", f"v{ns}", "master", "br0", "up")
            nsx(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            nsx(ns, "ip", "link", "set", "eth0", "up")
        # the client is on the bridge and reaches the VIPs through A; R answers it directly
        # (DR); the NAT server N sits behind A, which it uses as its gateway
        nsx("csC", "ip", "route", "add", "10.79.9.0/24", "via", "10.79.0.1")
        nsx("csA", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "link", "add", "nA", "netns", "csA", "type", "veth", "peer", "name", "eth0",
           "netns", "csN")
        nsx("csA", "ip", "addr", "add", "10.79.2.1/24", "dev", "nA")
        nsx("csA", "ip", "link", "set", "nA", "up")
        nsx("csN", "ip", "addr", "add", f"{NAT_RS}/24", "dev", "eth0")
        nsx("csN", "ip", "link", "set", "eth0", "up")
        nsx("csN", "ip", "route", "add", "default", "via", "10.79.2.1")
        nsx("csR", "ip", "addr", "add", f"{VIP_DR}/32", "dev", "lo")  # DR: the VIP is local
        nsx("csA", "ip", "addr", "add", f"{VIP_DR}/32", "dev", "lo")
        nsx("csA", "ip", "addr", "add", f"{VIP_NAT}/32", "dev", "lo")
        for ns in ("csA", "csB"):
            nsx(ns, "ip", "link", "add", "sync0", "type", "dummy")
            nsx(ns, "ip", "link", "set", "sync0", "multicast", "on", "up")
            nsx(ns, "ip", "addr", "add", f"{SYNC_ADDR[ns]}/24", "dev", "sync0")
            for vip, real, fwd in ((VIP_DR, RS, "-g"), (VIP_NAT, NAT_RS, "-m")):
                nsx(ns, "ipvsadm", "-A", "-t", f"{vip}:80", "-s", "rr", "-p", "300")
                nsx(ns, "ipvsadm", "-a", "-t", f"{vip}:80", "-r", f"{real}:80", fwd)
            with netns(ns):
                kernel.set_sync_knobs(kernel_maxlen=1, sync_threshold=(2, 50))
                kernel.ensure_daemons("sync0", syncid=SYNCID, kernel_maxlen=1)
        for ns in ("csR", "csN"):
            server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER],
                                      stdout=subprocess.PIPE, text=True)
            procs.append(server)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield {"procs": procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def connect(procs: list[subprocess.Popen[str]], *vips: str) -> list[int]:
    """Open one held connection per VIP from the client; their local ports."""
    p = subprocess.Popen(["ip", "netns", "exec", "csC", sys.executable, "-c", CLIENT_CODE,
                          *vips], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    procs.append(p)
    assert p.stdout is not None and p.stderr is not None
    line = p.stdout.readline()
    if not line:
        p.wait(timeout=10)
        raise AssertionError(f"client failed: {p.stderr.read()}")
    ports: list[int] = json.loads(line)
    assert len(ports) == len(vips)
    return ports


def entries(datagram: bytes) -> list[dict[str, Any]]:
    """The IPv4 entries of a sync v1 datagram (header fields this test needs, by struct)."""
    _r, syncid, size, n, version, _s = struct.unpack_from("!BBHBBH", datagram)
    assert (version, size, syncid) == (1, len(datagram), SYNCID), datagram.hex()
    out, off = [], 8
    for _ in range(n):
        typ, proto, ver_size, flags, state, cport, vport, dport = struct.unpack_from(
            "!BBHIHHHH", datagram, off)
        assert typ & 1 == 0  # IPv4 only here
        caddr, vaddr, daddr = (str(ipaddress.ip_address(datagram[off + 24 + 4 * i:
                                                                off + 28 + 4 * i]))
                               for i in range(3))
        out.append({"proto": proto, "flags": flags, "state": state, "cport": cport,
                    "vport": vport, "dport": dport, "caddr": caddr, "vaddr": vaddr,
                    "daddr": daddr})
        off += ((ver_size & 0x0FFF) + 3) & ~3
    return out


def encode(keys: list[tuple[str, int]]) -> bytes:
    """A sync v1 datagram of hand-built DR ESTABLISHED entries ``(caddr, cport)`` -> VIP."""
    body = b"".join(struct.pack("!BBHIHHHHII4s4s4s", 0, socket.IPPROTO_TCP, 36, 0x3, 1, cport,
                                80, 80, 0, 900, socket.inet_aton(caddr),
                                socket.inet_aton(VIP_DR), socket.inet_aton(RS))
                    for caddr, cport in keys)
    return struct.pack("!BBHBBH", 0, SYNCID, 8 + len(body), len(keys), 1, 0) + body


def ip_vs_conn() -> set[tuple[str, str, int, str, int, str, int, str]]:
    """This namespace's ``/proc/net/ip_vs_conn`` as (proto, c, cport, v, vport, d, dport, state)."""
    def addr(h: str) -> str:
        return str(ipaddress.ip_address(int(h, 16)))
    out = set()
    with open("/proc/net/ip_vs_conn") as f:
        next(f)
        for line in f:
            p = line.split()
            out.add((p[0], addr(p[1]), int(p[2], 16), addr(p[3]), int(p[4], 16), addr(p[5]),
                     int(p[6], 16), p[7]))
    return out


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def test_capture_on_a_inject_on_b(lab: dict[str, Any]) -> None:
    with netns("csA"):
        daemons = {d["state"]: d for d in kernel.SyncDaemons().daemons()}
        assert daemons["master"]["maxlen"] == 1 and daemons["backup"]["syncid"] == SYNCID
        assert kernel.sync_knobs()["sync_threshold"] == (2, 50)
        cap_a = kernel.Capture("sync0")
        cap_a.open()
        assert cap_a.mode == "ring"  # UML's kernel gives the TPACKET_V2 ring
    with netns("csB"):
        cap_b = kernel.Capture("sync0")  # must see nothing of what is injected on B
        cap_b.open()
        inj = kernel.Injector("sync0")
        inj.open()
        before = kernel.backup_queue()
        assert before.sockets == 1 and before.rx_queue == 0
    assert inj.address == SYNC_ADDR["csB"]
    try:
        t0 = time.monotonic()
        dr, nat, control = connect(lab["procs"], VIP_DR, VIP_NAT, VIP_DR)
        captured: list[bytes] = []
        seen: dict[int, float] = {}

        def got_all() -> bool:
            for d in cap_a.read():
                captured.append(d)
                for e in entries(d):
                    seen.setdefault(e["cport"], time.monotonic() - t0)
            return {dr, nat, control} <= set(seen)

        assert wait_for(got_all, 10), f"captured only cports {sorted(seen)}"
        conns = {e["cport"]: e for d in captured for e in entries(d) if e["cport"]}
        assert conns[dr]["vaddr"] == VIP_DR and conns[dr]["daddr"] == RS
        assert conns[dr]["flags"] & 0x7 == 0x3  # IP_VS_CONN_F_DROUTE
        assert conns[nat]["vaddr"] == VIP_NAT and conns[nat]["daddr"] == NAT_RS
        assert conns[nat]["flags"] & 0x7 == 0x0  # IP_VS_CONN_F_MASQ
        assert all(conns[p]["state"] == 1 and conns[p]["caddr"] == CLIENT
                   for p in (dr, nat, control))  # ESTABLISHED
        assert cap_a.counters["capture.dropped.foreign"] == 0
        assert cap_a.counters["capture.datagrams"] == len(captured)
        print(f"capture lag after connect() returned: {seen}")

        want = {("TCP", CLIENT, p, v, 80, r, 80, "ESTABLISHED")
                for p, v, r in ((dr, VIP_DR, RS), (nat, VIP_NAT, NAT_RS), (control, VIP_DR, RS))}
        with netns("csA"):
            assert want <= ip_vs_conn()  # A holds all three
        with netns("csB"):
            assert not want & ip_vs_conn()  # B learnt nothing by itself
            to_inject = [d for d in captured if all(e["cport"] != control for e in entries(d))]
            assert len(to_inject) < len(captured)
            for d in to_inject:
                inj.send(d)
            assert asyncio.run(kernel.committed(timeout=2, drops_before=before.drops))
            table = ip_vs_conn()  # read at once: committed means present now
            assert cap_b.read() == []  # the injected copies never look like B's own
        *synced, missing = sorted(want, key=lambda w: w[2] == control)
        assert set(synced) <= table, f"B's table: {table}"
        assert missing not in table  # captured but not injected: not there
        assert inj.counters["inject.datagrams"] == len(to_inject)
        # the persistence templates came along whenever they were captured
        templates = [e for d in to_inject for e in entries(d) if e["flags"] & 0x1000]
        print(f"injected {len(to_inject)} datagrams, {len(templates)} templates")
    finally:
        for p in lab["procs"][1:]:
            if p.stdin:
                p.stdin.close()
        cap_a.close()
        cap_b.close()
        inj.close()


def test_knobs_daemons_and_errors(lab: dict[str, Any]) -> None:
    with netns("csA"):
        with kernel.SyncDaemons() as k:
            assert kernel.ensure_daemons("sync0", syncid=SYNCID, kernel_maxlen=1,
                                         kernel=k) == ["kept backup", "kept master"]
            kernel.set_sync_knobs(kernel_maxlen=1472, sync_threshold=(3, 50), kernel=k)
            assert {d["state"]: d["maxlen"] for d in k.daemons()}["master"] == 1472
            assert kernel.sync_knobs()["sync_threshold"] == (3, 50)
            kernel.set_sync_knobs(kernel_maxlen=1, sync_threshold=(2, 50), kernel=k)
            masters = [d for d in k.daemons() if d["state"] == "master"]
            assert [(d["maxlen"], d["syncid"], d["interface"]) for d in masters] == [
                (1, SYNCID, "sync0")]
        with pytest.raises(ConfigError, match="sync_threshold"):
            kernel.set_sync_knobs(kernel_maxlen=1, sync_threshold=(1, 1))
        with pytest.raises(ConfigError, match="kernel_maxlen"):
            kernel.set_sync_knobs(kernel_maxlen=0, sync_threshold=(2, 50))
        with pytest.raises(kernel.InterfaceError, match="no interface 'nope'"):
            kernel.Injector("nope").open()
        with pytest.raises(kernel.InterfaceError, match="no interface 'nope'"):
            kernel.Capture("nope").open()
        sh("ip", "link", "add", "bare0", "type", "dummy")
        with pytest.raises(kernel.InterfaceError, match="has no IPv4 address"):
            kernel.Injector("bare0").open()
        with pytest.raises(kernel.InterfaceError, match="no interface 'nope'"):
            kernel.ensure_daemons("nope", syncid=1, kernel_maxlen=1)
        # committed() means present: a burst of hand-built entries, unpaced, then one read
        keys = [(f"10.81.{i // 250}.{i % 250 + 1}", 2000 + i) for i in range(1000)]
        with kernel.Injector("sync0") as inj:
            drops = kernel.backup_queue().drops
            for i in range(0, len(keys), 40):
                inj.send(encode(keys[i:i + 40]))
            assert asyncio.run(kernel.committed(timeout=5, drops_before=drops))
        with open("/proc/net/ip_vs_conn") as f:
            assert sum(" 0A51" in line for line in f) == len(keys)
        # no backup daemon -> nothing can be committed
        with kernel.SyncDaemons() as k:
            k.stop_daemon("backup")
        assert kernel.backup_queue().sockets == 0
        assert asyncio.run(kernel.committed(timeout=0.05)) is False
    # a socket on the port that never drains -> not committed (the check can say no)
    with netns("csB"):
        port = kernel.SYNC_PORT + 1000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            s.bind(("127.0.0.1", port))
            tx.sendto(b"y" * 40, ("127.0.0.1", port))
            assert kernel.backup_queue(port=port).rx_queue > 0
            assert asyncio.run(kernel.committed(port=port, timeout=0.05)) is False
            s.recv(100)
            assert asyncio.run(kernel.committed(port=port, timeout=0.5)) is True


def test_socket_diagnostics_see_the_backup_socket_as_proc_does(lab: dict[str, Any]) -> None:
    """The commit check asks socket diagnostics (a few system calls) instead of reading
    /proc/net/udp (about a hundred: 11 ms in UML): both see the kernel's backup socket, and a
    socket with a queue, alike; the receive buffer the kernel reports is the one
    backup_capacity() works out from the sysctls (the injection's rounds are sized by it)."""
    def both(**kw: Any) -> tuple[kernel.BackupQueue, kernel.BackupQueue]:
        kernel._diag_works = None
        try:
            diag = kernel.backup_queue(**kw)
            assert kernel._diag_works is True  # udp_diag answered
            kernel._diag_works = False
            return diag, kernel.backup_queue(**kw)
        finally:
            kernel._diag_works = None

    with netns("csB"):
        diag, proc = both()
        assert (diag.sockets, diag.rx_queue, diag.drops) == (proc.sockets, proc.rx_queue,
                                                            proc.drops)
        assert diag.sockets == 1 and proc.rcvbuf == 0
        assert diag.rcvbuf == kernel.backup_capacity(), (diag, kernel.sync_knobs())
        port = kernel.SYNC_PORT + 1001
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            s.bind(("127.0.0.1", port))
            for _ in range(3):
                tx.sendto(b"z" * 500, ("127.0.0.1", port))
            # delivery may finish in a softirq after sendto returns (seen in a loaded run)
            assert wait_for(lambda: kernel.backup_queue(port=port).rx_queue > 0, 5)
            diag, proc = both(port=port)
            assert diag.rx_queue == proc.rx_queue > 0 and diag.sockets == proc.sockets == 1


def _present(prefix: str) -> int:
    """Entries in this namespace's table whose client address starts with ``prefix``
    (hex, e.g. ``0A52`` for 10.82.)."""
    with open("/proc/net/ip_vs_conn") as f:
        return sum(f" {prefix}" in line for line in f)


def test_the_backup_takes_255_entries_per_datagram_once_its_receive_size_is_raised(
        lab: dict[str, Any]) -> None:
    """ensure_daemons gives the backup daemon the largest receive size: a datagram of 255
    entries (9,188 bytes, over a 1,500-byte MTU) is applied whole. With the kernel's
    default receive size (MTU minus headers) the same datagram is cut and dropped: what
    injecting such datagrams would lose without it."""
    with netns("csB"):
        assert kernel.backup_maxlen() == kernel.MAXLEN_MAX4
        keys = [(f"10.82.{i // 250}.{i % 250 + 1}", 3000 + i) for i in range(1020)]
        with kernel.Injector("sync0") as inj:
            drops = kernel.backup_queue().drops
            for i in range(0, len(keys), 255):
                d = encode(keys[i:i + 255])
                assert len(d) == 9188
                inj.send(d)
            assert asyncio.run(kernel.committed(timeout=5, drops_before=drops))
        assert _present("0A52") == len(keys)
        # the kernel's default: the backup restarted without a receive size
        with kernel.SyncDaemons() as k:
            k.stop_daemon("backup")
            k.start_daemon("backup", interface="sync0", syncid=SYNCID)
        assert kernel.backup_maxlen() == kernel.BACKUP_MAXLEN_DEFAULT
        keys = [(f"10.83.{i // 250}.{i % 250 + 1}", 3000 + i) for i in range(255)]
        with kernel.Injector("sync0") as inj:
            inj.send(encode(keys))
            inj.send(encode(keys[:40]))  # what fits: applied
            assert asyncio.run(kernel.committed(timeout=5))
        assert _present("0A53") == 40
        # and ensure_daemons raises it again
        assert "restarted backup" in kernel.ensure_daemons("sync0", syncid=SYNCID,
                                                           kernel_maxlen=1)
        assert kernel.backup_maxlen() == kernel.MAXLEN_MAX4
