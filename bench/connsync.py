#!/usr/bin/env python3
"""Benchmark: conn-sync on real IPVS inside UML: its kernel side, then the whole plugin.

Run as root from the repository: ``.venv/bin/python bench/connsync.py [--json]``.
One UML kernel; inside it two directors A and B (network namespaces on a bridge), a DR real
server R behind a persistent virtual service on A, and a client. The phases:

1. **clusterbus knobs, end to end**: ``sync_threshold`` 2 50, master ``sync_maxlen`` 1,
   master+backup daemons on a dummy ``sync0`` in each director. A forwarder thread reads
   :class:`Capture` on A and hands every datagram to :class:`Injector` on B at once, then
   waits for :func:`committed` (this is conn-sync without the relay in between). Per
   connection: client ``connect()`` -> the entry is in B's ``/proc/net/ip_vs_conn``.
2. **burst through capture -> inject**: many connections at once; per datagram the lag
   from A's capture read to B's commit (``p99_lag_ms``), and entries lost on that path.
3. **injection throughput** (run after 5, when B's table has grown): hand-built entries
   injected into B in windows, each awaited with :func:`committed`; then counted through
   ActiveConn (``kernel_inject_entries_per_s``).
4. **kernel syncd alone, defaults** (``sync_threshold`` 3 50, default maxlen, daemons on
   the bridge so A's master reaches B's backup directly): the same end-to-end figure, and
   the entries of a burst that never reach B (``lost_kernel``). Phases 1, 2 and 4 poll
   B's ``/proc/net/ip_vs_conn``, whose read time grows with the table: they run first.

5. **conn-sync itself**: two director processes, one per namespace, each running the
   plugin as the daemon does (configured from a ``[connsync]`` section with CURVE keys and
   ``[[cluster.peer]]`` connsync endpoints, its service task, its ``prepare_master`` hook):
   A's master daemon -> A's capture -> CURVE relay -> B's injection -> B's kernel.
   End to end per connection (``e2e_connsync_ms``, beside ``e2e_kernel_defaults_ms``:
   ``e2e_ratio``); a burst of real connections (``lost_connsync``); generated sync
   datagrams sent out of A's ``sync0`` as its master would (captured like the kernel's):
   ``--cs-entries`` at once (``entries_per_s``: first send -> last entry committed in B;
   the directors' counters sampled every 20 ms say when half and all of them had been
   captured, sent, received and injected); then entries at a rate the relay keeps up
   with, ``--sustained-share`` (0.5) of the throughput just measured, for about
   ``--sustained-seconds`` (``p99_lag_sustained_ms``: the relay's own lag, no backlog;
   per stage too, and the directors' garbage-collection pauses); then ``--cs-table``
   entries at ``--rate``, the issue's 50,000/s (``p99_lag_ms``: send -> committed in B,
   per entry: where the offered rate exceeds the throughput this measures the backlog,
   and the output says so); then both plugins' RSS (``rss_mb``); B's ``prepare_master`` awaitable with
   those entries synced, until it resolves (``barrier_100k_s``: a failover's takeover);
   then B restarts, A resends its whole table, and B's barrier is timed from the first
   resent entry until it resolves (``barrier_resync_100k_s``: a restarted director).
3 (again): the kernel's injection at 255 entries per datagram (the plugin's datagrams
   since the backup daemon's receive size is raised: ``kernel_inject_255_entries_per_s``,
   the reference the relay's throughput is set against).
6. a **full resync** of 100,000 hand-built entries into B, kernel side only.

With ``--kernels both`` (the default) the relay phases of 5 run again with each director
in its own UML kernel (two kernels linked by a veth pair in a namespace of the host, one
host CPU each, as separate directors are: each kernel pinned to one, ``--no-pin`` leaves
them to the host's scheduler; B's director is driven over TCP on that link
and its clock offset measured): the headline ``entries_per_s``, ``p99_lag_sustained_ms``
and ``p99_lag_ms`` are then these, the one-kernel ones stay beside them as
``*_one_kernel``; ``--kernels 1`` or ``2`` runs one of the two.

UML's costs shape the figures: a system call costs about 90 us there (0.1-0.4 us on the
host), a first touch of a page 115-180 us (``page_fault_us``, measured in the run). So
the relay is measured twice: into fresh memory first (``entries_per_s_cold``), then,
after ``--cs-warmup`` short-lived entries were relayed and expired, warm, as a director
whose table size is steady (its memory reused; ``--allocator retain``, the default, keeps
freed memory mapped: glibc malloc without trimming). Each phase reports each director's
minor page faults and which mapping grew.

``--json`` prints one JSON object as the last line (the kernel-side figures under
``kernel_*``, the issue's targets under ``targets``, each target figure also as
``*_vs_target``). Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import faulthandler
import ipaddress
import json
import logging
import math
import os
import select
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLONE_NEWNET = 0x40000000
VIP, RS = "10.79.9.100", "10.79.0.10"
#: a second DR service, not persistent (no template follows a connection's entry)
VIP_PLAIN = "10.79.9.101"
A_ADDR, B_ADDR = "10.79.0.1", "10.79.0.2"
SYNCID = 7
#: net.ipv4.vs.sync_sock_size for the clusterbus phases (the kernel caps it at rmem_max)
SOCK_SIZE = 1 << 20
#: (re-packed) datagrams the forwarder injects before it awaits committed(): the backup
#: socket holds about 90 full datagrams with the default buffer
WINDOW = 32
#: one client source address per phase, so entries of different phases never collide
CLIENTS = {"knobs": "10.79.0.21", "burst": "10.79.0.22", "defaults": "10.79.0.23",
           "defaults_burst": "10.79.0.24", "plain": "10.79.0.25", "cs_knobs": "10.79.0.26",
           "cs_burst": "10.79.0.27"}

SERVER = """
import selectors, socket
sel = selectors.DefaultSelector()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(1024); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            c, _ = s.accept(); sel.register(c, selectors.EVENT_READ)
        else:
            try:
                d = key.fileobj.recv(4096)
            except OSError:
                d = b""
            if d:
                key.fileobj.sendall(d)
            else:
                sel.unregister(key.fileobj); key.fileobj.close()
