"""Conn-sync end to end (issue 10), inside UML: real TCP through a VIP, real daemons.

Two directors (namespaces ``e2eA``, ``e2eB``) on one bridge with a client and three DR
real servers. Each director runs a whole ``clusterbus run``: its VRRP speaker (VI_1 holds
VIP1, A's by priority; VI_2 holds VIP2, B's), ``[ipvs]`` (one persistent DR service per
VIP over the three real servers) and, when sync is on, ``[connsync]`` (the kernel's
master and backup sync daemons on a dummy ``sync0``, so the kernel's own multicast never
reaches the peer: entries can only travel over conn-sync's CURVE channel on the bridge).

A client holds a connection to each VIP and exchanges a line every 50 ms (the real servers
echo it). A director fails: its daemon is killed with SIGKILL and its link cut. The other
takes its VIP. With conn-sync the moved connection keeps flowing and a new connection of
the same client reaches the same real server (the persistence template was synced);
without it the moved connection is reset. Every outcome is read from the kernels
(``/proc/net/ip_vs_conn``), the client and the daemons' status; waits are bounded, no
timing is asserted.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cbdaemon import kill9_process, stop_process

from clusterbus.bus.client import fetch_status

# A lab of two or three directors booting daemons on a loaded host takes minutes: the
# suite's 300 s per test is too short for setup plus the scenario (a bound, not a check).
pytestmark = pytest.mark.timeout(900)

CLONE_NEWNET = 0x40000000
NET = "10.81.0"
DIRECTORS = {"A": 1, "B": 2}
CLIENT = f"{NET}.9"
RS = {21: f"{NET}.21", 22: f"{NET}.22", 23: f"{NET}.23"}
VIPS = {"VI_1": f"{NET}.100", "VI_2": f"{NET}.101"}
OWNER = {"VI_1": "A", "VI_2": "B"}
#: NAT: the real servers on their own network behind the directors (``br1``, each
#: director's ``eth1``), their default route via GATEWAY, VRRP instance VI_G's address on
#: eth1, which moves with VIP1 (same owner, same priorities)
INNER = "10.82.0"
RS_NAT = {21: f"{INNER}.21", 22: f"{INNER}.22", 23: f"{INNER}.23"}
GATEWAY = f"{INNER}.254"


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Who is in a lab: the directors (name: node), the VRRP instances (name: interface,
    address, priority per director; the highest owns it), the forwarding method."""

    directors: dict[str, int]
    instances: dict[str, tuple[str, str, dict[str, int]]]
    forward: str = "dr"
    #: the virtual services' ports on every VIP (the real servers', too)
    ports: tuple[int, ...] = (80,)

    def owner(self, inst: str) -> str:
        prios = self.instances[inst][2]
        return max(prios, key=lambda d: prios[d])

    @property
    def rs(self) -> dict[int, str]:
        return RS_NAT if self.forward == "nat" else RS

    @property
    def vips(self) -> dict[str, str]:
        """The instances that carry a virtual service (all but NAT's gateway)."""
        return {i: v[1] for i, v in self.instances.items() if i in VIPS}


PAIR = Layout(directors=DIRECTORS, instances={
    "VI_1": ("eth0", VIPS["VI_1"], {"A": 150, "B": 100}),
    "VI_2": ("eth0", VIPS["VI_2"], {"A": 100, "B": 150})})
#: three directors: D backs both VIPs (120) before the other owner (100)
TRIO = Layout(directors={"A": 1, "B": 2, "D": 3}, instances={
    "VI_1": ("eth0", VIPS["VI_1"], {"A": 150, "B": 100, "D": 120}),
    "VI_2": ("eth0", VIPS["VI_2"], {"A": 100, "B": 150, "D": 120})})
NAT = Layout(directors=DIRECTORS, forward="nat", instances={
    "VI_1": ("eth0", VIPS["VI_1"], {"A": 150, "B": 100}),
    "VI_G": ("eth1", f"{GATEWAY}", {"A": 150, "B": 100})})
PORT = 7670  # [connsync] listen
#: seconds any wait may take (a bound, not a timing check: UML is one virtual CPU on a
#: host that may be busy, and three directors are nine processes there)
LIMIT = 60.0
CLUSTERBUS = str(Path(sys.executable).with_name("clusterbus"))

ECHO = """
import socket, sys, threading
name = sys.argv[1]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(256)
print("ready", flush=True)
def serve(c):
    try:
        c.sendall(f"{name}\\n".encode())
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# One connection to VIP:80: the server's name, then a line every 50 ms, echoed, until the
# stop file exists; then one JSON line: lines echoed and the error that ended it (if any).
CLIENT_CODE = """
import json, os, socket, sys, time
vip, stop = sys.argv[1], sys.argv[2]
s = socket.create_connection((vip, 80), timeout=10)
f = s.makefile("rb")
print("server", f.readline().decode().strip(), s.getsockname()[1], flush=True)
n, err = 0, None
try:
    while not os.path.exists(stop):
        line = f"{n}\\n".encode()
        s.sendall(line)
        got = f.readline()
        if got != line:
            err = f"bad echo {got!r}"
            break
        n += 1
        print("ok", n, flush=True)
        time.sleep(0.05)
except OSError as exc:
    err = f"{type(exc).__name__}: {exc}"
print("end", json.dumps({"echoed": n, "error": err}), flush=True)
"""

WHO = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=10)
print(s.makefile("rb").readline().decode().strip())
"""


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60).stdout


def nsx(ns: str, *cmd: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


def until(what: str, pred: Callable[[], Any], logs: Callable[[], str] = lambda: "",
          limit: float = LIMIT) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}\n{logs()}")
        time.sleep(0.1)


def _hexaddr(h: str) -> str:
    return ".".join(str(int(h[i:i + 2], 16)) for i in range(0, 8, 2))


