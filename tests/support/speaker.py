"""Run clusterbus's own VRRP speaker (``clusterbus run -c FILE``) inside a test namespace,
and watch it from another one.

The daemon runs with the netlink source off and, unless ``bus=True``, the bus off, so
several can run at once on one machine; its log goes to a file in the test's directory.
With ``bus=True`` the bus listens on ``ipc://`` sockets in the test's directory (files cross
network namespaces), so ``clusterbus status``, ``reload`` and ``events`` reach it from the
test: see :meth:`Speaker.cli`, :meth:`Speaker.status`, :meth:`Speaker.reload`.

Observers: :class:`AddrMonitor` (``ip -ts monitor address``: when a VIP came and went),
:class:`AdvertSniffer` (the adverts a namespace receives, with kernel timestamps), and
:func:`ingest_flood` (membership reports pushed into a daemon's ingest socket as fast as
ZeroMQ takes them, pre-encoded as ``clusterbus emit --via zmq`` sends them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cbdaemon import CLUSTERBUS
from keepalived import VrrpInstance, wait_for
from netns import Topology

__all__ = ["Speaker", "CLUSTERBUS", "AddrMonitor", "AdvertSniffer", "held_intervals",
           "ingest_flood", "advert_gaps"]

def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@dataclass
class Speaker:
    """A clusterbus daemon running ``instances`` in namespace ``ns``.

    :param extra: extra TOML appended to the file (e.g. a ``[keepalived]`` section).
    """

    ns: str
    workdir: Path
    instances: list[VrrpInstance]
    node: int = 1
    extra: str = ""
    garp_delay: float = 5.0
    #: every instance's ``prepare_timeout`` (0: left out, the default of one interval)
    prepare_timeout: float = 0.0
    bus: bool = False
    env: dict[str, str] | None = None
    log_level: str = "info"
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / f"clusterbus-{self.ns}.toml"
        self.logfile = self.workdir / f"clusterbus-{self.ns}.log"

    def _bus(self) -> str:
        if not self.bus:
            return "[bus]\nenabled = false\n\n"
        ep = f"ipc://{self.workdir}/{self.ns}"
        return (f'[bus]\npublish = "{ep}.pub"\ningest = "{ep}.ingest"\n'
                f'snapshot = "{ep}.snap"\nheartbeat_interval = 0.2\n\n')

    def render(self) -> str:
        text = (f"[daemon]\nnode = {self.node}\nlog_level = \"{self.log_level}\"\n"
                f"state_dir = \"{self.workdir}/state-{self.ns}\"\n\n"
                f"{self._bus()}[netlink]\nenabled = false\n\n")
        for i in self.instances:
            text += (
                "[[vrrp.instance]]\n"
                f'name = "{i.name}"\n'
                f'interface = "{i.interface}"\n'
                f"vrid = {i.vrid}\n"
                f"priority = {i.priority}\n"
                f"advert_interval = {float(i.advert_int)!r}\n"
                f"version = {i.version}\n"
                f"virtual_ipaddress = {_toml_list(i.vips)}\n"
                f"preempt = {'true' if i.preempt else 'false'}\n"
                f"preempt_delay = {float(i.preempt_delay)!r}\n"
                f"unicast_peer = {_toml_list(i.unicast_peers)}\n"
                + (f'unicast_src_ip = "{i.unicast_src}"\n' if i.unicast_src else "")
                + (f"prepare_timeout = {float(self.prepare_timeout)!r}\n"
                   if self.prepare_timeout else "") +
                f"garp_delay = {float(self.garp_delay)!r}\n\n"
            )
        return text + self.extra

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("speaker already running")
        self.conf.write_text(self.render())
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(
                Topology.prefix(self.ns) + [CLUSTERBUS, "run", "-c", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})})
        finally:
            log.close()

    def cli(self, *args: str, timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``clusterbus ARGS -c FILE`` from the test's namespace (needs ``bus=True``)."""
        # A wide terminal for rich, so `status` does not wrap values.
        p = subprocess.run([CLUSTERBUS, *args, "-c", str(self.conf)], capture_output=True,
                           text=True, timeout=timeout,
                           env={**os.environ, "COLUMNS": "250", **(self.env or {})})
        if check and p.returncode != 0:
            raise AssertionError(f"clusterbus {' '.join(args)} -> {p.returncode}: {p.stderr}")
        return p

    def status(self) -> dict[str, Any]:
        """``clusterbus status --json``: the daemon's status (needs ``bus=True``)."""
        return json.loads(self.cli("status", "--json").stdout)

    def instance_status(self, name: str = "VI_1") -> dict[str, Any]:
        """The speaker's status of one instance."""
        for inst in self.status()["services"]["vrrp"]["instances"]:
            if inst["name"] == name:
                return inst
        raise KeyError(name)

    def reconfigure(self, **changes: Any) -> None:
        """Rewrite the configuration file with ``changes`` applied to every instance (no
        signal: see :meth:`reload`)."""
        self.instances = [replace(i, **changes) for i in self.instances]
        self.conf.write_text(self.render())

    def reload(self, **changes: Any) -> None:
        """Rewrite the configuration with ``changes`` and run ``clusterbus reload``."""
        self.reconfigure(**changes)
        # exit 1: applied except what needs a restart (e.g. a new VRID), which it names
        p = self.cli("reload", check=False)
        assert p.returncode in (0, 1) and "): applied" in p.stdout, p

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_running(self, timeout: float = 15) -> None:
        """Wait until the speaker logged that it runs (raise if it exited)."""
        def ready() -> bool:
            if not self.running():
                raise RuntimeError(f"clusterbus exited: {self.log_tail()}")
            return "VRRP speaker running" in self.logfile.read_text(errors="replace")
        wait_for(ready, timeout, what="the clusterbus speaker to start")

    def children(self) -> list[int]:
        """Pids of the daemon's child processes (the speaker's own process)."""
        if not self.running():
            return []
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            return []

    def crash(self) -> None:
        """Every process of the daemon stopped at once (SIGSTOP, then SIGKILL), as
        keepalived's ``crash()`` does: nothing is released (VIPs stay on the interface, no
        priority 0). Killing the daemon alone would let its speaker process send adverts
        until the daemon's exit closed its link (tens of milliseconds on a loaded host)."""
        if self.running():
            assert self.proc is not None
            pids = [self.proc.pid, *self.children()]
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM: the speaker sends priority 0 and removes its VIPs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.crash()
        return self.proc.returncode

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""