"""

_libc = ctypes.CDLL(None, use_errno=True)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def nsx(ns: str, *cmd: str) -> str:
    return sh("ip", "netns", "exec", ns, *cmd)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


@contextmanager
def netns(name: str) -> Iterator[None]:
    """The block runs in network namespace ``name`` (this thread only)."""
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(orig)
        os.close(target)
        os.close(orig)


def topology() -> subprocess.Popen[str]:
    """Bridge (in this process's own namespace), directors csA/csB, server csR, client csC."""
    assert _libc.unshare(CLONE_NEWNET) == 0
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "link", "set", "br0", "up")
    for ns, addrs in (("csA", [A_ADDR]), ("csB", [B_ADDR]), ("csR", [RS]),
                      ("csC", list(CLIENTS.values()))):
        sh("ip", "netns", "add", ns)
        nsx(ns, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", f"v{ns}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", f"v{ns}", "master", "br0", "up")
        for a in addrs:
            nsx(ns, "ip", "addr", "add", f"{a}/24", "dev", "eth0")
        nsx(ns, "ip", "link", "set", "eth0", "up")
    nsx("csC", "ip", "route", "add", "10.79.9.0/24", "via", A_ADDR)
    for vip in (VIP, VIP_PLAIN):
        nsx("csR", "ip", "addr", "add", f"{vip}/32", "dev", "lo")
        nsx("csA", "ip", "addr", "add", f"{vip}/32", "dev", "lo")
    for node in (1, 2):
        director_services(node)
    server = subprocess.Popen(["ip", "netns", "exec", "csR", sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    return server


def director_services(node: int) -> None:
    """In director ``node``'s namespace: the sync interface ``sync0`` (a dummy: the master
    sends there, conn-sync captures and injects there) and the virtual services."""
    ns = CS_NS[node]
    nsx(ns, "ip", "link", "add", "sync0", "type", "dummy")
    nsx(ns, "ip", "link", "set", "sync0", "multicast", "on", "up")
    nsx(ns, "ip", "addr", "add", f"10.79.200.{node}/24", "dev", "sync0")
    nsx(ns, "ipvsadm", "-A", "-t", f"{VIP}:80", "-s", "rr", "-p", "300")
    nsx(ns, "ipvsadm", "-a", "-t", f"{VIP}:80", "-r", f"{RS}:80", "-g")
    nsx(ns, "ipvsadm", "-A", "-t", f"{VIP_PLAIN}:80", "-s", "rr")
    nsx(ns, "ipvsadm", "-a", "-t", f"{VIP_PLAIN}:80", "-r", f"{RS}:80", "-g")
    nsx(ns, "sysctl", "-qw", "net.core.somaxconn=4096")


def daemons(ns: str, interface: str, *, maxlen: int, threshold: tuple[int, int]) -> None:
    from clusterbus.plugins.connsync import kernel

    with netns(ns), kernel.SyncDaemons() as k:
        for d in k.daemons():
            k.stop_daemon(str(d["state"]))
        if maxlen:
            kernel.set_sync_knobs(kernel_maxlen=maxlen, sync_threshold=threshold,
                                  sock_size=SOCK_SIZE, kernel=k)
            kernel.ensure_daemons(interface, syncid=SYNCID, kernel_maxlen=maxlen, kernel=k)
        else:  # the kernel's defaults: maxlen from the MTU
            (kernel.VS_SYSCTL / "sync_threshold").write_text(f"{threshold[0]} {threshold[1]}")
            for state in ("backup", "master"):
                k.start_daemon(state, interface=interface, syncid=SYNCID)


def present(caddr: str) -> set[int]:
    """Client ports of ``caddr`` in this namespace's IPVS connection table."""
    want = f"{int(ipaddress.ip_address(caddr)):08X}"
    out = set()
    with open("/proc/net/ip_vs_conn") as f:
        for line in f:
            p = line.split(None, 3)
            if len(p) > 2 and p[1] == want and p[2] != "0000":
                out.add(int(p[2], 16))
    return out


def client_socket(caddr: str) -> socket.socket:
    with netns("csC"):
        s = socket.socket()
    s.bind((caddr, 0))
    s.settimeout(10)
    return s


def one_connection(caddr: str, *, timeout: float,
                   vip: str = VIP) -> tuple[socket.socket, float | None]:
    """connect() + 3 short round trips; seconds until B lists the entry (None: never).

    Called with this thread in B's namespace (it reads B's table).
    """
    s = client_socket(caddr)
    t0 = time.monotonic()
    s.connect((vip, 80))
    port = s.getsockname()[1]
    for _ in range(3):  # the kernel's default threshold syncs at the 3rd packet
        s.sendall(b"ping")
        s.recv(16)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if port in present(caddr):
            return s, time.monotonic() - t0
        time.sleep(0.002)
    return s, None


BURST = """
import json, socket, sys
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(); s.bind((sys.argv[1], 0)); s.settimeout(10)
    s.connect((sys.argv[3], 80)); s.sendall(b"x"); socks.append(s)
print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)
sys.stdin.read()
"""


def burst(caddr: str, n: int) -> tuple[subprocess.Popen[str], set[int]]:
    """``n`` connections from a client process, each ESTABLISHED with one data packet.

    A separate process (the forwarder thread of this one must not wait for the GIL); the
    connections stay open until its stdin is closed.
    """
    p = subprocess.Popen(["ip", "netns", "exec", "csC", sys.executable, "-c", BURST, caddr,
                          str(n), VIP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    return p, set(json.loads(p.stdout.readline()))


class Forwarder(threading.Thread):
    """Capture on A -> inject on B -> committed, as conn-sync does minus the relay."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        from clusterbus.plugins.connsync import kernel

        self.kernel = kernel
        with netns("csA"):
            self.capture = kernel.Capture("sync0")
            self.capture.open()
        with netns("csB"):
            self.injector = kernel.Injector("sync0")
            self.injector.open()
            self.drops0 = kernel.backup_queue().drops
        self.stop = threading.Event()
        self.lags: list[float] = []
        self.entries = 0
        self.not_committed = 0
        self.backup_drops = 0
        self.failures: list[dict[str, Any]] = []
        #: where the forwarder's time goes: sending, awaiting commit, waiting for its turn
        self.timing = {"send_s": 0.0, "commit_s": 0.0, "wait_s": 0.0, "batches": 0,
                       "injected": 0}
        self.repack = True
        #: what the master sent, by (template?, state): the wire cost of the knobs
        self.kinds: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fd = os.open("/run/netns/csB", os.O_RDONLY)
            _setns(fd)  # this thread reads B's /proc/net/udp for the commit check
            os.close(fd)
            loop = asyncio.new_event_loop()
            while not self.stop.is_set():
                r, _, _ = select.select([self.capture.fileno()], [], [], 0.05)
                if not r:
                    continue
                batch = self.capture.read()
                t_read = time.monotonic()
                self.forward(loop, batch, t_read)
            loop.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def forward(self, loop: asyncio.AbstractEventLoop, batch: list[bytes],
                t_read: float) -> None:
        """Inject ``batch`` (re-packed) in windows, each awaited with committed().

        Every captured datagram of the batch is counted with the lag until the last
        window committed (conservative).
        """
        t0 = time.monotonic()
        for d in batch:
            self.entries += d[4]
        out = repack(batch) if self.repack else batch
        send_s = commit_s = 0.0
        for i in range(0, len(out), WINDOW):
            t1 = time.monotonic()
            for d in out[i:i + WINDOW]:
                self.injector.send(d)
                self.timing["injected"] += 1
            t2 = time.monotonic()
            ok = loop.run_until_complete(self.kernel.committed(timeout=1,
                                                               drops_before=self.drops0))
            send_s += t2 - t1
            commit_s += time.monotonic() - t2
            if not ok:
                self.not_committed += 1
                q = self.kernel.backup_queue()
                self.failures.append({"after_ms": (time.monotonic() - t_read) * 1000,
                                      "rx_queue": q.rx_queue, "drops": q.drops,
                                      "drops0": self.drops0, "sockets": q.sockets})
                self.backup_drops += q.drops - self.drops0
                self.drops0 = q.drops
        t_done = time.monotonic()
        self.timing["send_s"] += send_s
        self.timing["commit_s"] += commit_s
        self.timing["wait_s"] += t0 - t_read
        self.timing["batches"] += 1
        self.lags.extend([t_done - t_read] * len(batch))
        for d in batch:
            for off in range(8, len(d), 36):  # hand-parsed: IPv4 entries, no options
                flags, state = struct.unpack_from("!IH", d, off + 4)
                kind = f"{'template' if flags & 0x1000 else 'conn'}.state{state}"
                self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=10)
        self.capture.close()
        self.injector.close()
        if self.error:
            raise self.error


def repack(datagrams: list[bytes], maxlen: int = 1472) -> list[bytes]:
    """The entries of sync v1 datagrams (one syncid), re-packed into as few as fit ``maxlen``.

    The master sends one entry per datagram (maxlen 1, for the low lag); the peer's backup
    spends about the same per datagram whatever it holds, so conn-sync injects them
    re-packed. (Hand-walked here; the plugin uses the codec's ``encode_many``.)
    """
    out: list[bytes] = []
    body, n = b"", 0
    syncid = datagrams[0][1] if datagrams else SYNCID
    for d in datagrams:
        off = 8
        for _ in range(d[4]):
            size = struct.unpack_from("!H", d, off + 2)[0] & 0x0FFF
            entry = d[off:off + size] + bytes(-size % 4)
            off += size + (-size % 4)
            if body and 8 + len(body) + len(entry) > maxlen or n == 255:
                out.append(struct.pack("!BBHBBH", 0, syncid, 8 + len(body), n, 1, 0) + body)
                body, n = b"", 0
            body, n = body + entry, n + 1
    if n:
        out.append(struct.pack("!BBHBBH", 0, syncid, 8 + len(body), n, 1, 0) + body)
    return out


def encode(entries: list[tuple[str, int]], *, syncid: int = SYNCID, timeout: int = 900) -> bytes:
    """A sync v1 datagram of hand-built DR ESTABLISHED entries (caddr, cport) -> VIP -> RS,
    each with ``timeout`` seconds left."""
    body = b"".join(
        struct.pack("!BBHIHHHHII4s4s4s", 0, socket.IPPROTO_TCP, 36, 0x3, 1, cport, 80, 80,
                    0, timeout, socket.inet_aton(caddr), socket.inet_aton(VIP),
                    socket.inet_aton(RS))
        for caddr, cport in entries)
    return struct.pack("!BBHBBH", 0, syncid, 8 + len(body), len(entries), 1, 0) + body


def throughput(n: int, *, per_datagram: int = 40, window: int = WINDOW,
               net: int = 80) -> dict[str, Any]:
    """Hand-built entries injected into B, ``per_datagram`` per datagram (40: what fits
    the kernel's default 1,472 bytes; 255: the most a datagram holds, which the backup
    daemon takes once its receive size is raised, as the plugin does)."""
    from clusterbus.plugins.connsync import kernel

    keys = [(f"10.{net}.{(i // 250) % 250}.{i % 250 + 1}", 1024 + i // 62500) for i in range(n)]
    datagrams = [encode(keys[i:i + per_datagram]) for i in range(0, n, per_datagram)]
    with netns("csB"):
        before = active_conns()
        inj = kernel.Injector("sync0")
        inj.open()
        drops0 = kernel.backup_queue().drops
        loop = asyncio.new_event_loop()
        lost_windows = 0
        t0 = time.monotonic()
        for i in range(0, len(datagrams), window):
            for d in datagrams[i:i + window]:
                inj.send(d)
            if not loop.run_until_complete(kernel.committed(timeout=2, drops_before=drops0)):
                lost_windows += 1
        elapsed = time.monotonic() - t0
        loop.close()
        inj.close()
        drops = kernel.backup_queue().drops - drops0
        t1 = time.monotonic()
        got = active_conns() - before  # /proc/net/ip_vs_conn is quadratic in the table
        count_s = time.monotonic() - t1
    return {"entries": n, "datagrams": len(datagrams), "window": window,
            "seconds": elapsed, "entries_per_s": n / elapsed, "present": got,
            "lost": n - got, "backup_drops": drops, "windows_not_committed": lost_windows,
            "count_s": count_s}


def active_conns() -> int:
    """ActiveConn of the real server under VIP in this namespace's table (cheap to read)."""
    out = sh("ipvsadm", "-Ln", "-t", f"{VIP}:80")
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0] == "->" and f[1] == f"{RS}:80":
            return int(f[4])
    return 0


def resync(n: int, *, window: int = WINDOW) -> dict[str, Any]:
    """A full resync into B: ``n`` entries (40 per datagram) from an empty start.

    Counted through the real server's ActiveConn (``/proc/net/ip_vs_conn`` is quadratic),
    and the latency of one more ``committed()`` with nothing pending (what a takeover
    barrier pays when everything was already injected).
    """
    from clusterbus.plugins.connsync import kernel

    keys = [(f"10.82.{(i // 250) % 250}.{i % 250 + 1}", 1024 + i // 62500) for i in range(n)]
    with netns("csB"):
        before = active_conns()
        inj = kernel.Injector("sync0")
        inj.open()
        drops0 = kernel.backup_queue().drops
        loop = asyncio.new_event_loop()
        t0 = time.monotonic()
        datagrams = 0
        for i in range(0, n, 40 * window):
            for j in range(i, min(n, i + 40 * window), 40):
                inj.send(encode(keys[j:j + 40]))
                datagrams += 1
            loop.run_until_complete(kernel.committed(timeout=5, drops_before=drops0))
        elapsed = time.monotonic() - t0
        idle = []
        for _ in range(20):
            t1 = time.monotonic()
            loop.run_until_complete(kernel.committed(timeout=1))
            idle.append(time.monotonic() - t1)
        loop.close()
        inj.close()
        drops = kernel.backup_queue().drops - drops0
        got = active_conns() - before
    return {"entries": n, "datagrams": datagrams, "seconds": elapsed,
            "entries_per_s": n / elapsed, "present": got, "lost": n - got,
            "backup_drops": drops, "commit_idle_ms": statistics.median(idle) * 1000}


# -- conn-sync through the plugin: one director process per namespace ----------------------

CS_PORT = 7790
#: ``--kernels 2``: director B's process is driven over TCP on this port
SPLIT_PORT = 7899
CS_ADDR = {1: A_ADDR, 2: B_ADDR}
CS_NS = {1: "csA", 2: "csB"}
#: second octet of the generated client addresses, per generator phase
GEN_NET = {"throughput": 83, "table": 84, "sustained": 85, "warmup": 86, "throughput_cold": 87}
#: seconds from the warm-up's first entry until all of its entries time out (the tables on
#: both sides expire them soon after): the warm-up's entries are all alive at once
WARMUP_TIMEOUT = 12
#: the directors' allocator with ``--allocator retain``: freed memory stays mapped (glibc
#: keeps its heap, Python allocates through it), so memory a director has used once is
#: reused without page faults, as in a director whose table size is steady
RETAIN_ENV = {"PYTHONMALLOC": "malloc",
              "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=4294967295:"
                                "glibc.malloc.mmap_threshold=33554432"}


def gen_key(net: int, i: int) -> tuple[str, int]:
    """Entry ``i`` of a generator phase: (client address, client port), all distinct."""
    return f"10.{net}.{(i // 250) % 250}.{i % 250 + 1}", 1024 + i // 62500


def gen_index(caddr: str, cport: int) -> tuple[int, int] | None:
    """(net, i) of a generated entry, the inverse of :func:`gen_key` (None: not one)."""
    o = caddr.split(".")
    if len(o) != 4 or o[0] != "10" or int(o[1]) not in GEN_NET.values():
        return None
    return int(o[1]), int(o[2]) * 250 + int(o[3]) - 1 + (cport - 1024) * 62500


def gen_index_raw(raw: bytes) -> tuple[int, int] | None:
    """:func:`gen_index` of a sync v1 entry's bytes (client address at 24, port at 10)."""
    if len(raw) < 36 or raw[0] != 0 or raw[24] != 10 or raw[25] not in GEN_NET.values():
        return None
    cport = raw[10] << 8 | raw[11]
    return raw[25], raw[26] * 250 + raw[27] - 1 + (cport - 1024) * 62500


def director_conf(workdir: Path, node: int, barrier_timeout: float) -> str:
    peer = 3 - node
    return f"""
[daemon]
node = {node}
[bus]
certificate = "{workdir}/d{node}.key_secret"
[[cluster.peer]]
node = {peer}
publish = "tcp://{CS_ADDR[peer]}:17000"
snapshot = "tcp://{CS_ADDR[peer]}:17100"
public_key = "{workdir}/d{peer}.key"
connsync = "tcp://{CS_ADDR[peer]}:{CS_PORT}"
[connsync]
interface = "sync0"
listen = "tcp://{CS_ADDR[node]}:{CS_PORT}"
syncid = {SYNCID}
kernel_maxlen = 1
sync_threshold = [2, 50]
barrier_timeout = {barrier_timeout}
"""


def minor_faults() -> int:
    """This process's minor page faults so far (each first touch of a page)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def page_fault_us(pages: int = 2000) -> float:
    """Microseconds per first touch of a fresh page in this kernel (an anonymous mapping
    written one page at a time): what a growing table costs per page in UML, beside about
    a microsecond on real hardware."""
    import mmap

    m = mmap.mmap(-1, pages * mmap.PAGESIZE)
    try:
        f0, t0 = minor_faults(), time.perf_counter()
        for i in range(pages):
            m[i * mmap.PAGESIZE] = 1
        took, faults = time.perf_counter() - t0, minor_faults() - f0
    finally:
        m.close()
    return took / max(faults, 1) * 1e6


def mappings_kb() -> dict[str, int]:
    """Resident kB per mapping of this process (``/proc/self/smaps``: start address and
    name), to see which one a phase's page faults grew."""
    out: dict[str, int] = {}
    name = ""
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                p = line.split()
                name = f"{p[0].split('-')[0]} {p[5] if len(p) > 5 else '[anon]'}"
            elif head == "Rss:":
                out[name] = out.get(name, 0) + int(line.split()[1])
    return out


def kernel_cpu() -> dict[str, int]:
    """This kernel's CPU time so far, in clock ticks, by kind (``/proc/stat``'s cpu line)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:9]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, map(int, fields)))


def task_cpu(root: str = "/proc") -> dict[str, float]:
    """CPU seconds so far (user + system) of every process under ``root`` (``/proc``: this
    kernel's, kernel threads too; ``/proc/self/task``: this process's threads), summed by
    name (``comm``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in os.listdir(root):
        if not pid.isdigit():
            continue
        try:
            with open(f"{root}/{pid}/stat") as f:
                stat = f.read()
        except OSError:  # it ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_grown(before: dict[str, float], after: dict[str, float],
              top: int = 8) -> dict[str, float]:
    """The ``top`` names whose CPU seconds grew most from ``before`` to ``after``."""
    grown = {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in grown.items() if v > 0), key=lambda kv: -kv[1])[:top])


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def director(node: int, workdir: Path, barrier_timeout: float) -> None:
    """One director's conn-sync, as the daemon runs it: the plugin configured from a
    ``[connsync]`` file, its service task, its ``prepare_master`` hook. Commands on stdin,
    one JSON answer per line on stdout (the bench's instrumentation: commit times of the
    generated entries)."""
    import gc
    import tomllib

    from clusterbus.config import parse_config
    from clusterbus.engine import Engine
    from clusterbus.pluginhost import PluginHost
    from clusterbus.plugins.connsync import ConnsyncPlugin

    text = director_conf(workdir, node, barrier_timeout)
    config = parse_config(tomllib.loads(text), file=f"d{node}.toml")
    host = PluginHost()
    cluster = Engine(origin=node, plugins=host).cluster
    plugin = ConnsyncPlugin()
    plugin.clusterbus_configure(config=config, section=config.plugin_sections["connsync"],
                                cluster=cluster)
    services = plugin.clusterbus_services(cluster=cluster)
    assert services
    svc = plugin.service(cluster)
    assert svc is not None
    peer = 3 - node
    kernel = svc.kernel
    # instrumentation: the commit time of every generated entry (an injection round is
    # committed when a later committed() returns True, or SETTLE_S after a later look for
    # room found the backup queue empty); the entries (sync v1 entry bytes)
    # are looked at only when the bench asks, so the plugin's own work is what is timed
    pending: list[list[bytes]] = []
    committed_rounds: list[tuple[list[bytes], float]] = []
    inject = svc._inject

    def traced_inject(chunk: list[tuple[int, list[bytes], float]]) -> None:
        for _p, conns, _t in chunk:
            pending.append(conns)
        inject(chunk)

    # the commit checks of a phase: how many said yes / no, and the seconds spent in them
    commit_stats = {"yes": 0, "no": 0, "seconds": 0.0, "longest": 0.0}

    async def traced_committed(**kw: Any) -> bool:
        t0 = time.monotonic()
        ok = bool(await kernel.committed(**kw))
        took = time.monotonic() - t0
        commit_stats["yes" if ok else "no"] += 1
        commit_stats["seconds"] += took
        commit_stats["longest"] = max(commit_stats["longest"], took)
        if ok and pending:
            now = time.monotonic()
            committed_rounds.extend((conns, now) for conns in pending)
            pending.clear()
        return ok

    def commit_times(net: int, count: int) -> list[float | None]:
        out: list[float | None] = [None] * count
        for conns, t in committed_rounds:
            for raw in conns:
                k = gen_index_raw(raw)
                if k is not None and k[0] == net and k[1] < count and out[k[1]] is None:
                    out[k[1]] = t
        return out

    def traced_backup_queue(**kw: Any) -> Any:
        # the injection loop's look for room for its next round: a queue found empty
        # means every datagram injected before was taken off it, and applied SETTLE_S
        # later (the first look of the commit check; a backlog is injected without
        # waiting for full commit checks)
        q = kernel.backup_queue(**kw)
        if q.rx_queue == 0 and pending:
            now = time.monotonic() + kernel.SETTLE_S
            committed_rounds.extend((conns, now) for conns in pending)
            pending.clear()
        return q

    class Kernel:
        def __getattr__(self, name: str) -> Any:
            return getattr(kernel, name)

        committed = staticmethod(traced_committed)
        backup_queue = staticmethod(traced_backup_queue)

    svc.kernel = Kernel()
    svc._inject = traced_inject
    # CB_BENCH_FAULTS=1: page faults per plugin step (a getrusage around each call)
    fault_by: dict[str, int] = {}
    cpu_by: dict[str, float] = {}  # CPU seconds per plugin step (this thread)
    cpu0 = [0.0, 0.0]  # process CPU and wall clock at trace_start
    if os.environ.get("CB_BENCH_FAULTS"):
        def count_faults(obj: Any, name: str, label: str) -> None:
            fn = getattr(obj, name)

            def counted(*a: Any, **kw: Any) -> Any:
                f0, c0 = minor_faults(), time.thread_time()
                try:
                    return fn(*a, **kw)
                finally:
                    fault_by[label] = fault_by.get(label, 0) + minor_faults() - f0
                    cpu_by[label] = cpu_by.get(label, 0.0) + time.thread_time() - c0
            setattr(obj, name, counted)

        count_faults(svc, "_on_capture", "capture")
        count_faults(svc.link, "on_effect", "deliver")
        count_faults(svc, "_inject", "inject")
        count_faults(svc.link, "_receive", "receive")
        count_faults(svc.link, "_apply", "apply_effects")
        count_faults(svc.channel, "send", "channel_send")
        count_faults(svc.relay, "poll", "relay_poll")
        count_faults(svc.table, "apply_many", "table")
    # calls per plugin step and event-loop wake-ups (select) in a phase: counted only
    calls: dict[str, int] = {}

    def count_calls(obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def counted(*a: Any, **kw: Any) -> Any:
            calls[label] = calls.get(label, 0) + 1
            return fn(*a, **kw)
        setattr(obj, name, counted)

    for obj, name, label in ((svc, "_on_capture", "capture"), (svc.channel, "send", "send"),
                             (svc.link, "_receive", "receive"), (svc.relay, "poll", "poll"),
                             (svc, "_inject", "inject")):
        count_calls(obj, name, label)
    loop = asyncio.get_running_loop()
    count_calls(loop._selector, "select", "loop_wakeups")  # type: ignore[attr-defined]
    lines: asyncio.Queue[str] = asyncio.Queue()
    threading.Thread(target=lambda: [loop.call_soon_threadsafe(lines.put_nowait, x)
                                     for x in sys.stdin], daemon=True).start()
    task = loop.create_task(services[0]())

    def reply(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # the per-stage progress of a phase: (t, captured, sent, received, injected, datagrams
    # injected, commit waits, resends), sampled from the plugin's own counters
    trace: list[tuple[float, ...]] = []
    trace_task: asyncio.Task[None] | None = None

    # the cyclic garbage collector's pauses, per generation: (count, total s, longest s)
    gc_pauses: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            took = time.perf_counter() - gc_started[0]
            g = gc_pauses[info["generation"]]
            g[0] += 1
            g[1] += took
            g[2] = max(g[2], took)

    gc.callbacks.append(on_gc)
    faults0 = [minor_faults()]
    maps0: dict[str, int] = {}
    kcpu0: dict[str, int] = {}
    tasks0: list[dict[str, float]] = [{}, {}]  # CPU by process, by thread, at trace_start

    async def sample_trace() -> None:
        c, rc = svc.counters, svc.relay.peers[peer].counters
        while True:
            trace.append((time.monotonic(), c["capture.entries"], rc["entries.sent"],
                          svc.received[peer], svc.injected[peer], c["inject.datagrams"],
                          c["inject.commit_waits"], rc["resends"]))
            await asyncio.sleep(0.02)

    deadline = time.monotonic() + 20
    while not svc.running and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if not svc.running:
        raise SystemExit(f"director {node}: the conn-sync service did not start "
                         f"({task.exception() if task.done() else 'timeout'})")
    reply({"ready": True, "pid": os.getpid()})
    while True:
        line = await lines.get()
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "wait":  # until `count` entries of the peer are settled and committed
            deadline = time.monotonic() + cmd["timeout"]
            while svc.settled[peer] < cmd["count"] and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            await traced_committed(timeout=max(0.1, deadline - time.monotonic()))
            try:  # datagrams the backup daemon's socket dropped so far (buffer full)
                drops = kernel.backup_queue().drops
            except OSError:
                drops = -1
            reply({"settled": svc.settled[peer], "injected": svc.injected[peer],
                   "received": svc.received[peer], "t": time.monotonic(),
                   "backup_drops": drops})
        elif op == "commits":  # the commit times of generator phase `net`, by index
            reply({"commit_at": commit_times(cmd["net"], cmd["count"])})
            committed_rounds.clear()  # asked once per phase: let the entries go
        elif op == "forget":  # a phase whose commit times nobody asks for (the warm-up)
            committed_rounds.clear()
            reply({"ok": True})
        elif op == "barrier":  # the plugin's prepare_master hook, timed
            if cmd.get("after_heard"):  # once the peer's resync has started arriving
                deadline = time.monotonic() + 30
                while svc.received[peer] == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
            t0 = time.monotonic()
            asks = 0
            while True:
                # as the speaker asks: the barrier hook the plugin registered at configure
                # time; a director that just started vetoes at once until the peer's full
                # table is in ("starting: ..."), and the speaker asks again at its next
                # advertisement (here: 50 ms later)
                answers = host.call_each("clusterbus_vrrp_prepare_master", instance="VI_1",
                                         vrid=1, cluster=cluster)
                assert len(answers) == 1, answers
                veto = await answers[0][1]
                asks += 1
                if not (veto or "").startswith("starting") \
                        or time.monotonic() - t0 > barrier_timeout:
                    break
                await asyncio.sleep(0.05)
            took = time.monotonic() - t0
            reply({"seconds": took, "veto": veto, "asks": asks, "last_barrier": svc.last_barrier,
                   "received": svc.received[peer], "settled": svc.settled[peer],
                   "injected": svc.injected[peer]})
        elif op == "trace_start":  # sample the per-stage counters every 20 ms
            trace.clear()
            faults0[0] = minor_faults()
            commit_stats.update(yes=0, no=0, seconds=0.0, longest=0.0)
            fault_by.clear()
            cpu_by.clear()
            calls.clear()
            cpu0[:] = [time.process_time(), time.monotonic()]
            kcpu0.clear()
            kcpu0.update(kernel_cpu())
            tasks0[:] = [task_cpu(), task_cpu("/proc/self/task")]
            maps0.clear()
            maps0.update(mappings_kb())
            for g in gc_pauses.values():
                g[:] = [0, 0.0, 0.0]
            trace_task = loop.create_task(sample_trace())
            reply({"ok": True})
        elif op == "trace_stop":
            if trace_task is not None:
                trace_task.cancel()
                trace_task = None
                c, rc = svc.counters, svc.relay.peers[peer].counters  # the last sample
                trace.append((time.monotonic(), c["capture.entries"], rc["entries.sent"],
                              svc.received[peer], svc.injected[peer], c["inject.datagrams"],
                              c["inject.commit_waits"], rc["resends"]))
            grown = {k: v - maps0.get(k, 0) for k, v in mappings_kb().items()}
            kcpu = {k: v - kcpu0.get(k, 0) for k, v in kernel_cpu().items()}
            ticks = sum(kcpu.values()) or 1
            reply({"trace": trace, "minor_faults": minor_faults() - faults0[0],
                   "commit_checks": dict(commit_stats), "faults_by_step": dict(fault_by),
                   "cpu_ms_by_step": {k: round(v * 1000, 1) for k, v in cpu_by.items()},
                   "calls": dict(calls),
                   # this kernel's CPU by process (kernel threads too), this process's by
                   # thread (ZeroMQ's I/O thread is ZMQbg/IO/0)
                   "processes_s": cpu_grown(tasks0[0], task_cpu()),
                   "threads_s": cpu_grown(tasks0[1], task_cpu("/proc/self/task")),
                   "cpu_s": time.process_time() - cpu0[0], "wall_s": time.monotonic() - cpu0[1],
                   # the share of this kernel's CPU that was busy, and on what
                   "kernel_cpu": {"busy": round(1 - kcpu["idle"] / ticks, 3),
                                  **{k: round(v / ticks, 3) for k, v in kcpu.items()
                                     if k != "idle" and v}},
                   "grown_kb": dict(sorted(((k, v) for k, v in grown.items() if v > 0),
                                           key=lambda kv: -kv[1])[:6]),
                   "gc": {f"gen{k}": {"count": int(v[0]),
                                                      "total_ms": v[1] * 1000,
                                                      "max_ms": v[2] * 1000}
                                          for k, v in gc_pauses.items()}})
        elif op == "active":  # ActiveConn under the VIP in this director's kernel
            reply({"active": active_conns()})
        elif op == "clock":
            reply({"t": time.monotonic()})
        elif op == "kernel_inject":  # the kernel's own injection rate here (no plugin)
            reply(await asyncio.to_thread(throughput, cmd["count"], per_datagram=255,
                                          window=4, net=cmd["net"]))
        elif op == "rss":
            gc.collect()
            reply({"rss_mb": rss_mb(), "table": len(svc.table)})
        elif op == "status":
            st = svc.status()
            reply({"counters": st["counters"], "peer": st["peers"][str(peer)],
                   "table": st["table"]})
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
        pass


class Director:
    """A director process (:func:`director`) in its namespace, driven over a pipe."""

    def __init__(self, node: int, workdir: Path, barrier_timeout: float, *,
                 retain: bool = False, timeout: float = 900) -> None:
        self.node = node
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", CS_NS[node], sys.executable, str(Path(__file__).resolve()),
             "--director", str(node), "--workdir", str(workdir),
             "--barrier-timeout", str(barrier_timeout), "--timeout", str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, **RETAIN_ENV} if retain else None)
        hello = self.read(30)
        self.pid = hello["pid"]

    def read(self, timeout: float) -> Any:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise TimeoutError(f"director {self.node}: no answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"director {self.node} exited ({self.proc.poll()})")
        return json.loads(line)

    def ask(self, **cmd: Any) -> Any:
        """One command; the answer within its ``timeout`` (if any) + 30 s."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read(cmd.get("timeout", 0) + 30)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)


class RemoteDirector(Director):
    """Director B in the other UML kernel (``--kernels 2``): its process's stdin and stdout
    are a TCP connection over the link between the two kernels, and the times in its
    answers are converted to this kernel's clock (offset measured when connecting: the
    exchange with the shortest round trip of 20)."""

    def __init__(self, node: int, addr: str, *, timeout: float = 120) -> None:
        self.node = node
        deadline = time.monotonic() + timeout
        while True:  # bounded: until the other kernel's director listens
            try:
                with netns(CS_NS[3 - node]):
                    sock = socket.create_connection((addr, SPLIT_PORT), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        sock.settimeout(None)
        self.sock = sock
        self.rfile = sock.makefile("r")
        self.wfile = sock.makefile("w")
        self.offset = 0.0
        self.pid = self.read(60)["pid"]
        best: tuple[float, float] | None = None
        for _ in range(20):
            t0 = time.monotonic()
            tb = self.ask(op="clock")["t"]
            t1 = time.monotonic()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, tb - (t0 + t1) / 2)
        assert best is not None
        self.rtt, self.offset = best

    def read(self, timeout: float) -> Any:
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            raise TimeoutError(f"director {self.node}: no answer within {timeout} s")
        line = self.rfile.readline()
        if not line:
            raise RuntimeError(f"director {self.node} closed its connection")
        return json.loads(line)

    def ask(self, **cmd: Any) -> Any:
        self.wfile.write(json.dumps(cmd) + "\n")
        self.wfile.flush()
        got = self.read(cmd.get("timeout", 0) + 30)
        off = self.offset  # its clock -> ours
        if "trace" in got:
            got["trace"] = [[r[0] - off, *r[1:]] for r in got["trace"]]
        if "commit_at" in got:
            got["commit_at"] = [None if c is None else c - off for c in got["commit_at"]]
        if "t" in got and cmd["op"] != "clock":
            got["t"] -= off
        return got

    def close(self) -> None:
        try:
            self.wfile.write('{"op": "quit"}\n')
            self.wfile.flush()
        except OSError:
            pass
        for f in (self.wfile, self.rfile, self.sock):
            f.close()


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


class Generator:
    """Sync datagrams sent out of A's ``sync0`` as A's master daemon sends them (UDP to the
    sync group, TTL 1, no loopback): A's plugin captures them like the kernel's own.

    The datagrams due together leave in one ``sendmmsg`` (the master is a kernel thread:
    it pays no system call per datagram; in UML each costs ~90 us of A's one CPU)."""

    def __init__(self) -> None:
        with netns("csA"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.79.200.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.connect(("224.0.0.81", 8848))
        self.sock = s
        self.cpu_s = 0.0
        libc = ctypes.CDLL(None, use_errno=True)
        self._sendmmsg = libc.sendmmsg
        self._sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        self._sendmmsg.restype = ctypes.c_int

    def _send_all(self, msgs: Any, first: int, end: int) -> None:
        """Datagrams ``first`` .. ``end - 1`` of the prepared ``msgs``, in as few calls as
        the kernel takes them."""
        size = ctypes.sizeof(_Mmsghdr)
        base = ctypes.addressof(msgs)
        while first < end:
            got = self._sendmmsg(self.sock.fileno(), base + first * size, end - first, 0)
            if got < 0:
                err = ctypes.get_errno()
                if err in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                    time.sleep(0.0005)
                    continue
                raise OSError(err, os.strerror(err))
            first += got

    def send(self, net: int, n: int, *, rate: float | None = None, start: int = 0,
             per_datagram: int = 40, timeout: int = 900) -> list[float]:
        """Entries start..start+n-1 of ``net``; at ``rate`` entries/s (None: at once, in
        windows).

        The datagrams are built first, and sent in groups: at a rate, every datagram due
        is sent at each wake-up (a few milliseconds apart), stamped with the time read
        before the group (so an entry's lag is never understated). Sending then costs
        about what the kernel's master daemon spends (a send each), not Python's encoding
        or a clock read and a sleep per datagram: in UML each system call costs ~90 us,
        and the generator shares A's kernel (one CPU) with A's director.
        ``self.cpu_s`` is the generator's CPU time of the last call.

        :returns: the send time of each entry (its datagram's).
        """
        sent = [0.0] * n
        grams = [encode([gen_key(net, start + k) for k in range(i, min(n, i + per_datagram))],
                        timeout=timeout) for i in range(0, n, per_datagram)]
        iovs = (_Iovec * len(grams))()
        msgs = (_Mmsghdr * len(grams))()
        for g, d in enumerate(grams):  # the buffers stay the bytes objects in ``grams``
            iovs[g].base = ctypes.cast(ctypes.c_char_p(d), ctypes.c_void_p)
            iovs[g].len = len(d)
            msgs[g].hdr.iov = ctypes.pointer(iovs[g])
            msgs[g].hdr.iovlen = 1
        cpu0 = time.process_time()
        t0 = time.monotonic()
        j = 0
        while j < len(grams):
            now = time.monotonic()
            if rate:
                k = min(len(grams), int((now - t0) * rate / per_datagram) + 1)
                if k <= j:  # the next datagram is not due yet
                    time.sleep(min(0.005, t0 + j * per_datagram / rate - now))
                    continue
            else:
                k = min(len(grams), j + 64)
            self._send_all(msgs, j, k)
            sent[j * per_datagram:min(n, k * per_datagram)] = \
                [now] * (min(n, k * per_datagram) - j * per_datagram)
            j = k
            if not rate and j < len(grams):
                time.sleep(0.001)  # let the capture socket's reader run
        self.cpu_s = time.process_time() - cpu0
        return sent

    def close(self) -> None:
        self.sock.close()


def relay_throughput(a: Director, b: Director, gen: Generator, net: str,
                     n: int) -> dict[str, Any]:
    """``n`` generated entries sent at once on A until all are committed in B's kernel:
    entries/s, per-entry lag, per stage, and each director's page faults meanwhile."""
    w0 = b.ask(op="wait", count=0, timeout=5)
    base = w0["settled"]
    before = b.ask(op="active")["active"]
    a.ask(op="trace_start")
    b.ask(op="trace_start")
    sent = gen.send(GEN_NET[net], n)
    w = b.ask(op="wait", count=base + n, timeout=120)
    ta, tb_ = a.ask(op="trace_stop"), b.ask(op="trace_stop")
    stages = trace_stages(ta["trace"], tb_["trace"], sent[0], n)
    commits = b.ask(op="commits", net=GEN_NET[net], count=n)["commit_at"]
    lags = [c - s for c, s in zip(commits, sent) if c is not None]
    done = [c for c in commits if c is not None]
    got = b.ask(op="active")["active"] - before
    return {
        "entries": n, "seconds": (max(done) - sent[0]) if done else None,
        "entries_per_s": n / (max(done) - sent[0]) if done else 0.0,
        "send_s": sent[-1] - sent[0], "committed": len(done), "present": got,
        "lost": n - got, "backup_drops": w["backup_drops"] - w0["backup_drops"],
        "lag_p50_ms": (pct(lags, 0.5) or 0) * 1000,
        "lag_p99_ms": (pct(lags, 0.99) or 0) * 1000, "settled": w["settled"] - base,
        "stages": stages, "minor_faults": {"A": ta["minor_faults"],
                                           "B": tb_["minor_faults"]},
        "grown_kb": {"A": ta["grown_kb"], "B": tb_["grown_kb"]},
        "commit_checks_B": tb_["commit_checks"],
        "faults_by_step": {"A": ta["faults_by_step"], "B": tb_["faults_by_step"]}}


def relay_phases(args: argparse.Namespace, a: Director, b: Director,
                 gen: Generator) -> dict[str, Any]:
    """The relay at saturation (into fresh memory, then warm), where it keeps up, and at
    the issue's 50,000/s: generated entries sent on A, committed in B's kernel."""
    out: dict[str, Any] = {}
    # relay throughput: generated entries captured on A, committed in B's kernel
    # cold: the directors' memory grows with the table (every new page faults once)
    out["throughput_cold"] = relay_throughput(a, b, gen, "throughput_cold",
                                               args.cs_entries)
    # warm-up: as many short-lived entries as the measured phases below bring, relayed
    # and then expired on both sides (the tables drop them within a second of their
    # timeout), so the memory they used is there for the next entries: a director in
    # steady state, whose connections end as others start
    n_warm = args.cs_warmup
    if n_warm:
        base = b.ask(op="wait", count=0, timeout=5)["settled"]
        active0 = b.ask(op="active")["active"]
        t0 = time.monotonic()
        # all of them alive at once (each burst's timeout ends at t0 + WARMUP_TIMEOUT), so
        # the memory of the largest table the phases below build is touched
        for i in range(0, n_warm, 20_000):  # in bursts the relay takes without a backlog
            left = max(1, math.ceil(t0 + WARMUP_TIMEOUT - time.monotonic()))
            gen.send(GEN_NET["warmup"], min(20_000, n_warm - i), start=i, timeout=left)
            b.ask(op="wait", count=base + min(n_warm, i + 20_000), timeout=120)
            b.ask(op="forget")  # the bench's own record of them would keep them alive
        peak = {"A": a.ask(op="rss")["table"], "B": b.ask(op="rss")["table"]}
        # expired in both tables and in B's kernel
        time.sleep(max(0.0, t0 + WARMUP_TIMEOUT - time.monotonic()) + 2.5)
        # B's kernel expires them on its own timers, some later (an entry its sync
        # daemon held at expiry gets its timeout again): a phase below counts the
        # entries it brings by ActiveConn, which those late expiries would lower
        deadline = time.monotonic() + 2 * WARMUP_TIMEOUT + 5
        while (left_active := b.ask(op="active")["active"] - active0) > 0 \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        out["warmup"] = {"entries": n_warm, "timeout_s": WARMUP_TIMEOUT,
                         "seconds": time.monotonic() - t0, "table_peak": peak,
                         "left_in_kernel_B": left_active,
                         "table_after": {"A": a.ask(op="rss")["table"],
                                         "B": b.ask(op="rss")["table"]}}
    out["throughput"] = relay_throughput(a, b, gen, "throughput", args.cs_entries)
    # the lag where the path keeps up: entries offered at a share of the throughput
    # just measured (so no backlog builds), their capture -> commit lag
    rate = args.sustained_rate or args.sustained_share * out["throughput"]["entries_per_s"]
    rate = max(1000.0, round(rate, -3))
    base = b.ask(op="wait", count=0, timeout=5)["settled"]
    n = min(args.cs_sustained, int(rate * args.sustained_seconds))
    a.ask(op="trace_start")
    b.ask(op="trace_start")
    sent = gen.send(GEN_NET["sustained"], n, rate=rate)
    gen_cpu = gen.cpu_s
    w = b.ask(op="wait", count=base + n, timeout=120)
    ta, tb_ = a.ask(op="trace_stop"), b.ask(op="trace_stop")
    by_stage = stage_lags(ta["trace"], tb_["trace"], sent)
    sustained_faults = {"A": ta["minor_faults"], "B": tb_["minor_faults"]}
    commit_checks = tb_["commit_checks"]
    gc_pauses = {"A": ta["gc"], "B": tb_["gc"]}
    commits = b.ask(op="commits", net=GEN_NET["sustained"], count=n)["commit_at"]
    lags = [c - s for c, s in zip(commits, sent) if c is not None]
    out["sustained"] = {"entries": n, "rate": rate,
                        "achieved_rate": n / (sent[-1] - sent[0]) if n > 1 and
                        sent[-1] > sent[0] else None,
                        "share_of_throughput": rate / out["throughput"]["entries_per_s"]
                        if out["throughput"]["entries_per_s"] else None,
                        "send_s": sent[-1] - sent[0], "committed": len(lags),
                        "lag_p50_ms": (pct(lags, 0.5) or 0) * 1000,
                        "lag_p99_ms": (pct(lags, 0.99) or 0) * 1000,
                        "lag_max_ms": max(lags, default=0) * 1000,
                        "stages": by_stage, "gc": gc_pauses, "generator_cpu_s": gen_cpu,
                        "minor_faults": sustained_faults,
                        "commit_checks_B": commit_checks,
                        "faults_by_step": {"A": ta["faults_by_step"], "B": tb_["faults_by_step"]},
                        "cpu": {d: {"process_s": t["cpu_s"], "wall_s": t["wall_s"],
                                    "ms_by_step": t["cpu_ms_by_step"],
                                    "kernel_cpu": t["kernel_cpu"], "calls": t["calls"],
                                    "processes_s": t["processes_s"],
                                    "threads_s": t["threads_s"]}
                                for d, t in (("A", ta), ("B", tb_))}}
    # the table phase: entries at a steady rate, their capture -> commit lag, then
    # the plugin's RSS, and the takeover barrier with that many synced connections
    base = w["settled"]
    n = args.cs_table
    before = b.ask(op="active")["active"]
    a.ask(op="trace_start")
    b.ask(op="trace_start")
    sent = gen.send(GEN_NET["table"], n, rate=args.rate)
    gen_cpu = gen.cpu_s
    w = b.ask(op="wait", count=base + n, timeout=180)
    ta, tb_ = a.ask(op="trace_stop"), b.ask(op="trace_stop")
    commits = b.ask(op="commits", net=GEN_NET["table"], count=n)["commit_at"]
    lags = [c - s for c, s in zip(commits, sent) if c is not None]
    if os.environ.get("CB_BENCH_DUMP"):  # per entry: send and commit time; the traces
        with open(os.environ["CB_BENCH_DUMP"], "w") as f:
            json.dump({"sent": sent, "commits": commits, "trace_A": ta["trace"],
                       "trace_B": tb_["trace"]}, f)
    got = b.ask(op="active")["active"] - before
    out["table"] = {"entries": n, "rate": args.rate, "send_s": sent[-1] - sent[0],
                    "achieved_rate": n / (sent[-1] - sent[0]) if sent[-1] > sent[0]
                    else None,
                    "committed": len(lags), "present": got, "lost": n - got,
                    "lag_p50_ms": (pct(lags, 0.5) or 0) * 1000,
                    "lag_p99_ms": (pct(lags, 0.99) or 0) * 1000,
                    "lag_max_ms": max(lags, default=0) * 1000, "generator_cpu_s": gen_cpu,
                    "gc": {"A": ta["gc"], "B": tb_["gc"]},
                    "stages": stage_lags(ta["trace"], tb_["trace"], sent),
                    "minor_faults": {"A": ta["minor_faults"], "B": tb_["minor_faults"]},
                    "commit_checks_B": tb_["commit_checks"],
                    "faults_by_step": {"A": ta["faults_by_step"], "B": tb_["faults_by_step"]},
                    "cpu": {d: {"process_s": t["cpu_s"], "wall_s": t["wall_s"],
                                "ms_by_step": t["cpu_ms_by_step"],
                                    "kernel_cpu": t["kernel_cpu"], "calls": t["calls"],
                                    "processes_s": t["processes_s"],
                                    "threads_s": t["threads_s"]}
                            for d, t in (("A", ta), ("B", tb_))}}
    return out


def connsync_phase(args: argparse.Namespace, held: list[socket.socket],
                   clients: list[subprocess.Popen[str]]) -> dict[str, Any]:
    """Everything through two directors' conn-sync plugins (capture -> CURVE relay ->
    injection -> commit)."""
    import tempfile

    import zmq.auth

    workdir = Path(tempfile.mkdtemp(prefix="cb-bench-cs-"))
    for n in ("d1", "d2"):
        zmq.auth.create_certificates(workdir, n)
    for ns in ("csA", "csB"):
        daemons(ns, "sync0", maxlen=1, threshold=(2, 50))
    out: dict[str, Any] = {}
    a = b = gen = None
    try:
        retain = args.allocator == "retain"
        a = Director(1, workdir, args.barrier_timeout, retain=retain, timeout=args.timeout)
        b = Director(2, workdir, args.barrier_timeout, retain=retain, timeout=args.timeout)
        gen = Generator()
        # end to end: client connect -> entry in B's kernel, via A's plugin and B's plugin
        e2e: list[float] = []
        missed = 0
        with netns("csB"):
            for _ in range(args.connections):
                s, lag = one_connection(CLIENTS["cs_knobs"], timeout=5)
                held.append(s)
                if lag is None:
                    missed += 1
                else:
                    e2e.append(lag)
            out["e2e"] = {"connections": args.connections, "e2e_ms": [x * 1000 for x in e2e],
                          "e2e_median_ms": statistics.median(e2e) * 1000 if e2e else None,
                          "e2e_max_ms": max(e2e) * 1000 if e2e else None, "never": missed}
            # loss under load: a burst of real connections through A
            proc, ports = burst(CLIENTS["cs_burst"], args.burst)
            clients.append(proc)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not ports <= present(CLIENTS["cs_burst"]):
                time.sleep(0.05)
            out["burst"] = {"connections": args.burst,
                            "lost": len(ports - present(CLIENTS["cs_burst"]))}
        out.update(relay_phases(args, a, b, gen))
        out["rss"] = {"A": a.ask(op="rss"), "B": b.ask(op="rss")}
        out["barrier_idle"] = b.ask(op="barrier")
        out["status_A"] = a.ask(op="status")
        out["status_B"] = b.ask(op="status")
        # takeover right after B restarts: A resends its whole table, B's barrier waits
        b.close()
        b = Director(2, workdir, args.barrier_timeout, retain=retain, timeout=args.timeout)
        try:
            out["barrier_resync"] = b.ask(op="barrier", after_heard=True,
                                          timeout=args.barrier_timeout + 60)
            out["rss"]["B_after_resync"] = b.ask(op="rss")
            out["status_B_after_resync"] = b.ask(op="status")
        except (TimeoutError, RuntimeError) as exc:  # keep the other figures
            out["error"] = f"{type(exc).__name__}: {exc}"
            out["barrier_resync"] = {"seconds": None, "veto": "no answer",
                                     "last_barrier": None}
            out["rss"]["B_after_resync"] = {"rss_mb": 0.0}
    finally:
        for x in (gen, a, b):
            if x is not None:
                x.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return out


#: the columns of a director's trace (after the time), by stage
TRACE = ("captured_A", "sent_A", "received_B", "injected_B", "datagrams_B", "commit_waits_B",
         "resends_A")


def trace_stages(trace_a: list[list[float]], trace_b: list[list[float]],
                 t0: float, n: int) -> dict[str, Any]:
    """Where the time of ``n`` entries went: per stage (A's capture, A's relay sends, B's
    receipt, B's injection), seconds from the first send until half and all of them had
    passed it (from the directors' counters sampled every 20 ms), and the per-phase totals
    of B's injected datagrams, its commit waits and A's resends."""
    out: dict[str, Any] = {}
    for col, name in enumerate(TRACE, start=1):
        rows = trace_a if name.endswith("_A") else trace_b
        if not rows:
            continue
        base = rows[0][col]
        if name in ("datagrams_B", "commit_waits_B", "resends_A"):
            out[name] = rows[-1][col] - base
            continue
        half = next((r[0] - t0 for r in rows if r[col] - base >= n / 2), None)
        full = next((r[0] - t0 for r in rows if r[col] - base >= n), None)
        out[name] = {"half_s": half, "all_s": full}
    return out


def stage_lags(trace_a: list[list[float]], trace_b: list[list[float]],
               sent: list[float]) -> dict[str, Any]:
    """Per stage, p50 and p99 (ms) of each entry's lag from its send until it had passed
    that stage: the k-th entry passed a stage at the first sample (20 ms apart) whose
    count had grown by more than k (the stages keep the order of the entries)."""
    import bisect

    out: dict[str, Any] = {}
    for col, name in enumerate(TRACE[:4], start=1):
        rows = trace_a if name.endswith("_A") else trace_b
        if not rows:
            continue
        base = rows[0][col]
        counts = [r[col] - base for r in rows]
        lags = []
        for k, t in enumerate(sent):
            i = bisect.bisect_right(counts, k)
            if i < len(rows):
                lags.append(rows[i][0] - t)
        out[name] = {"p50_ms": (pct(lags, 0.5) or 0) * 1000,
                     "p99_ms": (pct(lags, 0.99) or 0) * 1000, "entries": len(lags)}
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def inside(args: argparse.Namespace) -> dict[str, Any]:
    server = topology()
    out: dict[str, Any] = {"conn_tab_bits": conn_tab_bits()}
    held: list[socket.socket] = []
    clients: list[subprocess.Popen[str]] = []
    b_fd = os.open("/run/netns/csB", os.O_RDONLY)
    try:
        # 1 + 2: clusterbus knobs, capture -> inject -> commit
        for ns in ("csA", "csB"):
            daemons(ns, "sync0", maxlen=1, threshold=(2, 50))
        fwd = Forwarder()
        fwd.start()
        e2e: list[float] = []
        missed = 0
        with netns("csB"):
            for _ in range(args.connections):
                s, lag = one_connection(CLIENTS["knobs"], timeout=5)
                held.append(s)
                if lag is None:
                    missed += 1
                else:
                    e2e.append(lag)
            plain: list[float] = []
            for _ in range(args.plain_connections):
                s, lag = one_connection(CLIENTS["plain"], timeout=6, vip=VIP_PLAIN)
                held.append(s)
                plain.append(lag if lag is not None else float("inf"))
            fwd.lags.clear()
            fwd.timing.update(send_s=0.0, commit_s=0.0, wait_s=0.0, batches=0, injected=0)
            out["knobs_kinds"] = dict(fwd.kinds)
            fwd.kinds.clear()
            proc, ports = burst(CLIENTS["burst"], args.burst)
            clients.append(proc)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not ports <= present(CLIENTS["burst"]):
                time.sleep(0.05)
            burst_missing = len(ports - present(CLIENTS["burst"]))
        fwd.close()
        out["knobs"] = {"connections": args.connections, "e2e_ms": [x * 1000 for x in e2e],
                        "e2e_median_ms": statistics.median(e2e) * 1000 if e2e else None,
                        "e2e_max_ms": max(e2e) * 1000 if e2e else None, "never": missed}
        out["knobs_plain"] = {"connections": args.plain_connections,
                              "e2e_ms": [x * 1000 for x in plain]}
        out["burst"] = {"connections": args.burst, "datagrams": len(fwd.lags),
                        "lag_p50_ms": (pct(fwd.lags, 0.5) or 0) * 1000,
                        "lag_p99_ms": (pct(fwd.lags, 0.99) or 0) * 1000,
                        "lag_max_ms": max(fwd.lags, default=0) * 1000,
                        "lost": burst_missing, "not_committed": fwd.not_committed,
                        "backup_drops": fwd.backup_drops, "entries": fwd.entries,
                        "kinds": fwd.kinds, "failures": fwd.failures[:10],
                        "forwarder": fwd.timing,
                        "capture": fwd.capture.counters, "inject": fwd.injector.counters}
        # 4: the kernel syncd alone with its defaults, A's master straight to B's backup
        for ns in ("csA", "csB"):
            daemons(ns, "eth0", maxlen=0, threshold=(3, 50))
        e2e_k: list[float] = []
        missed_k = 0
        with netns("csB"):
            for _ in range(args.default_connections):
                s, lag = one_connection(CLIENTS["defaults"], timeout=6)
                held.append(s)
                if lag is None:
                    missed_k += 1
                else:
                    e2e_k.append(lag)
            proc, ports = burst(CLIENTS["defaults_burst"], args.burst)
            clients.append(proc)
            time.sleep(4.5)  # two flush rounds of the master's 2 s buffer age
            lost_kernel = len(ports - present(CLIENTS["defaults_burst"]))
        out["defaults"] = {"connections": args.default_connections,
                           "e2e_ms": [x * 1000 for x in e2e_k],
                           "e2e_median_ms": statistics.median(e2e_k) * 1000 if e2e_k else None,
                           "never": missed_k, "burst": args.burst, "lost": lost_kernel}
        # 5: the real conn-sync path: two directors' plugins (capture on A -> CURVE relay
        # -> injection in B -> committed); its table phase fills B with --cs-table entries
        if args.cs_table:
            out["connsync"] = connsync_phase(args, held, clients)
        # 3 (run here: B's table grows by --entries): injection throughput, kernel side
        for ns in ("csA", "csB"):
            daemons(ns, "sync0", maxlen=1, threshold=(2, 50))
        out["throughput"] = throughput(args.entries)
        # the same in datagrams of 255 entries, windows of 4 (the plugin's injection rounds)
        out["throughput_255"] = throughput(args.entries, per_datagram=255, window=4, net=81)
        # 6: last, since B's table then holds 100,000 more entries and every read of
        # /proc/net/ip_vs_conn (the presence checks above) would take seconds
        if args.resync_entries:
            daemons("csB", "sync0", maxlen=1, threshold=(2, 50))
            out["resync"] = resync(args.resync_entries)
    finally:
        for s in held:
            s.close()
        for p in clients:
            p.kill()
            p.wait(timeout=10)
        server.kill()
        server.wait(timeout=10)
        os.close(b_fd)
        for ns in ("csA", "csB", "csR", "csC"):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    kn, df = out["knobs"], out["defaults"]
    cs = out.get("connsync")
    out["page_fault_us"] = page_fault_us()  # this kernel's cost of a first touch

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    out["e2e_ratio_forwarder"] = ratio(df["e2e_median_ms"], kn["e2e_median_ms"])
    out.update(
        # the kernel side alone (forwarder and hand-built injection, no relay)
        kernel_inject_entries_per_s=out["throughput"]["entries_per_s"],
        kernel_inject_255_entries_per_s=out["throughput_255"]["entries_per_s"],
        kernel_p99_lag_ms=out["burst"]["lag_p99_ms"],
        lost_capture_inject=out["burst"]["lost"] + out["throughput"]["lost"]
        + out["throughput_255"]["lost"],
        resync_100k_s=out["resync"]["seconds"] if "resync" in out else None,
        e2e_kernel_defaults_ms=df["e2e_median_ms"], lost_kernel=lost_kernel,
        lost_kernel_of=args.burst)
    if cs:
        table = cs["table"]
        rss = cs["rss"]
        out.update(
            entries_per_s=cs["throughput"]["entries_per_s"],
            # the same into fresh memory (first, before the warm-up): UML's page faults
            entries_per_s_cold=cs["throughput_cold"]["entries_per_s"],
            allocator=args.allocator, warmup_entries=args.cs_warmup,
            p99_lag_ms=table["lag_p99_ms"], p99_lag_rate=table["rate"],
            p99_lag_rate_achieved=table["achieved_rate"],
            # the same where the path keeps up (no backlog): the lag of the relay itself
            p99_lag_sustained_ms=cs["sustained"]["lag_p99_ms"],
            p50_lag_sustained_ms=cs["sustained"]["lag_p50_ms"],
            sustained_rate=cs["sustained"]["rate"],
            sustained_rate_achieved=cs["sustained"]["achieved_rate"],
            p99_lag_burst_ms=cs["throughput"]["lag_p99_ms"],
            e2e_connsync_ms=cs["e2e"]["e2e_median_ms"],
            e2e_ratio=ratio(df["e2e_median_ms"], cs["e2e"]["e2e_median_ms"]),
            lost_connsync=cs["burst"]["lost"] + cs["throughput"]["lost"] + table["lost"]
            + cs["throughput_cold"]["lost"],
            lost_connsync_burst=cs["burst"]["lost"],
            # the takeover of step 3 of a failover: the peer holds the synced entries
            barrier_100k_s=cs["barrier_idle"]["seconds"],
            barrier_100k_passed=bool((cs["barrier_idle"]["last_barrier"] or {}).get("passed")),
            # the director that just restarted: the peer's whole table arrives first
            barrier_resync_100k_s=cs["barrier_resync"]["seconds"],
            barrier_resync_100k_passed=cs["barrier_resync"]["veto"] is None
            and bool((cs["barrier_resync"]["last_barrier"] or {}).get("passed")),
            barrier_entries=table["entries"],
            rss_mb=max(rss["A"]["rss_mb"], rss["B"]["rss_mb"],
                       rss["B_after_resync"]["rss_mb"]),
            rss_entries=table["entries"])
    else:
        out.update(entries_per_s=None, p99_lag_ms=None, lost_connsync=None,
                   barrier_100k_s=None, barrier_resync_100k_s=None, rss_mb=None,
                   e2e_ratio=None)
    out["targets"] = {"entries_per_s": 50_000, "p99_lag_ms": 50, "barrier_100k_s": 1,
                      "rss_mb": 200}
    out["p99_lag_sustained_ms_vs_target"] = (out["p99_lag_sustained_ms"] / 50
                                             if out.get("p99_lag_sustained_ms") is not None
                                             else None)
    for key, ref in (("entries_per_s", 50_000), ("p99_lag_ms", 50), ("barrier_100k_s", 1),
                     ("barrier_resync_100k_s", 1), ("rss_mb", 200)):
        out[f"{key}_vs_target"] = out[key] / ref if out[key] is not None else None
    out["entries_per_s_vs_kernel_inject"] = ratio(out["entries_per_s"],
                                                  out["kernel_inject_entries_per_s"])
    out["entries_per_s_vs_kernel_inject_255"] = ratio(out["entries_per_s"],
                                                      out["kernel_inject_255_entries_per_s"])
    return out


# -- two UML kernels, one per director (``--kernels 2``) -----------------------------------


def split_setup(node: int) -> None:
    """Inside one of the two kernels: director ``node``'s namespace, holding ``vec0`` (the
    link to the other kernel: a host veth pair), ``sync0``, the services and the daemons."""
    ns = CS_NS[node]
    sh("ip", "netns", "add", ns)
    nsx(ns, "ip", "link", "set", "lo", "up")
    sh("ip", "link", "set", "vec0", "netns", ns)
    nsx(ns, "ip", "addr", "add", f"{CS_ADDR[node]}/24", "dev", "vec0")
    nsx(ns, "ip", "link", "set", "vec0", "up")
    director_services(node)
    daemons(ns, "sync0", maxlen=1, threshold=(2, 50))


def split_side_b(args: argparse.Namespace) -> None:
    """Director B's kernel: serve one connection from A's kernel as B's director process."""
    split_setup(2)
    with netns(CS_NS[2]):
        srv = socket.create_server((CS_ADDR[2], SPLIT_PORT))
    srv.settimeout(args.timeout)
    conn, _ = srv.accept()
    srv.close()
    proc = subprocess.Popen(
        ["ip", "netns", "exec", CS_NS[2], sys.executable, str(Path(__file__).resolve()),
         "--director", "2", "--workdir", str(args.workdir),
         "--barrier-timeout", str(args.barrier_timeout), "--timeout", str(args.timeout)],
        stdin=conn.fileno(), stdout=conn.fileno(),
        env={**os.environ, **RETAIN_ENV} if args.allocator == "retain" else None)
    conn.close()
    proc.wait(timeout=args.timeout)


def split_side_a(args: argparse.Namespace) -> dict[str, Any]:
    """Director A's kernel: the generator, director A, and B's director driven over the
    link; the kernel's own injection in B's kernel first, then the relay phases."""
    split_setup(1)
    out: dict[str, Any] = {}
    a = b = gen = None
    try:
        a = Director(1, args.workdir, args.barrier_timeout, retain=args.allocator == "retain",
                     timeout=args.timeout)
        b = RemoteDirector(2, CS_ADDR[2])
        out["clock_rtt_ms"] = b.rtt * 1000
        out["conn_tab_bits"] = conn_tab_bits()
        gen = Generator()
        out["kernel_inject_255"] = b.ask(op="kernel_inject", count=args.entries, net=81,
                                         timeout=120)
        out.update(relay_phases(args, a, b, gen))
        out["rss"] = {"A": a.ask(op="rss"), "B": b.ask(op="rss")}
        out["status_A"] = a.ask(op="status")
        out["status_B"] = b.ask(op="status")
    finally:
        for x in (gen, a, b):
            if x is not None:
                x.close()
    return out


def relay_args(args: argparse.Namespace) -> str:
    """The options of the relay phases, to pass on to the run inside UML."""
    return (f"--entries {args.entries} --cs-entries {args.cs_entries} "
            f"--cs-table {args.cs_table} --rate {args.rate} --cs-sustained {args.cs_sustained} "
            f"--sustained-share {args.sustained_share} --sustained-rate {args.sustained_rate} "
            f"--sustained-seconds {args.sustained_seconds} "
            f"--barrier-timeout {args.barrier_timeout} --cs-warmup {args.cs_warmup} "
            f"--allocator {args.allocator}")


def run_split(args: argparse.Namespace, python: Path) -> dict[str, Any]:
    """Boot two UML kernels linked by a veth pair in a namespace of this host (each kernel
    sees its end as ``vec0``), B's first; return A's figures."""
    import tempfile

    import zmq.auth

    from clusterbus.lab import uml as lab

    ns = f"cbsplit{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="cb-bench-split-"))
    procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    sh("ip", "netns", "add", ns)
    try:
        nsx(ns, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
        for v in ("va", "vb"):
            nsx(ns, "ip", "link", "set", v, "up")
        for n in ("d1", "d2"):
            zmq.auth.create_certificates(workdir, n)
        common = f"{relay_args(args)} --timeout {args.timeout} --workdir {workdir}"
        host0 = kernel_cpu()  # this host's: the two kernels share its CPUs
        # each kernel on a CPU of its own (inherited from this process at the fork), as
        # separate directors are: unpinned, the host's scheduler put both on one CPU at
        # times, and each kernel stalled for tens of milliseconds while the other ran
        mine = os.sched_getaffinity(0)
        cpus = sorted(mine)[-2:] if args.pin and len(mine) >= 2 else []
        for side, end in (("b", "vb"), ("a", "va")):
            if cpus:
                os.sched_setaffinity(0, {cpus[0] if side == "b" else cpus[1]})
            # the diagnostics asked for (CB_BENCH_FAULTS, CB_BENCH_DUMP) go along
            faults = "".join(f"{k}={shlex.quote(v)} " for k, v in os.environ.items()
                             if k.startswith("CB_BENCH_"))
            cmd = ["sh", "-c", f"{faults}{python} {Path(__file__).resolve()} --split-side {side} "
                   f"{common} > {workdir}/{side}.out 2> {workdir}/{side}.log"]
            wd = workdir / f"uml-{side}"
            procs.append((side, wd, lab.spawn(cmd, workdir=wd, mem="1024M", cwd=ROOT,
                                              kernel_args=[f"vec0:transport=raw,ifname={end},gro=1",
                                                           *tab_bits_args(args)],
                                              netns=ns)))
        os.sched_setaffinity(0, mine)
        runs = {side: lab.wait(p, wd, timeout=args.timeout + 120) for side, wd, p in reversed(procs)}
        host = {k: v - host0[k] for k, v in kernel_cpu().items()}
        ticks = sum(host.values()) or 1
        for side in ("b", "a"):
            log = (workdir / f"{side}.log").read_text().strip()
            if log:
                print(f"inside UML {side.upper()} (stderr):\n{log[-3000:]}")
        if runs["a"].returncode != 0:
            raise SystemExit(f"UML run of A failed (exit {runs['a'].returncode}):\n"
                             f"{runs['a'].console[-3000:]}")
        data: dict[str, Any] = json.loads((workdir / "a.out").read_text().strip().splitlines()[-1])
        data["boot_run_s"] = runs["a"].duration
        # the host's CPUs over both runs: busy, and the share a hypervisor took (steal):
        # the kernels' figures are only as steady as the CPUs under them
        data["host_cpu"] = {"busy": round(1 - (host["idle"] + host["iowait"]) / ticks, 3),
                            "steal": round(host["steal"] / ticks, 3), "pinned": cpus}
        return data
    finally:
        for _, _, p in procs:
            if p.poll() is None:
                lab.kill_group(p.pid, p)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def print_split(two: dict[str, Any], args: argparse.Namespace) -> None:
    tc, tp, su, tb = two["throughput_cold"], two["throughput"], two["sustained"], two["table"]
    ki = two["kernel_inject_255"]
    print(f"conn-sync with each director in its own UML kernel (one CPU each, linked by a "
          f"veth pair; clock offset measured over a {two['clock_rtt_ms']:.2f} ms round trip; "
          f"IPVS connection table of 2**{two.get('conn_tab_bits')} buckets; "
          f"boot+run {two['boot_run_s']:.1f} s; this host's CPUs "
          f"{two['host_cpu']['busy']:.0%} busy, {two['host_cpu']['steal']:.1%} taken by the "
          f"hypervisor):")
    print(f"  B's kernel alone injects {ki['entries_per_s']:.0f} entries/s (255 per datagram, "
          f"{ki['entries']} entries, lost {ki['lost']})")
    print(f"  relay throughput into fresh memory: {tc['entries_per_s']:.0f} entries/s "
          f"(page faults A {tc['minor_faults']['A']}, B {tc['minor_faults']['B']})")
    print(f"  relay throughput, warm ({args.allocator}): {tp['entries']} entries at once, "
          f"{tp['entries_per_s']:.0f} entries/s (target >= 50000: "
          f"{tp['entries_per_s'] / 50_000:.2f} of it; B's kernel alone: "
          f"{tp['entries_per_s'] / ki['entries_per_s']:.2f} of it), lag p50 "
          f"{tp['lag_p50_ms']:.0f} ms p99 {tp['lag_p99_ms']:.0f} ms, lost {tp['lost']} "
          f"(datagrams the backup socket dropped: {tp.get('backup_drops')}), "
          f"page faults A {tp['minor_faults']['A']} B {tp['minor_faults']['B']}")
    print("    where the time went (s from the first send until half / all entries passed): "
          + ", ".join(f"{k} {v['half_s'] or 0:.2f}/{v['all_s'] or 0:.2f}"
                      for k, v in tp["stages"].items() if isinstance(v, dict)))
    print(f"  lag where the relay keeps up: {su['entries']} entries at {su['rate']:.0f}/s "
          f"(achieved {su['achieved_rate'] or 0:.0f}/s): p50 {su['lag_p50_ms']:.1f} ms, p99 "
          f"{su['lag_p99_ms']:.1f} ms (target <= 50 ms), max {su['lag_max_ms']:.1f} ms")
    print("    lag until each stage (ms, p50/p99): "
          + ", ".join(f"{k} {v['p50_ms']:.0f}/{v['p99_ms']:.0f}"
                      for k, v in su["stages"].items()))
    print(f"  {tb['entries']} entries offered at {tb['rate']:.0f}/s (achieved "
          f"{tb['achieved_rate'] or 0:.0f}/s): lag p50 {tb['lag_p50_ms']:.1f} ms, p99 "
          f"{tb['lag_p99_ms']:.1f} ms, lost {tb['lost']}, page faults A "
          f"{tb['minor_faults']['A']} B {tb['minor_faults']['B']}")
    print("    lag until each stage (ms, p50/p99): "
          + ", ".join(f"{k} {v['p50_ms']:.0f}/{v['p99_ms']:.0f}"
                      for k, v in tb["stages"].items()))
    for name, ph in (("sustained", su), ("offered", tb)):
        print(f"    each kernel's CPU busy in the {name} phase: " + ", ".join(
            f"{d} {c['kernel_cpu']['busy']:.0%} (director {c['process_s']:.2f} s of "
            f"{c['wall_s']:.2f} s)" for d, c in ph["cpu"].items()))
    for d, c in tb["cpu"].items():
        print(f"    {d}'s kernel by process (s): {c['processes_s']}; its director by thread: "
              f"{c['threads_s']}")
    print(f"  RSS: A {two['rss']['A']['rss_mb']:.0f} MB, B {two['rss']['B']['rss_mb']:.0f} MB")


def merge_split(data: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    """The two-kernel figures become the headline ones (separate directors, as deployed);
    the one-kernel figures stay beside them as ``*_one_kernel``."""
    out = dict(data)
    for key in ("entries_per_s", "entries_per_s_cold", "p99_lag_sustained_ms",
                "p50_lag_sustained_ms", "sustained_rate", "p99_lag_ms", "p99_lag_rate_achieved"):
        if key in data:
            out[f"{key}_one_kernel"] = data[key]
    tp, su, tb = two["throughput"], two["sustained"], two["table"]
    ki = two["kernel_inject_255"]["entries_per_s"]
    out.update(
        two_kernels=two, entries_per_s=tp["entries_per_s"],
        entries_per_s_cold=two["throughput_cold"]["entries_per_s"],
        p99_lag_sustained_ms=su["lag_p99_ms"], p50_lag_sustained_ms=su["lag_p50_ms"],
        sustained_rate=su["rate"], p99_lag_ms=tb["lag_p99_ms"], p99_lag_rate=tb["rate"],
        p99_lag_rate_achieved=tb["achieved_rate"], host_cpu=two.get("host_cpu"),
        kernel_inject_255_entries_per_s_two_kernels=ki,
        entries_per_s_vs_kernel_inject_two_kernels=tp["entries_per_s"] / ki if ki else None,
        lost_connsync=(data.get("lost_connsync") or 0) + tp["lost"] + tb["lost"]
        + two["throughput_cold"]["lost"],
        allocator=two.get("allocator", out.get("allocator")))
    out["targets"] = {"entries_per_s": 50_000, "p99_lag_ms": 50, "barrier_100k_s": 1,
                      "rss_mb": 200}
    out["entries_per_s_vs_target"] = out["entries_per_s"] / 50_000
    out["p99_lag_ms_vs_target"] = out["p99_lag_ms"] / 50
    out["p99_lag_sustained_ms_vs_target"] = out["p99_lag_sustained_ms"] / 50
    return out


def tab_bits_args(args: argparse.Namespace) -> list[str]:
    """The kernel command line's ``ip_vs.conn_tab_bits`` (modprobe applies it to ip_vs)."""
    return [f"ip_vs.conn_tab_bits={args.conn_tab_bits}"] if args.conn_tab_bits else []


def conn_tab_bits() -> int | None:
    """This kernel's IPVS connection hash table size, as a power of two (None: no ip_vs)."""
    try:
        return int(Path("/sys/module/ip_vs/parameters/conn_tab_bits").read_text())
    except (OSError, ValueError):
        return None


def run_one_kernel(args: argparse.Namespace, python: Path) -> dict[str, Any]:
    """The whole bench in one UML kernel (both directors share its CPU); prints it."""
    from uml import boot as uml_boot
    result_file = Path(f"/tmp/cb-bench-connsync-{os.getpid()}.json")
    env = f"CB_BENCH_PROFILE={args.profile.resolve()} " if args.profile else ""
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    cmd = ["sh", "-c", f"{env}{python} {Path(__file__).resolve()} --inside "
           f"--connections {args.connections} --default-connections "
           f"{args.default_connections} --plain-connections {args.plain_connections} "
           f"--resync-entries {args.resync_entries} --burst {args.burst} {relay_args(args)} "
           f"> {result_file} 2> {result_file}.log"]
    try:
        run = uml_boot(cmd, timeout=args.timeout, mem="1024M", kernel_args=tab_bits_args(args))
        if run.returncode != 0 or not result_file.exists():
            raise SystemExit(f"UML run failed (exit {run.returncode}):\n{run.console[-4000:]}")
        data: dict[str, Any] = json.loads(result_file.read_text().strip().splitlines()[-1])
    finally:
        result_file.unlink(missing_ok=True)
        log_file = result_file.with_name(result_file.name + ".log")
        if log_file.exists():
            warnings = log_file.read_text().strip()
            if warnings:
                print(f"inside UML (stderr):\n{warnings[-3000:]}")
            log_file.unlink()
    kn, bu, th, df = data["knobs"], data["burst"], data["throughput"], data["defaults"]
    print(f"conn-sync, kernel side (forwarder: capture -> inject, no relay), inside UML "
          f"(boot+run {run.duration:.1f} s)")
    print(f"  connect -> entry on B, clusterbus knobs (threshold 2 50, maxlen 1, capture -> "
          f"inject): median {kn['e2e_median_ms']:.0f} ms, max {kn['e2e_max_ms']:.0f} ms "
          f"({kn['connections']} connections, {kn['never']} never)")
    print(f"  the same to a service without persistence (a lone connection: no template "
          f"pushes its entry out): {', '.join(f'{x:.0f}' for x in data['knobs_plain']['e2e_ms'])} ms")
    print(f"  connect -> entry on B, kernel syncd alone with defaults (3 50, maxlen 1472): "
          f"median {df['e2e_median_ms']:.0f} ms ({df['connections']} connections, "
          f"{df['never']} never); ratio to the forwarder {data['e2e_ratio_forwarder'] or 0:.1f}")
    print(f"  burst of {bu['connections']} connections, capture on A -> committed on B: "
          f"p50 {bu['lag_p50_ms']:.1f} ms, p99 {bu['lag_p99_ms']:.1f} ms, max "
          f"{bu['lag_max_ms']:.1f} ms over {bu['datagrams']} datagrams; lost {bu['lost']}")
    print(f"  injection: {th['entries']} entries in {th['datagrams']} datagrams, "
          f"{th['entries_per_s']:.0f} entries/s, lost {th['lost']} (backup drops "
          f"{th['backup_drops']}); counting B's table took {th['count_s']:.2f} s")
    t2 = data["throughput_255"]
    print(f"  the same, 255 entries per datagram (the plugin's injection): "
          f"{t2['entries_per_s']:.0f} entries/s, lost {t2['lost']} (backup drops "
          f"{t2['backup_drops']})")
    if "resync" in data:
        rs = data["resync"]
        print(f"  full resync into B: {rs['entries']} entries in {rs['seconds']:.2f} s "
              f"({rs['entries_per_s']:.0f}/s), lost {rs['lost']}; committed() with nothing "
              f"pending: {rs['commit_idle_ms']:.1f} ms")
    print(f"  kernel syncd alone, burst of {df['burst']}: lost {df['lost']} entries")
    cs = data.get("connsync")
    if cs:
        e, tp, tb = cs["e2e"], cs["throughput"], cs["table"]
        br, bi = cs["barrier_resync"], cs["barrier_idle"]
        print("conn-sync, two directors' plugins (capture on A -> CURVE relay -> inject on B "
              "-> committed):")
        print(f"  connect -> entry on B: median {e['e2e_median_ms'] or 0:.0f} ms, max "
              f"{e['e2e_max_ms'] or 0:.0f} ms ({e['connections']} connections, {e['never']} "
              f"never); kernel syncd alone {df['e2e_median_ms'] or 0:.0f} ms, ratio "
              f"{data['e2e_ratio'] or 0:.1f}")
        print(f"  burst of {cs['burst']['connections']} connections: lost "
              f"{cs['burst']['lost']} (kernel syncd alone: {df['lost']})")
        tc = cs["throughput_cold"]
        print(f"  relay throughput into fresh memory (first): {tc['entries_per_s']:.0f} "
              f"entries/s, minor page faults A {tc['minor_faults']['A']} / B "
              f"{tc['minor_faults']['B']} (a first touch of a page costs "
              f"{data['page_fault_us']:.0f} us in this kernel; allocator {args.allocator})")
        wu = cs.get("warmup")
        if wu:
            print(f"  warm-up: {wu['entries']} entries with {wu['timeout_s']} s left relayed and "
                  f"expired in {wu['seconds']:.1f} s (tables after: A {wu['table_after']['A']},"
                  f" B {wu['table_after']['B']})")
        print(f"  relay throughput: {tp['entries']} entries at once, {tp['entries_per_s']:.0f} "
              f"entries/s capture -> committed (sent in {tp['send_s']:.2f} s), lag p50 "
              f"{tp['lag_p50_ms']:.0f} ms p99 {tp['lag_p99_ms']:.0f} ms, lost {tp['lost']}; "
              f"minor page faults A {tp['minor_faults']['A']} / B {tp['minor_faults']['B']}")
        st = tp.get("stages", {})
        print("    where the time went (s from the first send until half / all entries passed): "
              + ", ".join(f"{k} {v['half_s'] or 0:.2f}/{v['all_s'] or 0:.2f}"
                          for k, v in st.items() if isinstance(v, dict))
              + "; " + ", ".join(f"{k} {v}" for k, v in st.items() if not isinstance(v, dict)))
        print(f"    target >= 50000 entries/s: {data['entries_per_s_vs_target']:.2f} of it; "
              f"the kernel alone in this run injects {data['kernel_inject_entries_per_s']:.0f}"
              f"/s at 40 entries per datagram, {data['kernel_inject_255_entries_per_s']:.0f}/s"
              f" at 255 (the relay: {data['entries_per_s_vs_kernel_inject_255'] or 0:.2f} "
              f"of the latter)")
        su = cs["sustained"]
        print(f"  lag where the relay keeps up: {su['entries']} entries offered at "
              f"{su['rate']:.0f}/s ({su['share_of_throughput'] or 0:.2f} of the throughput "
              f"above; the generator achieved {su['achieved_rate'] or 0:.0f}/s): lag p50 "
              f"{su['lag_p50_ms']:.1f} ms, p99 {su['lag_p99_ms']:.1f} ms (target <= 50 ms), "
              f"max {su['lag_max_ms']:.1f} ms")
        print("    lag until each stage (ms, p50/p99, from counters sampled every 20 ms): "
              + ", ".join(f"{k} {v['p50_ms']:.0f}/{v['p99_ms']:.0f}"
                          for k, v in su.get("stages", {}).items()))
        print("    the directors' garbage collections meanwhile (count, longest pause ms): "
              + "; ".join(f"{d} " + ", ".join(f"{g} {v['count']} {v['max_ms']:.0f}"
                                              for g, v in gcs.items())
                          for d, gcs in su.get("gc", {}).items()))
        print(f"  {tb['entries']} entries offered at the issue's {tb['rate']:.0f}/s (the "
              f"generator achieved {tb['achieved_rate'] or 0:.0f}/s, sent in "
              f"{tb['send_s']:.2f} s): lag p50 {tb['lag_p50_ms']:.1f} ms, p99 "
              f"{tb['lag_p99_ms']:.1f} ms (target <= 50 ms; above the relay's throughput "
              f"this is the backlog), max {tb['lag_max_ms']:.1f} ms, lost {tb['lost']}")
        print("    lag until each stage (ms, p50/p99): "
              + ", ".join(f"{k} {v['p50_ms']:.0f}/{v['p99_ms']:.0f}"
                          for k, v in tb.get("stages", {}).items()))
        print(f"  RSS with {tb['entries']} entries: A {cs['rss']['A']['rss_mb']:.0f} MB, B "
              f"{cs['rss']['B']['rss_mb']:.0f} MB, B after its restart's resync "
              f"{cs['rss']['B_after_resync']['rss_mb']:.0f} MB")
        print(f"  takeover barrier with {tb['entries']} synced entries (prepare_master -> "
              f"passed): {bi['seconds'] * 1000:.0f} ms ({bi['last_barrier']})")
        print(f"  the same on B just restarted, A resending its {tb['entries']}+ entries: "
              f"{br['seconds'] or 0:.2f} s (veto {br['veto']}, {br['last_barrier']})")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object as the last line")
    ap.add_argument("--connections", type=int, default=20,
                    help="sequential connections, clusterbus knobs (end to end)")
    ap.add_argument("--default-connections", type=int, default=5,
                    help="sequential connections, kernel defaults (2-3 s each)")
    ap.add_argument("--plain-connections", type=int, default=3,
                    help="sequential connections to a service without persistence")
    ap.add_argument("--burst", type=int, default=300, help="connections per burst")
    ap.add_argument("--entries", type=int, default=20_000,
                    help="hand-built entries for the injection throughput")
    ap.add_argument("--resync-entries", type=int, default=100_000,
                    help="hand-built entries of a full resync into the peer (0: skip)")
    ap.add_argument("--cs-entries", type=int, default=20_000,
                    help="generated entries for conn-sync's relay throughput (at once)")
    ap.add_argument("--cs-table", type=int, default=100_000,
                    help="generated entries sent at --rate through conn-sync, then the "
                    "RSS and the takeover barrier with them (0: skip conn-sync)")
    ap.add_argument("--rate", type=float, default=50_000,
                    help="entries/s of the --cs-table phase (its p99 lag)")
    ap.add_argument("--cs-sustained", type=int, default=40_000,
                    help="most generated entries of the sustained-rate phase")
    ap.add_argument("--cs-warmup", type=int, default=160_000,
                    help="short-lived entries relayed and expired before the measured "
                    "phases, so the directors' memory is warm as in steady operation "
                    "(0: none; the cold figure is measured before it either way)")
    ap.add_argument("--allocator", choices=("retain", "pymalloc"), default="retain",
                    help="the directors' allocator: 'retain' keeps freed memory mapped "
                    "(glibc malloc, no trim) so the warm-up's memory is reused; 'pymalloc' "
                    "is Python's default, which returns empty arenas to the kernel")
    ap.add_argument("--sustained-share", type=float, default=0.5,
                    help="the sustained phase offers this share of the relay throughput "
                    "just measured (its p99 lag without a backlog)")
    ap.add_argument("--sustained-rate", type=float, default=0,
                    help="entries/s of the sustained phase instead of the share")
    ap.add_argument("--sustained-seconds", type=float, default=4,
                    help="the sustained phase lasts about this long")
    ap.add_argument("--barrier-timeout", type=float, default=60,
                    help="the directors' [connsync] barrier_timeout (long: to time it)")
    ap.add_argument("--conn-tab-bits", type=int, default=18,
                    help="IPVS connection hash table of 2**N buckets in the UML kernels "
                         "(ip_vs.conn_tab_bits; the kernel's default 12 has 4,096, chains "
                         "of ~80 entries at the 340,000 the relay phases hold; the "
                         "kernel's own figures beside ours use the same; 0: the default)")
    ap.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="with --kernels 2: leave the two UML kernels to the host's scheduler "
                    "(default: each on a CPU of its own, the last two this process may use)")
    ap.add_argument("--profile", type=Path, help="run the director processes under cProfile; "
                    "their stats go to this (host) directory (in UML every clock read is a "
                    "system call, so the profiler's own clock dominates the times)")
    ap.add_argument("--kernels", choices=("1", "2", "both"), default="both",
                    help="1: everything in one UML kernel (both directors share its one "
                    "CPU); 2: the relay phases with each director in its own UML kernel "
                    "(linked by a veth pair), as separate directors are; both (default)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--split-side", choices=("a", "b"), help=argparse.SUPPRESS)
    ap.add_argument("--director", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.director or args.split_side:
        # a run that hangs says where, on its standard error, before it is stopped
        faulthandler.dump_traceback_later(max(30.0, args.timeout - 30), exit=False)
    if args.director:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        prof_dir = os.environ.get("CB_BENCH_PROFILE")
        if prof_dir:  # --profile: each director process under cProfile
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
            try:
                asyncio.run(director(args.director, args.workdir, args.barrier_timeout))
            finally:
                prof.disable()
                prof.dump_stats(f"{prof_dir}/director{args.director}-{os.getpid()}.prof")
        else:
            asyncio.run(director(args.director, args.workdir, args.barrier_timeout))
        return
    if args.quick:
        args.connections, args.default_connections, args.plain_connections = 5, 2, 1
        args.burst, args.entries, args.resync_entries = 100, 5_000, 10_000
        args.cs_entries, args.cs_table = 5_000, 10_000
        args.cs_warmup = 10_000
    if args.split_side:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        if args.split_side == "b":
            split_side_b(args)
        else:
            print(json.dumps(split_side_a(args)))
        return
    if args.inside or os.environ.get("CLUSTERBUS_IN_UML") == "1":
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        print(json.dumps(inside(args)))
        return
    sys.path.insert(0, str(ROOT / "tests" / "kernel"))
    import uml

    data: dict[str, Any] = {}
    if args.kernels in ("1", "both"):
        data = run_one_kernel(args, uml.PYTHON)
    if args.kernels in ("2", "both"):
        two = run_split(args, uml.PYTHON)
        print_split(two, args)
        data = merge_split(data, two)
    if args.json:
        print(json.dumps(data))


if __name__ == "__main__":
    main()