def kernel_conns(ns: str) -> list[dict[str, Any]]:
    """``/proc/net/ip_vs_conn`` of namespace ``ns`` (IPv4 rows)."""
    rows = []
    for line in nsx(ns, "cat", "/proc/net/ip_vs_conn").splitlines()[1:]:
        f = line.split()
        if len(f) < 9 or len(f[1]) != 8:
            continue
        rows.append({"proto": f[0], "caddr": _hexaddr(f[1]), "cport": int(f[2], 16),
                     "vaddr": _hexaddr(f[3]), "vport": int(f[4], 16),
                     "daddr": _hexaddr(f[5]), "dport": int(f[6], 16), "state": f[7]})
    return rows


def conn_in(ns: str, vip: str, cport: int, daddr: str) -> bool:
    """The client's connection (cport) to ``vip`` and its persistence template, both
    pointing at ``daddr``, are in namespace ``ns``'s IPVS table."""
    rows = [r for r in kernel_conns(ns) if r["vaddr"] == vip and r["caddr"] == CLIENT]
    conn = any(r["cport"] == cport and r["daddr"] == daddr and r["state"] == "ESTABLISHED"
               for r in rows)
    template = any(r["cport"] == 0 and r["daddr"] == daddr for r in rows)
    return conn and template


class Director:
    """One director namespace and its ``clusterbus run`` daemon."""

    def __init__(self, name: str, root: Path, keys: Path, auth: Path, *, sync: bool,
                 extra: str = "", layout: Layout = PAIR) -> None:
        self.layout = layout
        self.name, self.node = name, layout.directors[name]
        self.ns = f"e2e{name}"
        self.addr = f"{NET}.{self.node}"
        self.dir = root / name
        self.dir.mkdir(exist_ok=True)
        self.keys = keys
        self.snapshot = f"ipc://{self.dir}/snap"
        peers = "".join(
            f'[[cluster.peer]]\nnode = {n}\npublish = "ipc://{root}/{p}/pub"\n'
            f'snapshot = "ipc://{root}/{p}/snap"\npublic_key = "{keys}/d{n}.key"\n'
            f'connsync = "tcp://{NET}.{n}:{PORT}"\n\n'
            for p, n in layout.directors.items() if p != name)
        instances = "".join(f"""
[[vrrp.instance]]
name = "{inst}"
interface = "{dev}"
vrid = {50 + i}
priority = {prios[name]}
advert_interval = 0.2
version = 3
virtual_ipaddress = ["{vip}/24"]
garp_delay = 0.0
preempt_delay = 3.0
""" for i, (inst, (dev, vip, prios)) in enumerate(layout.instances.items(), 1))
        services = "".join(f"""
[[ipvs.virtual_server]]
address = "{vip}:{port}"
scheduler = "rr"
persistence_timeout = 300
""" + "".join(f"""  [[ipvs.virtual_server.real_server]]
  node = {n}
  port = {port}
  forward = "{layout.forward}"
""" for n in layout.rs) for vip in layout.vips.values() for port in layout.ports)
        nodes = "".join(f'{n} = ["{a}"]\n' for n, a in layout.rs.items())
        connsync = (f'[connsync]\ninterface = "sync0"\nlisten = "tcp://{self.addr}:{PORT}"\n'
                    f'syncid = 7\n{extra}\n' if sync else "")
        self.config = self.dir / "clusterbus.toml"
        self.config.write_text(
            f'[daemon]\nnode = {self.node}\nlog_level = "info"\n'
            f'state_dir = "{self.dir}/state"\n\n'
            f'[bus]\npublish = "ipc://{self.dir}/pub"\nsnapshot = "{self.snapshot}"\n'
            f'ingest = "ipc://{self.dir}/ingest"\nheartbeat_interval = 0.2\n'
            f'certificate = "{keys}/d{self.node}.key_secret"\nauthorized_keys = "{auth}"\n\n'
            f'[netlink]\nenabled = false\n\n[nodemap.nodes]\n{nodes}\n{instances}\n'
            f'[ipvs]\nreconcile_interval = 0\n{services}\n{peers}{connsync}')
        self.log = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def make_namespace(self, mac: str = "") -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", f"v{self.ns}", "type", "veth", "peer", "name", "eth0",
           "netns", self.ns)
        if mac:  # a rebooted machine keeps its MAC address
            nsx(self.ns, "ip", "link", "set", "eth0", "address", mac)
        sh("ip", "link", "set", f"v{self.ns}", "master", "br0", "up")
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{self.addr}/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"],
                    ["ip", "link", "add", "sync0", "type", "dummy"],
                    ["ip", "link", "set", "sync0", "multicast", "on", "up"],
                    ["ip", "addr", "add", f"10.81.200.{self.node}/24", "dev", "sync0"]):
            nsx(self.ns, *cmd)
        if self.layout.forward == "nat":  # two-armed: the real servers' network on eth1
            sh("ip", "link", "add", f"w{self.ns}", "type", "veth", "peer", "name", "eth1",
               "netns", self.ns)
            sh("ip", "link", "set", f"w{self.ns}", "master", "br1", "up")
            for cmd in (["ip", "addr", "add", f"{INNER}.{self.node}/24", "dev", "eth1"],
                        ["ip", "link", "set", "eth1", "up"],
                        # the real servers' replies are routed through (ip_vs_out, in
                        # FORWARD) and rewritten back to the VIP
                        ["sysctl", "-qw", "net.ipv4.ip_forward=1"]):
                nsx(self.ns, *cmd)

    def start(self) -> Director:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, CLUSTERBUS, "run",
                                          "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        until(f"director {self.name} to answer", self.try_status, self.logs, limit=2 * LIMIT)
        return self

    def logs(self) -> str:
        return f"--- director {self.name} ---\n" + self.log.read_text()[-8000:]

    def try_status(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon {self.name} exited {self.proc.returncode}\n"
                                 f"{self.logs()}")
        try:
            st: dict[str, Any] = asyncio.run(fetch_status(
                self.snapshot, timeout=3.0, certificate=f"{self.keys}/d{self.node}.key_secret",
                server_key=f"{self.keys}/d{self.node}.key"))
        except Exception:
            return None
        return st

    def status(self) -> dict[str, Any]:
        st = until(f"status of {self.name}", self.try_status, self.logs)
        return dict(st)

    def vrrp(self, inst: str) -> str | None:
        st = self.try_status()
        if st is None:
            return None
        for i in st["services"]["vrrp"]["instances"]:
            if i["name"] == inst:
                return str(i["state"])
        return None

    def connsync(self) -> dict[str, Any]:
        cs: dict[str, Any] = self.status()["plugin_status"]["connsync"]
        return cs

    def kill9(self) -> None:
        kill9_process(self.proc)

    def stop(self) -> None:
        stop_process(self.proc)