_ADDR_LINE = re.compile(r"^\[(\S+)\] (Deleted )?\d+: \S+\s+inet6? (\S+)/")


class CurveSpeaker(Speaker):
    """A :class:`Speaker` whose bus has a CURVE key pair (peer links need one): the key
    pair ``keys/d<node>.key_secret`` and the ``auth`` directory of authorized keys
    (:func:`cbdaemon.director_keys` makes both); set them before :meth:`render`."""

    keys: Path = Path()
    auth: Path = Path()
    heartbeat: float = 0.2

    def _bus(self) -> str:
        ep = f"ipc://{self.workdir}/{self.ns}"
        return (f'[bus]\npublish = "{ep}.pub"\ningest = "{ep}.ingest"\n'
                f'snapshot = "{ep}.snap"\nheartbeat_interval = {self.heartbeat}\n'
                f'certificate = "{self.keys}/d{self.node}.key_secret"\n'
                f'authorized_keys = "{self.auth}"\n\n')


class AddrMonitor:
    """``ip -ts monitor address`` in a namespace: a timestamped record of address changes.

    :param vip: the address (no prefix) whose changes :meth:`stop` returns.
    """

    def __init__(self, topo: Topology, ns: str, path: Path, vip: str,
                 ifname: str = "eth0") -> None:
        self.topo, self.ns, self.path, self.vip = topo, ns, path, vip
        self.out = open(path, "wb")
        self.proc = subprocess.Popen(Topology.prefix(ns) + ["ip", "-ts", "-o", "monitor",
                                                            "address"], stdout=self.out)
        # Make sure it listens before anything happens: a marker address must show up.
        marker = "10.77.0.250"
        def seen() -> bool:
            self.topo.exec(ns, ["ip", "addr", "replace", f"{marker}/32", "dev", ifname])
            return marker in path.read_text()
        wait_for(seen, 10, interval=0.1, what=f"ip monitor in {ns}")
        self.topo.exec(ns, ["ip", "addr", "del", f"{marker}/32", "dev", ifname])

    def changes(self) -> list[tuple[datetime, bool]]:
        """(time, added) for every change of the VIP so far."""
        out = []
        for line in self.path.read_text().splitlines():
            m = _ADDR_LINE.match(line)
            if m and m.group(3) == self.vip:
                out.append((datetime.fromisoformat(m.group(1)), m.group(2) is None))
        return out

    def stop(self) -> list[tuple[datetime, bool]]:
        """Stop; return (time, added) for every change of the VIP."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.out.close()
        return self.changes()


def held_intervals(changes: list[tuple[datetime, bool]],
                   end: datetime) -> list[tuple[datetime, datetime]]:
    """The intervals during which the address was held, from :meth:`AddrMonitor.stop`."""
    out, since = [], None
    for t, added in changes:
        if added and since is None:
            since = t
        elif not added and since is not None:
            out.append((since, t))
            since = None
    if since is not None:
        out.append((since, end))
    return out


#: Runs in a namespace: prints "<kernel receive time> <source> <priority>" per IPv4 VRRP
#: packet (SO_TIMESTAMPNS, wall clock).
_SNIFFER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
mreqn = struct.pack("4s4si", socket.inet_aton("224.0.0.18"), b"\0" * 4,
                    socket.if_nametoindex(sys.argv[1]))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
print("ready", flush=True)
while True:
    data, anc, _, (src, _) = s.recvmsg(2048, 64)
    t = None
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == 35:
            sec, nsec = struct.unpack("qq", value[:16])
            t = sec + nsec / 1e9
    ihl = (data[0] & 15) * 4
    prio = data[ihl + 2] if len(data) > ihl + 2 else -1
    print(f"{t:.6f} {src} {prio}", flush=True)
"""