class Client:
    """One held connection from the client namespace (``CLIENT_CODE``)."""

    def __init__(self, vip: str, stop: Path) -> None:
        self.vip, self.stopfile = vip, stop
        self.lines: list[str] = []
        self.proc = subprocess.Popen(["ip", "netns", "exec", "e2eC", sys.executable, "-c",
                                      CLIENT_CODE, vip, str(stop)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        first = until(f"the client's connection to {vip}", lambda: self.lines, limit=15)[0]
        assert first.startswith("server "), self.lines
        _, self.server, port = first.split()
        self.cport = int(port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def echoed(self) -> int:
        oks = [ln for ln in self.lines if ln.startswith("ok ")]
        return int(oks[-1].split()[1]) if oks else 0

    def result(self) -> dict[str, Any] | None:
        ends = [ln for ln in self.lines if ln.startswith("end ")]
        return json.loads(ends[0][4:]) if ends else None

    def finish(self) -> dict[str, Any]:
        self.stopfile.touch()
        try:
            self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        res = self.result()
        assert res is not None, self.lines[-5:]
        return res


def who_serves(vip: str) -> str:
    return nsx("e2eC", sys.executable, "-c", WHO, vip).strip()


class Lab:
    """The bridge, the client, the real servers, the directors (namespaces here)."""

    def __init__(self, root: Path, layout: Layout = PAIR) -> None:
        self.root, self.layout = root, layout
        self.keys, self.auth = root / "keys", root / "auth"
        self.auth.mkdir(mode=0o700)
        for n in layout.directors.values():
            sh(CLUSTERBUS, "keygen", "--dir", str(self.keys), "--name", f"d{n}")
            os.link(self.keys / f"d{n}.key", self.auth / f"d{n}.key")
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.directors: dict[str, Director] = {}
        self.clients: list[Client] = []
        self.n_stop = 0

    def setup(self) -> None:
        nat = self.layout.forward == "nat"
        sh("ip", "link", "set", "lo", "up")
        for br in ("br0", "br1") if nat else ("br0",):
            sh("ip", "link", "add", br, "type", "bridge")
            sh("ip", "link", "set", br, "up")
        rs_br = "br1" if nat else "br0"
        for ns, addr, br in (("e2eC", CLIENT, "br0"),
                             *((f"e2eR{n}", a, rs_br) for n, a in self.layout.rs.items())):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "add", f"v{ns}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "link", "set", f"v{ns}", "master", br, "up")
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"],
                        ["ip", "link", "set", "eth0", "up"]):
                nsx(ns, *cmd)
        for n in self.layout.rs:
            ns = f"e2eR{n}"
            if nat:  # NAT: replies go back through the director holding the VIPs
                nsx(ns, "ip", "route", "add", "default", "via", GATEWAY)
                continue
            # DR: the VIPs are local on lo, never answered for in ARP
            for knob in ("net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"):
                nsx(ns, "sysctl", "-qw", knob)
            for vip in VIPS.values():
                nsx(ns, "ip", "addr", "add", f"{vip}/32", "dev", "lo")
        for n in self.layout.rs:
            ns = f"e2eR{n}"
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO,
                                  f"rs{n}"], stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def director(self, name: str, *, sync: bool, extra: str = "", mac: str = "") -> Director:
        d = Director(name, self.root, self.keys, self.auth, sync=sync, extra=extra,
                     layout=self.layout)
        d.make_namespace(mac)
        self.namespaces.append(d.ns)
        self.directors[name] = d
        return d

    def client(self, vip: str) -> Client:
        self.n_stop += 1
        c = Client(vip, self.root / f"stop{self.n_stop}")
        self.clients.append(c)
        return c

    def logs(self) -> str:
        clients = "".join(f"--- client of {c.vip} (port {c.cport}) ---\n"
                          + "\n".join(c.lines[-3:]) + "\n" for c in self.clients)
        return clients + "\n".join(d.logs() for d in self.directors.values())

    def rs_addr(self, c: Client) -> str:
        """The real server (address) serving client connection ``c``."""
        return self.layout.rs[int(c.server[2:])]

    def close(self) -> None:
        for c in self.clients:
            c.stopfile.touch()
            if c.proc.poll() is None:
                c.proc.kill()
            c.proc.wait(10)
        for d in self.directors.values():
            d.stop()
        for p in self.procs:
            p.kill()
            p.wait(10)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _make_lab(layout: Layout) -> Iterator[Lab]:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(CLONE_NEWNET) == 0  # this process: the switch namespace
    root = Path(tempfile.mkdtemp(dir="/run", prefix="cb-e2e-"))  # unix sockets on tmpfs
    lab = Lab(root, layout)
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from _make_lab(PAIR)


@pytest.fixture
def nat_lab() -> Iterator[Lab]:
    yield from _make_lab(NAT)


@pytest.fixture
def lab3() -> Iterator[Lab]:
    yield from _make_lab(TRIO)


def settled(lab: Lab, directors: list[Director], *, sync: bool) -> None:
    """Every director holds the instances it owns, backs the others and (with conn-sync)
    has every peer's full table (empty so far: the channels work)."""
    for d in directors:
        for inst in lab.layout.instances:
            want = "MASTER" if lab.layout.owner(inst) == d.name else "BACKUP"
            until(f"{d.name} {want} of {inst}", lambda d=d, i=inst, w=want: d.vrrp(i) == w,
                  lab.logs)
    if sync:
        for d in directors:
            for other in directors:
                if other is not d:
                    until(f"{d.name} resynced from {other.name}", lambda d=d, o=other: d
                          .connsync()["peers"][str(o.node)]["last_resync_s"] is not None,
                          lab.logs)


def start_pair(lab: Lab, *, sync: bool, extra: str = "") -> tuple[Director, Director]:
    a = lab.director("A", sync=sync, extra=extra).start()
    b = lab.director("B", sync=sync, extra=extra).start()
    settled(lab, [a, b], sync=sync)
    return a, b


def fail(lab: Lab, d: Director) -> None:
    """The director dies: SIGKILL, and its links are cut (it keeps its VIPs, alone)."""
    d.kill9()
    sh("ip", "link", "set", f"v{d.ns}", "down")
    if lab.layout.forward == "nat":
        sh("ip", "link", "set", f"w{d.ns}", "down")


def ipvs_status(d: Director) -> str:
    return nsx(d.ns, "ipvsadm", "-Lnc")


@pytest.mark.parametrize("sync,victim", [(True, "A"), (False, "A"), (True, "B")],
                         ids=["connsync-A-fails", "no-connsync-A-fails", "connsync-B-fails"])
def test_failover_keeps_connections(lab: Lab, sync: bool, victim: str) -> None:
    """Active/active: VIP1 on A, VIP2 on B, a flowing connection through each; the victim
    fails, the survivor takes its VIP. With conn-sync: no reset, the same real server for
    a new connection. Without: the moved connection is reset (the test can fail)."""
    a, b = start_pair(lab, sync=sync)
    survivor = b if victim == "A" else a
    dead = lab.directors[victim]
    moved_inst = "VI_1" if victim == "A" else "VI_2"
    stay_inst = "VI_2" if victim == "A" else "VI_1"
    moved = lab.client(VIPS[moved_inst])
    stays = lab.client(VIPS[stay_inst])
    until("data flowing on both", lambda: moved.echoed() >= 10 and stays.echoed() >= 10,
          lab.logs)
    daddr = RS[int(moved.server[2:])]
    if sync:  # the moved connection and its template are in the survivor's kernel
        until(f"{victim}'s connection in {survivor.name}'s kernel",
              lambda: conn_in(survivor.ns, VIPS[moved_inst], moved.cport, daddr),
              lambda: ipvs_status(survivor) + lab.logs())
        stay_daddr = RS[int(stays.server[2:])]
        until(f"{survivor.name}'s connection in {victim}'s kernel",
              lambda: conn_in(dead.ns, VIPS[stay_inst], stays.cport, stay_daddr),
              lambda: ipvs_status(dead) + lab.logs())
    else:  # give a kernel sync every chance to show up: nothing does
        time.sleep(2.0)
        assert not conn_in(survivor.ns, VIPS[moved_inst], moved.cport, daddr)

    fail(lab, dead)
    until(f"{survivor.name} MASTER of {moved_inst}",
          lambda: survivor.vrrp(moved_inst) == "MASTER", lab.logs)
    at_takeover = moved.echoed()
    # 40 more echoes (2 s of data) after the takeover, or the end of the connection
    until("the moved connection to go on or end",
          lambda: moved.result() is not None or moved.echoed() >= at_takeover + 40,
          lambda: "\n".join(moved.lines[-5:]) + lab.logs())
    res = moved.finish()
    kept = stays.finish()
    print(f"sync={sync} victim={victim}: moved {res}, kept {kept}, before takeover "
          f"{at_takeover} echoes, server {moved.server}")
    assert kept["error"] is None, kept  # the surviving director's own VIP was not disturbed
    if sync:
        assert res["error"] is None, (res, lab.logs())
        assert res["echoed"] >= at_takeover + 40, res
        assert who_serves(VIPS[moved_inst]) == moved.server  # the template was synced
        barrier = survivor.connsync()["last_barrier"]
        assert barrier["passed"] and barrier["instance"] == moved_inst, barrier
    else:
        assert res["error"] is not None and "Reset" in res["error"], res


def test_rebooted_director_gets_the_full_table_before_any_vip(lab: Lab) -> None:
    """B reboots (SIGKILL, link cut, its namespace and kernel table gone) while A keeps
    serving and accepts new connections; the new B takes its VIP2 only after A's full
    table (connections B saw before and ones it never saw) is in its kernel; then A fails
    and every connection goes on through B."""
    a, b = start_pair(lab, sync=True)
    early = [lab.client(VIPS["VI_1"]) for _ in range(2)]
    for c in early:
        until("an early connection in B's kernel", lambda c=c: conn_in(
            b.ns, VIPS["VI_1"], c.cport, RS[int(c.server[2:])]), lab.logs)
    mac = nsx(b.ns, "cat", "/sys/class/net/eth0/address").strip()
    fail(lab, b)
    sh("ip", "netns", "del", b.ns)
    lab.namespaces.remove(b.ns)
    until("A MASTER of VI_2", lambda: a.vrrp("VI_2") == "MASTER", lab.logs)
    late = [lab.client(VIPS["VI_1"]) for _ in range(2)]  # B never heard of these
    clients = early + late
    until("A's own entries captured", lambda: a.connsync()["counters"]["capture.entries"]
          >= 2 * len(clients), lab.logs)

    b = lab.director("B", sync=True, mac=mac)  # a new namespace: an empty IPVS table
    assert not [r for r in kernel_conns(b.ns) if r["caddr"] == CLIENT]
    offset = b.log.stat().st_size if b.log.exists() else 0
    b.start()

    def all_in() -> bool:
        return all(conn_in(b.ns, VIPS["VI_1"], c.cport, RS[int(c.server[2:])])
                   for c in clients)

    seen_before_master = None
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        synced = all_in()
        if b.vrrp("VI_2") == "MASTER":
            seen_before_master = synced
            break
        time.sleep(0.05)
    assert seen_before_master is not None, lab.logs()
    log = b.log.read_text()[offset:]
    resynced = log.find("node 1's full table received")
    took = log.find("VI_2 (vrid 52, eth0): BACKUP -> MASTER")
    assert 0 <= resynced < took, log
    barrier = until("B's barrier answered", lambda: b.connsync()["last_barrier"], lab.logs,
                    limit=10)
    assert barrier["instance"] == "VI_2" and barrier["passed"], barrier
    assert barrier["entries"] >= len(clients) + 1, barrier  # the connections + the template
    assert all_in(), ipvs_status(b)
    print(f"rebooted B: all {len(clients)} connections in its kernel when first seen "
          f"MASTER: {seen_before_master}; barrier {barrier}")

    fail(lab, a)
    until("B MASTER of VI_1", lambda: b.vrrp("VI_1") == "MASTER", lab.logs)
    marks = [c.echoed() for c in clients]
    until("every connection flowing through B", lambda: all(
        c.result() is not None or c.echoed() >= m + 20 for c, m in zip(clients, marks)),
        lab.logs)
    results = [c.finish() for c in clients]
    assert all(r["error"] is None for r in results), results


def _modprobe(*modules: str) -> None:
    """Load extra modules from this UML run's module root (next to its init script)."""
    init = next(a[5:] for a in Path("/proc/cmdline").read_text().split()
                if a.startswith("init="))
    root = str(Path(init).parent / "modroot")
    for m in modules:
        p = subprocess.run(["modprobe", "-d", root, m], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"module {m}: {p.stderr.strip()}")


HOLD = """
import os, socket, sys, time
vip, n, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
socks = []
for i in range(n):
    s = socket.create_connection((vip, 80), timeout=20)
    f = s.makefile("rb")
    f.readline()
    for j in range(3):
        s.sendall(b"x\\n")
        f.readline()
    socks.append(s)
print("ports", " ".join(str(s.getsockname()[1]) for s in socks), flush=True)
deadline = time.time() + 120
while not os.path.exists(stop) and time.time() < deadline:
    time.sleep(0.1)
"""


def test_lossy_sync_link_converges(lab: Lab) -> None:
    """Both directors drop 20 % of their conn-sync channel packets (netem on the egress
    of eth0, only TCP port 7670): 60 connections through A all reach B's kernel."""
    _modprobe("sch_prio", "cls_u32", "sch_netem")
    a, b = start_pair(lab, sync=True)
    for d in (a, b):
        nsx(d.ns, "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio")
        nsx(d.ns, "tc", "qdisc", "add", "dev", "eth0", "parent", "1:3", "handle", "30:",
            "netem", "loss", "20%")
        for field in ("dport", "sport"):
            nsx(d.ns, "tc", "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip",
                "prio", "1", "u32", "match", "ip", field, str(PORT), "0xffff",
                "flowid", "1:3")
    stop = lab.root / "hold-stop"
    hold = subprocess.Popen(["ip", "netns", "exec", "e2eC", sys.executable, "-c", HOLD,
                             VIPS["VI_1"], "60", str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout is not None
        line = hold.stdout.readline().split()
        assert line and line[0] == "ports", line
        ports = {int(p) for p in line[1:]}
        assert len(ports) == 60

        def ports_in(ns: str) -> set[int]:
            return {r["cport"] for r in kernel_conns(ns)
                    if r["vaddr"] == VIPS["VI_1"] and r["caddr"] == CLIENT and r["cport"]}

        until("A's kernel holds the 60 connections", lambda: ports <= ports_in(a.ns),
              lab.logs)
        until("all 60 in B's kernel despite the loss", lambda: ports <= ports_in(b.ns),
              lambda: f"missing {sorted(ports - ports_in(b.ns))}\n{lab.logs()}", limit=90)
        drops = nsx(a.ns, "tc", "-s", "qdisc", "show", "dev", "eth0") \
            + nsx(b.ns, "tc", "-s", "qdisc", "show", "dev", "eth0")
        peer = b.connsync()["peers"]["1"]
        assert peer["entries.injected"] == peer["entries.received"] > 0, peer
        print(f"lossy link: 60/60 in B; B's peer 1: {peer}\n{drops}")
        lost = [int(n) for n in re.findall(r"qdisc netem 30:.*?\n\s*Sent \d+ bytes \d+ pkt "
                                           r"\(dropped (\d+)", drops, re.S)]
        assert len(lost) == 2 and sum(lost) > 0, drops  # the loss was real
    finally:
        stop.touch()
        hold.wait(20) if hold.poll() is None else None
        if hold.poll() is None:
            hold.kill()
            hold.wait(5)


GARBAGE_PEER = """
import sys, time, msgpack, zmq
from clusterbus.bus.security import load_public_key, load_secret_certificate
pub, sec = load_secret_certificate(sys.argv[1])
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.curve_publickey, s.curve_secretkey = pub, sec
s.curve_serverkey = load_public_key(sys.argv[2])
s.linger = 2000
s.connect(sys.argv[3])
frames = [[b"\\xc1"], [b"garbage" * 50], [msgpack.packb([1, 2, 3])],
          [msgpack.packb({"x": 1})], [b"a", b"b", b"c"], [msgpack.packb(["B", -1, "x", None])]]
for f in frames:
    s.send_multipart(f)
time.sleep(1.5)
s.close()
ctx.term()
print("sent", len(frames))
"""

BAD_DATAGRAMS = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
bad = [b"\\x00\\x07", b"garbage" * 20, bytes([0, 7, 0, 200, 3, 1, 0, 0]) + b"\\xff" * 40]
for d in bad:
    s.sendto(d, ("224.0.0.81", 8848))
print("sent", len(bad))
"""


def test_bad_datagrams_and_peer_garbage_change_only_counters(lab: Lab) -> None:
    """Undecodable sync datagrams leaving A's sync interface, and garbage frames from a
    client holding B's (authorized) key on A's channel, are counted; nothing else changes:
    A keeps running, its table is the same, and a new connection still reaches B."""
    a, b = start_pair(lab, sync=True)
    before = a.connsync()
    out = nsx(a.ns, sys.executable, "-c", BAD_DATAGRAMS, "10.81.200.1").split()
    n_bad = int(out[1])
    until("the bad datagrams counted", lambda: a.connsync()["counters"]
          ["capture.dropped.bad_datagram"] >= before["counters"]
          ["capture.dropped.bad_datagram"] + n_bad, lab.logs)
    out = nsx(b.ns, sys.executable, "-c", GARBAGE_PEER, f"{lab.keys}/d2.key_secret",
              f"{lab.keys}/d1.key", f"tcp://{a.addr}:{PORT}").split()
    n_frames = int(out[1])

    def dropped(st: dict[str, Any]) -> int:
        return sum(v for k, v in st["counters"].items()
                   if k.startswith("channel.dropped.") and k != "channel.dropped.send")

    until("the garbage frames counted", lambda: dropped(a.connsync()) >= dropped(before)
          + n_frames - 1, lab.logs)
    after = a.connsync()
    assert after["table"] == before["table"], (before, after)
    assert after["counters"]["capture.entries"] == before["counters"]["capture.entries"]
    assert "Traceback" not in a.log.read_text(), a.logs()
    changed = {k: (before["counters"].get(k), v) for k, v in after["counters"].items()
               if before["counters"].get(k) != v}
    print(f"garbage: counters changed on A: {changed}")
    # the link still works both ways
    c = lab.client(VIPS["VI_1"])
    until("a new connection in B's kernel", lambda: conn_in(
        b.ns, VIPS["VI_1"], c.cport, RS[int(c.server[2:])]), lab.logs)
    d = lab.client(VIPS["VI_2"])
    until("B's new connection in A's kernel", lambda: conn_in(
        a.ns, VIPS["VI_2"], d.cport, RS[int(d.server[2:])]), lab.logs)
    assert c.finish()["error"] is None and d.finish()["error"] is None


MASTER_MAXLEN = ("from clusterbus.plugins.connsync.kernel import SyncDaemons\n"
                 "print([d['maxlen'] for d in SyncDaemons().daemons() "
                 "if d['state'] == 'master'])")


def test_reload_applies_the_knobs_and_the_barrier_and_names_what_needs_a_restart(
        lab: Lab) -> None:
    """``clusterbus reload`` on A with a changed ``[connsync]``: A's kernel gets the new
    ``sync_threshold`` and its master daemon the new maxlen, A's barrier the new timeout;
    the new interface is kept (it needs a restart) and named in the verdict; the sync goes
    on."""
    a, b = start_pair(lab, sync=True)
    assert nsx(a.ns, "sysctl", "-n", "net.ipv4.vs.sync_threshold").split() == ["2", "50"]
    assert nsx(a.ns, sys.executable, "-c", MASTER_MAXLEN).strip() == "[1]"
    text = a.config.read_text()
    assert '[connsync]\ninterface = "sync0"\n' in text
    a.config.write_text(text.replace(
        '[connsync]\ninterface = "sync0"\n',
        '[connsync]\ninterface = "sync9"\nsync_threshold = [3, 60]\nkernel_maxlen = 200\n'
        'barrier_timeout = 0.8\n'))
    r = subprocess.run(["ip", "netns", "exec", a.ns, CLUSTERBUS, "reload", "-c", str(a.config),
                        "--timeout", "10"], capture_output=True, text=True, timeout=60)
    # applied, except the interface: exit 1, and the verdict says what waits for a restart
    assert r.returncode == 1, (r.stdout, r.stderr, a.logs())
    assert "needs a restart to apply: [connsync] interface 'sync0' -> 'sync9'" in r.stdout, \
        r.stdout
    until("A's sync_threshold set", lambda: nsx(
        a.ns, "sysctl", "-n", "net.ipv4.vs.sync_threshold").split() == ["3", "60"], lab.logs)
    until("A's master daemon restarted with maxlen 200", lambda: nsx(
        a.ns, sys.executable, "-c", MASTER_MAXLEN).strip() == "[200]", lab.logs)
    st = a.connsync()
    assert (st["barrier_timeout"], list(st["sync_threshold"]), st["kernel_maxlen"]) == (
        0.8, [3, 60], 200)
    assert st["restart_needed"] == {"interface": "'sync0' -> 'sync9'"}
    assert st["counters"]["knobs.failed"] == 0
    # still syncing on sync0: a new connection through A reaches B's kernel
    c = lab.client(VIPS["VI_1"])
    until("a new connection in B's kernel", lambda: conn_in(
        b.ns, VIPS["VI_1"], c.cport, RS[int(c.server[2:])]), lab.logs)
    assert c.finish()["error"] is None
    assert "Traceback" not in a.log.read_text(), a.logs()


def out_packets(d: Director, daddr: str) -> int:
    """The packets director ``d``'s IPVS forwarded from real server ``daddr`` back to
    clients (``OutPkts``: only NAT sees them)."""
    for line in nsx(d.ns, "ipvsadm", "-Ln", "--stats", "--exact").splitlines():
        f = line.split()
        if len(f) >= 4 and f[0] == "->" and f[1] == f"{daddr}:80":
            return int(f[3])
    raise AssertionError(f"no real server {daddr} in {d.name}'s IPVS")


def ct_ports(d: Director, vip: str, daddr: str) -> set[int]:
    """Client ports of director ``d``'s conntrack entries from the client to ``vip``:80
    whose reply comes from real server ``daddr`` (the NAT tuple IPVS gave them)."""
    out = nsx(d.ns, "conntrack", "-L", "-p", "tcp", check=False)
    pattern = (rf"src={re.escape(CLIENT)} dst={re.escape(vip)} sport=(\d+) dport=80 "
               rf"(?:\S+ )*?src={re.escape(daddr)} dst={re.escape(CLIENT)} sport=80")
    return {int(m) for m in re.findall(pattern, out)}


@pytest.mark.parametrize("sync,conntrack", [
    (True, False), (False, False),
    (True, True)],
    ids=["connsync", "no-connsync", "connsync-conntrack"])
def test_nat_failover_keeps_connections(nat_lab: Lab, sync: bool, conntrack: bool) -> None:
    """LVS-NAT, two-armed: the client on br0, the three real servers on br1 behind the
    directors, their default route via GATEWAY (VRRP instance VI_G on eth1, same owner and
    priorities as VIP1's VI_1), so their replies pass the director holding the VIP, whose
    IPVS rewrites them back to the VIP. A flowing connection through VIP1 (on A); A is
    killed and cut off from both networks; B takes VIP1 and the gateway. With conn-sync:
    no reset, the real server's replies go through B's IPVS, and a new connection of the
    client reaches the same real server (the template was synced). Without: the moved
    connection is reset (the test can fail).

    ``connsync-conntrack``: ``net.ipv4.vs.conntrack = 1`` (IPVS keeps a netfilter entry per
    connection, its reply tuple the real server's) and ``[connsync] conntrack = true``: A's
    netfilter entry of the connection, NAT reply tuple included, is created in B's table,
    and the connection goes on through B with it. A namespace tracks nothing until
    something asks for conntrack: here an FTP-NAT service (VIP:21), for which IPVS
    switches tracking on (this UML kernel's nf_tables has no filter chains, and there is
    no iptables)."""
    lab = nat_lab
    if conntrack:
        _modprobe("nf_conntrack_netlink")
        lab.layout = replace(NAT, ports=(80, 21))
    extra = "conntrack = true\n" if conntrack else ""
    a = lab.director("A", sync=sync, extra=extra)
    b = lab.director("B", sync=sync, extra=extra)
    vip = VIPS["VI_1"]
    for d in (a, b):
        if conntrack:
            nsx(d.ns, "sysctl", "-qw", "net.ipv4.vs.conntrack=1")
        d.start()
    settled(lab, [a, b], sync=sync)
    moved = lab.client(vip)
    until("data flowing", lambda: moved.echoed() >= 10, lab.logs)
    daddr = lab.rs_addr(moved)
    assert daddr.startswith(f"{INNER}."), daddr
    masq = [r for r in kernel_conns(a.ns) if r["cport"] == moved.cport and r["vaddr"] == vip]
    assert masq and masq[0]["daddr"] == daddr, ipvs_status(a)
    if sync:  # the NAT connection and its template are in B's kernel, masquerading
        until("A's NAT connection in B's kernel",
              lambda: conn_in(b.ns, vip, moved.cport, daddr),
              lambda: ipvs_status(b) + lab.logs())
    else:
        time.sleep(2.0)
        assert not conn_in(b.ns, vip, moved.cport, daddr)
    if conntrack:  # IPVS keeps A's netfilter entry; conn-sync creates it in B's table
        assert moved.cport in ct_ports(a, vip, daddr), nsx(a.ns, "conntrack", "-L")
        until("A's conntrack entry in B's table", lambda: moved.cport in ct_ports(b, vip, daddr),
              lambda: nsx(a.ns, "conntrack", "-L", check=False) + "\n"
              + nsx(b.ns, "conntrack", "-L", check=False) + json.dumps(
                  {k: v for k, v in b.connsync()["counters"].items() if "conntrack" in k})
              + lab.logs())

    fail(lab, a)
    for inst in ("VI_1", "VI_G"):
        until(f"B MASTER of {inst}", lambda i=inst: b.vrrp(i) == "MASTER", lab.logs)
    at_takeover = moved.echoed()
    until("the moved connection to go on or end",
          lambda: moved.result() is not None or moved.echoed() >= at_takeover + 40,
          lambda: "\n".join(moved.lines[-5:]) + ipvs_status(b) + lab.logs())
    res = moved.finish()
    print(f"NAT sync={sync} conntrack={conntrack}: moved {res}, before takeover "
          f"{at_takeover} echoes, server {moved.server}")
    if sync:
        assert res["error"] is None, (res, ipvs_status(b), lab.logs())
        assert res["echoed"] >= at_takeover + 40, res
        # the real server's replies went through B's IPVS (rewritten back to the VIP)
        assert out_packets(b, daddr) > 0, nsx(b.ns, "ipvsadm", "-Ln", "--stats")
        assert who_serves(vip) == moved.server  # the template was synced
        barrier = b.connsync()["last_barrier"]
        assert barrier["passed"] and barrier["instance"] in ("VI_1", "VI_G"), barrier
        if conntrack:
            peer = b.connsync()["peers"]["1"]
            assert peer["conntrack.created"] > 0 and peer["conntrack.failed"] == 0, peer
            assert moved.cport in ct_ports(b, vip, daddr), nsx(b.ns, "conntrack", "-L")
    else:  # broken: reset by B, or (when B took over slowly under load) the client's
        # retransmissions backed off past its 10 s read timeout before one reached B
        assert res["error"] is not None and ("Reset" in res["error"]
                                             or "timed out" in res["error"]), res
        assert not conn_in(b.ns, vip, moved.cport, daddr), ipvs_status(b)


def test_three_directors_sync_and_resync(lab3: Lab) -> None:
    """N directors: A owns VIP1, B owns VIP2, D backs both (priority 120, before the other
    owner). A's connection reaches both B's and D's kernels, B's both A's and D's. D
    reboots (SIGKILL, link cut, namespace and kernel table gone); meanwhile idle
    connections (a few packets, then nothing: no kernel sync would send them again) are
    opened to both VIPs. The new D receives the full tables of both A and B: every
    connection of both VIPs is in its kernel. Then A fails: D takes VIP1 and A's flowing
    connection goes on through D, a new connection reaches the same real server."""
    lab = lab3
    dirs = [lab.director(n, sync=True).start() for n in ("A", "B", "D")]
    a, b, d = dirs
    settled(lab, dirs, sync=True)
    c1, c2 = lab.client(VIPS["VI_1"]), lab.client(VIPS["VI_2"])
    until("data flowing on both", lambda: c1.echoed() >= 5 and c2.echoed() >= 5, lab.logs)
    for c, origin in ((c1, a), (c2, b)):
        for other in dirs:
            if other is not origin:
                until(f"{origin.name}'s connection in {other.name}'s kernel",
                      lambda c=c, o=other: conn_in(o.ns, c.vip, c.cport, lab.rs_addr(c)),
                      lambda o=other: ipvs_status(o) + lab.logs())
    for origin, n in ((a, "1"), (b, "2")):  # one stream per peer, each acknowledged
        for other in dirs:
            if other is not origin:
                peer = other.connsync()["peers"][n]
                assert peer["entries.injected"] > 0, (other.name, peer)

    mac = nsx(d.ns, "cat", "/sys/class/net/eth0/address").strip()
    fail(lab, d)
    sh("ip", "netns", "del", d.ns)
    lab.namespaces.remove(d.ns)
    stop = lab.root / "hold3-stop"
    holds = [subprocess.Popen(["ip", "netns", "exec", "e2eC", sys.executable, "-c", HOLD,
                               VIPS[inst], "4", str(stop)], stdout=subprocess.PIPE, text=True)
             for inst in ("VI_1", "VI_2")]
    try:
        idle: dict[str, set[int]] = {}
        for inst, h in zip(("VI_1", "VI_2"), holds):
            assert h.stdout is not None
            line = h.stdout.readline().split()
            assert line and line[0] == "ports", line
            idle[inst] = {int(p) for p in line[1:]}

        def ports_in(ns: str, inst: str) -> set[int]:
            return {r["cport"] for r in kernel_conns(ns)
                    if r["vaddr"] == VIPS[inst] and r["caddr"] == CLIENT and r["cport"]}

        until("the idle connections in A's and B's kernels",
              lambda: idle["VI_1"] <= ports_in(a.ns, "VI_1") & ports_in(b.ns, "VI_1")
              and idle["VI_2"] <= ports_in(b.ns, "VI_2") & ports_in(a.ns, "VI_2"), lab.logs)

        d = lab.director("D", sync=True, mac=mac)  # a new namespace: an empty IPVS table
        assert not [r for r in kernel_conns(d.ns) if r["caddr"] == CLIENT]
        d.start()
        for inst, c in (("VI_1", c1), ("VI_2", c2)):
            until(f"every {inst} connection in the new D's kernel",
                  lambda i=inst, c=c: idle[i] | {c.cport} <= ports_in(d.ns, i)
                  and conn_in(d.ns, c.vip, c.cport, lab.rs_addr(c)),
                  lambda i=inst: f"missing {sorted(idle[i] - ports_in(d.ns, i))}\n"
                  + ipvs_status(d) + lab.logs())
        log = d.log.read_text()
        for node in (1, 2):
            assert f"node {node}'s full table received" in log, d.logs()
        peers = d.connsync()["peers"]
        assert all(peers[n]["last_resync_s"] is not None and peers[n]["entries.injected"]
                   >= 4 for n in ("1", "2")), peers
        settled(lab, [a, b, d], sync=True)

        fail(lab, a)
        until("D MASTER of VI_1", lambda: d.vrrp("VI_1") == "MASTER", lab.logs)
        until("B still BACKUP of VI_1 (D's priority is higher)",
              lambda: b.vrrp("VI_1") == "BACKUP", lab.logs)
        mark = c1.echoed()
        until("A's connection flowing through D",
              lambda: c1.result() is not None or c1.echoed() >= mark + 40,
              lambda: "\n".join(c1.lines[-5:]) + lab.logs())
        res, kept = c1.finish(), c2.finish()
        got = {n: (p["entries.received"], p["entries.injected"]) for n, p in peers.items()}
        print(f"three directors: moved {res}, kept {kept}; the restarted D's peers "
              f"(received, injected): {got}")
        assert res["error"] is None and kept["error"] is None, (res, kept, lab.logs())
        assert who_serves(VIPS["VI_1"]) == c1.server
    finally:
        stop.touch()
        for h in holds:
            try:
                h.wait(20)
            except subprocess.TimeoutExpired:
                h.kill()
                h.wait(5)