class AdvertSniffer:
    """The IPv4 VRRP adverts a namespace receives, with kernel receive timestamps."""

    def __init__(self, ns: str, path: Path, ifname: str = "eth0") -> None:
        self.path = path
        self.out = open(path, "w+b")
        self.proc = subprocess.Popen(Topology.prefix(ns) + [sys.executable, "-c", _SNIFFER,
                                                            ifname], stdout=self.out)
        wait_for(lambda: b"ready" in path.read_bytes(), 10, what="the advert sniffer")

    def adverts(self, src: str | None = None) -> list[tuple[float, str, int]]:
        """(time, source, priority) of every advert received (from ``src``)."""
        out = []
        for line in self.path.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) == 3 and (src is None or parts[1] == src):
                out.append((float(parts[0]), parts[1], int(parts[2])))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.out.close()


def advert_gaps(times: list[float], start: float, end: float) -> list[float]:
    """Gaps between consecutive adverts over ``[start, end]``, the window's edges
    included: a window with no advert at all is one gap as long as the window."""
    inside = sorted(t for t in times if start <= t <= end)
    points = [start, *inside, end]
    return [b - a for a, b in zip(points, points[1:])]


#: Runs anywhere the ipc:// file is reachable: pushes argv[2] reports to argv[1] as fast
#: as ZeroMQ takes them (node.up / node.down in turns over 5000 nodes, so each one is a
#: real change), then prints the count and the seconds it took.
_FLOOD = r"""
import sys, time, zmq
from clusterbus.bus.codec import encode_ingest
endpoint, count = sys.argv[1], int(sys.argv[2])
nodes = 5000
frames = []
for n in range(1, nodes + 1):
    addr = f"10.200.{n // 250}.{n % 250 + 1}"
    frames.append((encode_ingest("node.up", n, (addr,)), encode_ingest("node.down", n, (addr,))))
ctx = zmq.Context()
s = ctx.socket(zmq.PUSH)
s.setsockopt(zmq.SNDHWM, 10000)
s.connect(endpoint)
t0 = time.monotonic()
for i in range(count):
    up, down = frames[i % nodes]
    s.send_multipart(down if (i // nodes) % 2 else up)
s.close(linger=60000)
ctx.term()
print(count, round(time.monotonic() - t0, 3), flush=True)
"""


def ingest_flood(speaker: Speaker, count: int, *, timeout: float = 300,
                 background: bool = False) -> subprocess.Popen[str]:
    """Push ``count`` membership reports into ``speaker``'s ingest socket (``bus=True``)
    as fast as they are taken. Returns the flooding process (waited for unless
    ``background``)."""
    endpoint = f"ipc://{speaker.workdir}/{speaker.ns}.ingest"
    proc = subprocess.Popen([sys.executable, "-c", _FLOOD, endpoint, str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not background:
        proc.wait(timeout)
    return proc
