"""The lab inside the UML kernel: topology, daemons, clients and the scenarios.

Run as ``python -m clusterbus.lab.scenario WORKDIR MODE [--no-sync]`` by the UML init
(see :mod:`clusterbus.lab.runner`); MODE is ``failover``, ``handoff`` or ``up``. Progress
lines are appended to ``WORKDIR/progress.log`` (the host shows them while the lab boots),
the outcome goes to ``WORKDIR/result.json``; ``up`` keeps the lab running, refreshes
``WORKDIR/status.json`` every second and ends when ``WORKDIR/stop`` appears.

Topology (one bridge ``lab0`` in UML's root namespace, 10.80.0.0/24)::

    wan (clients 10.80.0.101-106) --+
    d1  (director 1, 10.80.0.1)  ---+-- lab0 --+-- app1 10.80.0.11
    d2  (director 2, 10.80.0.2)  ---+          +-- app2 10.80.0.12
                                               +-- app3 10.80.0.13

VIP1 10.80.0.201 is VRRP instance VI_1, VIP2 10.80.0.202 is VI_2. Both directors run the
real daemon (``clusterbus run``) with its VRRP speaker, IPVS applier and the CVIP policy
(``[cvip]``, weighted so that VIP1 is director 1's and VIP2 director 2's, each the other's
backup; the directors are each other's ``[[cluster.peer]]`` over CURVE): the same two
virtual services on port 7000, scheduler ``mh``, direct routing to the three app nodes
(which hold the VIPs on their loopback). Connection sync, unless ``--no-sync``: conn-sync
(``[connsync]``), which runs the kernel's master and backup sync daemons on a dummy
interface in each director and relays their entries to the other director.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .app import ANSWER_TIMEOUT

__all__ = ["Lab", "main", "VIPS", "DIRECTORS", "APPS", "CLIENTS", "PORT", "director_config",
           "make_keys"]

SUBNET = 24
DIRECTORS = {1: "10.80.0.1", 2: "10.80.0.2"}
VIPS = {1: "10.80.0.201", 2: "10.80.0.202"}
APPS = {"app1": "10.80.0.11", "app2": "10.80.0.12", "app3": "10.80.0.13"}
PORT = 7000
#: (name, source address, VIP number): four clients of VIP1 (the one that moves), two of VIP2.
CLIENTS = (("c1", "10.80.0.101", 1), ("c2", "10.80.0.102", 1), ("c3", "10.80.0.103", 1),
           ("c4", "10.80.0.104", 1), ("c5", "10.80.0.105", 2), ("c6", "10.80.0.106", 2))
#: VRRP priorities: instance VI_n is owned (150) by director n, backed (100) by the other.
HIGH, LOW, DRAINED = 150, 100, 50
ADVERT = 0.2  # seconds; UML is one virtual CPU shared by every process of the lab
#: conn-sync: the dummy interface of the kernel's sync daemons in each director, its
#: addresses, the sync id and the channel's port
SYNC_IF, SYNC_NET, SYNCID, CONNSYNC_PORT = "sync0", "10.79.200", 51, 7670
#: [cvip]: the weight of a VIP's home director (the other has 1), and the seconds a director
#: waits after its start before it claims a VIP nobody announced
WEIGHT, SETTLE = 100, 12.0
RUN_DIR = Path("/run/cblab")  # UML's private tmpfs: ipc sockets and state never touch the host
PYTHON = sys.executable
CLI = [PYTHON, "-c", "from clusterbus.cli import main; main()"]


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def nsx(ns: str, *cmd: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


def director_config(n: int, *, sync: bool, keys: Path, cvip: bool = True,
                    drained: bool = False) -> str:
    """The TOML file of director ``n``.

    The bus listens with CURVE on the director's lab address (key pairs from
    :func:`make_keys` in ``keys``) and the other director is its ``[[cluster.peer]]``: the
    links carry the CVIP policy's facts and claims. With ``sync`` the director runs
    conn-sync (``[connsync]`` on its dummy sync interface ``sync0``, relaying to the peer's
    ``connsync`` endpoint; conn-sync runs the kernel's master and backup sync daemons itself,
    so there is no ``[ipvs.sync_daemon]``); without it no connection sync at all.

    :param cvip: the CVIP policy plugin decides the owners (``[cvip]``: VIP1 weighted to
        director 1, VIP2 to director 2); otherwise fixed VRRP priorities do.
    :param drained: (without ``cvip``) director 1's VI_1 at the drained priority.
    """
    def prio(inst: int) -> int:
        if cvip:
            return LOW  # every instance starts as a backup: the policy raises the owner's
        if inst == n:
            return DRAINED if (drained and inst == 1) else HIGH
        return LOW

    peer = 3 - n
    text = (f'[daemon]\nnode = {n}\nlog_level = "info"\nstate_dir = "{RUN_DIR}/d{n}-state"\n\n'
            f'[bus]\npublish = "tcp://{DIRECTORS[n]}:7661"\n'
            f'ingest = "ipc://{RUN_DIR}/d{n}.ingest"\nsnapshot = "tcp://{DIRECTORS[n]}:7663"\n'
            f'certificate = "{keys}/d{n}.key_secret"\n'
            f'authorized_keys = "{keys}/authorized"\n\n')
    text += "[netlink]\nenabled = false\n\n"
    plugins = ["nodemap", "ipvs"] + (["connsync"] if sync else []) + (["cvip"] if cvip else [])
    text += f"[plugins]\nenable = {json.dumps(plugins)}\n\n"
    text += (f"[[cluster.peer]]\nnode = {peer}\n"
             f'publish = "tcp://{DIRECTORS[peer]}:7661"\n'
             f'snapshot = "tcp://{DIRECTORS[peer]}:7663"\n'
             f'public_key = "{keys}/d{peer}.key"\n'
             + (f'connsync = "tcp://{DIRECTORS[peer]}:{CONNSYNC_PORT}"\n' if sync else "")
             + "\n")
    for inst, vip in VIPS.items():
        text += ("[[vrrp.instance]]\n"
                 f'name = "VI_{inst}"\ninterface = "eth0"\nvrid = {50 + inst}\n'
                 f"priority = {prio(inst)}\nadvert_interval = {ADVERT}\nversion = 3\n"
                 f'virtual_ipaddress = ["{vip}/{SUBNET}"]\npreempt = true\n'
                 "garp_delay = 1.0\n\n")
    text += "[ipvs]\nreconcile_interval = 0\n\n"
    for vip in VIPS.values():
        text += (f'[[ipvs.virtual_server]]\naddress = "{vip}:{PORT}"\nscheduler = "mh"\n')
        for addr in APPS.values():
            text += ("  [[ipvs.virtual_server.real_server]]\n"
                     f'  address = "{addr}:{PORT}"\n  forward = "dr"\n')
        text += "\n"
    if sync:
        text += connsync_block(n)
    if cvip:
        text += cvip_block(n)
    return text


def connsync_block(n: int) -> str:
    """``[connsync]`` of director ``n``: the kernel's sync daemons on the dummy ``sync0``
    (their multicast never leaves the namespace: the peer learns entries only through
    conn-sync), the channel on the lab address."""
    return (f'[connsync]\ninterface = "{SYNC_IF}"\n'
            f'listen = "tcp://{DIRECTORS[n]}:{CONNSYNC_PORT}"\nsyncid = {SYNCID}\n\n')


def cvip_block(n: int) -> str:
    """``[cvip]`` of director ``n``: VIP ``v`` may live on either director, weighted so that
    rendezvous hashing gives VIP1 to director 1 and VIP2 to director 2 (checked by
    tests/unit/test_lab.py). ``settle_time`` covers the daemons' start inside UML: a
    director claims nothing before it has heard its peer."""
    text = (f"[cvip]\npriority_owner = {HIGH}\npriority_backup = {LOW}\n"
            f"settle_time = {SETTLE}\nhandoff_timeout = 3.0\n"
            f'control = "{control_socket(n)}"\n\n')
    for v, vip in VIPS.items():
        text += (f'[[cvip.vip]]\naddress = "{vip}/{SUBNET}"\ninterface = "eth0"\n'
                 f"vrid = {50 + v}\ndirectors = {json.dumps(sorted(DIRECTORS))}\n"
                 f"weight = {{ {v} = {WEIGHT} }}\n\n")
    return text


def control_socket(n: int) -> Path:
    """Director ``n``'s ``[cvip] control`` socket (one filesystem for every namespace)."""
    return RUN_DIR / f"d{n}-cvip" / "control.sock"


def make_keys(directory: Path) -> Path:
    """CURVE key pairs ``d1``, ``d2`` in ``directory``, and ``authorized/`` holding both
    public keys (the directors' bus and conn-sync channel are CURVE-only)."""
    import shutil

    from clusterbus.keygen import write_certificates

    authorized = directory / "authorized"
    authorized.mkdir(parents=True, exist_ok=True)
    for n in DIRECTORS:
        public, _ = write_certificates(directory, f"d{n}", force=True)
        shutil.copy(public, authorized / public.name)
    return directory


class Lab:
    """The topology and its processes inside UML (one instance per run)."""

    def __init__(self, workdir: Path, *, sync: bool, cvip: bool = True) -> None:
        self.workdir = workdir
        self.sync = sync
        self.t0 = time.time()
        self.timeline: list[dict[str, Any]] = []
        self.namespaces: list[str] = []
        self.daemons: dict[int, subprocess.Popen[bytes]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.events_path = workdir / "client-events.jsonl"
        self.stop_clients_path = workdir / "clients.stop"
        self.progress_file = open(workdir / "progress.log", "a", buffering=1)
        self.sync_mode = "off"
        self.connsync = "off"
        self.cvip = cvip
        self.synced: int | None = None  # VIP1 connections director 2 got from director 1
        self.killed: set[int] = set()
        self.result_start = 0.0
        self.method = ""

    # -- reporting
    def progress(self, text: str) -> None:
        self.progress_file.write(f"{time.time() - self.t0:6.1f}s  {text}\n")

    def mark(self, what: str, **extra: Any) -> float:
        now = time.time()
        self.timeline.append({"t": now, "what": what, **extra})
        self.progress(what)
        return now

    # -- topology
    def _node(self, ns: str, addrs: tuple[str, ...]) -> None:
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "add", f"v{ns}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", f"v{ns}", "master", "lab0", "up")
        for a in addrs:
            nsx(ns, "ip", "addr", "add", f"{a}/{SUBNET}", "dev", "eth0")
        nsx(ns, "ip", "link", "set", "eth0", "up")
        nsx(ns, "ip", "link", "set", "lo", "up")

    def build(self) -> None:
        self.progress("building the topology: bridge lab0, namespaces wan, d1, d2, app1-3")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        sh("ip", "link", "add", "lab0", "type", "bridge")
        sh("ip", "link", "set", "lab0", "up")
        self._node("wan", tuple(src for _, src, _ in CLIENTS))
        for n, addr in DIRECTORS.items():
            self._node(f"d{n}", (addr,))
            nsx(f"d{n}", "sysctl", "-qw", "net.ipv4.ip_forward=1")
            if self.sync:  # the kernel's sync daemons' own interface: a dummy, local only
                nsx(f"d{n}", "ip", "link", "add", SYNC_IF, "type", "dummy")
                nsx(f"d{n}", "ip", "addr", "add", f"{SYNC_NET}.{n}/24", "dev", SYNC_IF)
                nsx(f"d{n}", "ip", "link", "set", SYNC_IF, "multicast", "on", "up")
        for name, addr in APPS.items():
            self._node(name, (addr,))
            for vip in VIPS.values():  # direct routing: the VIPs on loopback, no ARP for them
                nsx(name, "ip", "addr", "add", f"{vip}/32", "dev", "lo")
            for key in ("arp_ignore=1", "arp_announce=2"):
                nsx(name, "sysctl", "-qw", f"net.ipv4.conf.all.{key}")
            self._spawn(name, [PYTHON, "-m", "clusterbus.lab.app", "server", name, str(PORT)],
                        ready=True)
        self.progress("app1-3: the persistent service listens on port 7000")

    def _spawn(self, ns: str, argv: list[str], *, ready: bool = False,
               log: Path | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if ready else out,
                                 stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.procs.append(p)
        if ready:
            assert p.stdout is not None
            line = p.stdout.readline().decode().strip()
            if line != "ready":
                raise RuntimeError(f"{ns}: {argv[-3:]} did not start ({line!r})")
        return p

    def write_config(self, n: int, *, drained: bool = False) -> Path:
        path = self.workdir / f"d{n}.toml"
        path.write_text(director_config(n, sync=self.sync, keys=RUN_DIR / "keys",
                                        cvip=self.cvip, drained=drained))
        return path

    def start_daemons(self) -> None:
        make_keys(RUN_DIR / "keys")
        self.sync_mode = "connsync" if self.sync else "off"
        self.connsync = "on" if self.sync else "off"
        for n in DIRECTORS:
            conf = self.write_config(n)
            check = subprocess.run(["ip", "netns", "exec", f"d{n}", *CLI, "check-config",
                                    "-c", str(conf)], capture_output=True, text=True,
                                   timeout=120)
            if check.returncode != 0:
                why = (check.stderr.strip().splitlines() or ["?"])[-1]
                raise RuntimeError(f"director {n}'s file is refused: {why}")
        self.progress("connection sync: " + ("conn-sync (kernel master + backup daemons on "
                                             f"{SYNC_IF}, relayed over CURVE)" if self.sync
                                             else "off (--no-sync)"))
        for n in DIRECTORS:
            self.daemons[n] = self._spawn(f"d{n}", [*CLI, "run", "-c", str(self.workdir
                                                                        / f"d{n}.toml")],
                                          log=self.workdir / f"d{n}.log")
        self.progress("directors: clusterbus daemons started (VRRP speaker, IPVS applier"
                      + (", conn-sync" if self.sync else "")
                      + (", CVIP policy" if self.cvip else "") + ")")
        self._wait_owners()
        self.progress("VRRP: VIP1 held by director 1, VIP2 by director 2"
                      + (" (the CVIP policy's owners)" if self.cvip else ""))
        self.wait(lambda: all(nsx(f"d{n}", "ipvsadm", "-Ln").count(f":{PORT}") == 8
                              for n in DIRECTORS), 60, "the IPVS tables on both directors")
        self.progress("IPVS: 2 virtual services x 3 real servers (mh, direct routing) on both")
        if self.sync:
            def both(n: int) -> bool:
                out = nsx(f"d{n}", "ipvsadm", "-L", "--daemon")
                return "master sync daemon" in out and "backup sync daemon" in out

            self.wait(lambda: all(both(n) for n in DIRECTORS), 60,
                      "the kernel sync daemons (master and backup on each director)")
            self.progress(f"conn-sync: master and backup sync daemons on {SYNC_IF} "
                          "on both directors")

    def start_clients(self) -> None:
        targets = [f"{name}={src}>{VIPS[v]}:{PORT}" for name, src, v in CLIENTS]
        self.stop_clients_path.unlink(missing_ok=True)
        self._spawn("wan", [PYTHON, "-m", "clusterbus.lab.app", "clients",
                            str(self.events_path), str(self.stop_clients_path), *targets])
        self.wait(lambda: len({e["client"] for e in self.events() if e["event"] == "connect"})
                  == len(CLIENTS), 60, "every client connected")
        first = {e["client"]: e for e in reversed(self.events()) if e["event"] == "connect"}
        for name, _, v in CLIENTS:
            self.progress(f"client {name} -> VIP{v}: {first[name]['server']} "
                          f"session {first[name]['session']}")

    def wait_synced(self) -> None:
        """Until director 2 knows every VIP1 connection (from director 1's sync)."""
        sources = [src for _, src, v in CLIENTS if v == 1]

        def known() -> bool:
            table = nsx("d2", "ipvsadm", "-Lnc")
            return all(f"{src}:" in table for src in sources)

        self.wait(known, 30, "director 2 to learn VIP1's connections")
        # and it learnt them through conn-sync: its table holds them with origin director 1
        show = subprocess.run(["ip", "netns", "exec", "d2", *CLI, "connsync", "show", "--json",
                               "--timeout", "10", "-c", str(self.workdir / "d2.toml")],
                              capture_output=True, text=True, timeout=60)
        try:
            rows = json.loads(show.stdout)["rows"]
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"clusterbus connsync show on director 2: exit "
                               f"{show.returncode}: {show.stderr.strip()[-300:]}") from None
        self.synced = sum(1 for r in rows if r["origin"] == 1 and not r["template"]
                          and r["virtual"] == f"{VIPS[1]}:{PORT}")
        self.progress(f"conn-sync: director 2 knows all {len(sources)} VIP1 connections "
                      f"({self.synced} entries from director 1 in its conn-sync table)")

    # -- observation
    def holds(self, n: int, vip: int) -> bool:
        """Whether director ``n`` has VIP ``vip`` on its interface."""
        out = nsx(f"d{n}", "ip", "-4", "-o", "addr", "show", "dev", "eth0", check=False)
        return f" {VIPS[vip]}/" in out

    def _wait_owners(self, timeout: float = 150.0) -> None:
        """Wait for VIP1 on director 1 and VIP2 on director 2. With the CVIP policy, a
        director that started more than ``settle_time`` after the other (UML starting
        Python slowly on a busy host) finds both VIPs claimed by the first, and the policy
        keeps them there (sticky): after ``SETTLE`` seconds more, the lab asks for what an
        operator would, ``clusterbus cvip rebalance`` (director 1's control socket, from
        this process), again every 15 s while director 2 is not yet a live candidate."""
        def placed() -> bool:
            return self.holders(1) == [1] and self.holders(2) == [2]

        what = "VIP1 on director 1 and VIP2 on director 2"
        if not self.cvip:
            self.wait(placed, timeout, what)
            return
        from clusterbus.plugins.cvip.cli import control_request

        def owners_known() -> bool:
            # VRRP places the VIPs by the configured priorities before the CVIP policy has
            # settled (settle_time after start); a scenario that asks the policy for a
            # move before then finds no owner to move from: wait until both directors'
            # policies own VIP1 by 1 and VIP2 by 2
            for n in DIRECTORS:
                try:
                    show = control_request(str(control_socket(n)), {"op": "show"})["show"]
                except (OSError, ValueError, KeyError):
                    return False
                owners = {c["cvip"].split("/")[0]: c["owner"] for c in show["cvips"]}
                if not show["settled"] or any(owners.get(VIPS[v]) != v for v in VIPS):
                    return False
            return True

        def placed_and_owned() -> bool:
            return placed() and owners_known()

        deadline = time.monotonic() + timeout
        wait = 2 * SETTLE + 10
        while True:
            try:
                self.wait(placed_and_owned, max(1.0, min(wait, deadline - time.monotonic())),
                          what + " (CVIP owners)")
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
            reply = control_request(str(control_socket(1)), {"op": "rebalance"}, timeout=30)
            self.progress("CVIP policy: one director started late and the other holds both "
                          f"VIPs; clusterbus cvip rebalance: {reply.get('moves', reply)}")
            wait = 15.0

    def holders(self, vip: int) -> list[int]:
        """The directors holding ``vip``: a killed director keeps its address (it is cut off)."""
        return [n for n in DIRECTORS if self.holds(n, vip)]

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout:.0f} s")
            for n, p in self.daemons.items():
                if p.poll() is not None and n not in self.killed:
                    tail = (self.workdir / f"d{n}.log").read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"director {n}'s daemon exited ({p.returncode}):\n{tail}")
            time.sleep(0.1)

    def status(self) -> dict[str, Any]:
        """What ``clusterbus lab status`` shows."""
        last: dict[str, dict[str, Any]] = {}
        resets: dict[str, int] = {}
        for e in self.events():
            if e["event"] == "connect":
                last[e["client"]] = e
            elif e["event"] == "reset":
                resets[e["client"]] = resets.get(e["client"], 0) + 1
        return {
            "vips": {f"VIP{v}": {"address": VIPS[v], "directors": self.holders(v)} for v in VIPS},
            "daemons": {f"d{n}": p.poll() is None for n, p in self.daemons.items()},
            "sync": self.sync_mode, "connsync": self.connsync,
            "clients": {name: {"vip": f"VIP{v}", "server": last.get(name, {}).get("server"),
                               "session": last.get(name, {}).get("session"),
                               "resets": resets.get(name, 0)} for name, _, v in CLIENTS},
        }

    # -- scenarios
    def failover(self) -> None:
        self.progress("scenario: failover of director 1 (daemon killed, link cut)")
        self.method = "SIGKILL of director 1's daemon + link down"
        start = self.mark("director 1: daemon killed (SIGKILL) and its link cut")
        self.killed.add(1)
        self.daemons[1].kill()
        sh("ip", "link", "set", "vd1", "down")
        self._follow_vip1(start)

    def handoff(self) -> None:
        self.progress("scenario: planned handoff of VIP1 from director 1 to director 2")
        if not self.cvip:
            self.write_config(1, drained=True)
            self.method = f"VI_1 priority {HIGH} -> {DRAINED} on director 1, reload"
            start = self.mark(f"director 1: VI_1 priority {HIGH} -> {DRAINED}, reload "
                              "(SIGHUP): planned handoff")
            assert self.daemons[1].pid is not None
            os.kill(self.daemons[1].pid, signal.SIGHUP)
            self._follow_vip1(start)
            return
        # the request `clusterbus cvip drain 1` sends, from this process: a new Python
        # process takes ~25 s to start inside UML and starves the directors meanwhile
        # (late adverts, a spurious takeover), which is not what a handoff is about
        from clusterbus.plugins.cvip.cli import control_request

        self.method = "clusterbus cvip drain 1 (its request on director 1's control socket)"
        start = self.mark("director 1: clusterbus cvip drain 1: planned handoff")
        reply = control_request(str(control_socket(1)),
                                {"op": "drain", "node": 1, "undo": False}, timeout=30)
        if not reply.get("ok"):
            raise RuntimeError(f"clusterbus cvip drain 1: {reply.get('error', 'refused')}")
        self.progress("clusterbus cvip drain 1: director 1: draining")
        self._follow_vip1(start)

    def daemon_log(self, n: int, since: float) -> list[dict[str, Any]]:
        """Director ``n``'s VRRP and sync daemon lines logged after ``since``, as timeline
        entries (the daemon's own timestamps: logging's local time, same clock)."""
        out: list[dict[str, Any]] = []
        path = self.workdir / f"d{n}.log"
        if not path.exists():
            return out
        for line in path.read_text(errors="replace").splitlines():
            if not any(k in line for k in ("clusterbus.vrrp.speaker: VI_", "ipvs: sync daemon",
                                           "clusterbus.plugins.cvip: cvip ",
                                           "clusterbus.plugins.connsync: connsync: ")):
                continue
            try:
                stamp, ms = line[:23].split(",")
                t = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
            except ValueError:
                continue
            if t >= since:
                out.append({"t": t, "what": f"director {n}: " + line.split(": ", 1)[1]})
        return out

    def _follow_vip1(self, start: float) -> None:
        self.wait(lambda: self.holds(2, 1), 30, "VIP1 on director 2")
        self.mark(f"VIP1 {VIPS[1]} seen on director 2 (ip addr)")
        # every client answers again on a connection made or kept after the move, or the
        # settle time ran out (a connection that hangs counts as a reset after ANSWER_TIMEOUT)
        moved = time.time()

        def settled() -> bool:
            seen = {e["client"] for e in self.events()
                    if e["t"] > moved + 1.0 and e["event"] in ("alive", "connect")}
            return len(seen) == len(CLIENTS)

        with contextlib.suppress(TimeoutError):
            self.wait(settled, ANSWER_TIMEOUT + 8, "answer from every client")
        time.sleep(1.5)
        self.result_start = start
        for n in DIRECTORS:
            self.timeline.extend(self.daemon_log(n, start - 0.5))
        self.timeline.sort(key=lambda e: float(e["t"]))

    def report(self, scenario: str) -> dict[str, Any]:
        start = self.result_start
        per: list[dict[str, Any]] = []
        for name, src, v in CLIENTS:
            evs = [e for e in self.events() if e["client"] == name]
            before = [e for e in evs if e["event"] == "connect" and e["t"] < start]
            after = [e for e in evs if e["event"] == "connect" and e["t"] >= start]
            resets = [e for e in evs if e["event"] == "reset" and e["t"] >= start]
            stalls = [e["seconds"] for e in evs if e["event"] == "stall" and e["t"] >= start]
            b = before[-1] if before else {}
            a = after[-1] if after else b
            per.append({
                "client": name, "source": src, "vip": f"VIP{v}",
                "server_before": b.get("server"), "server_after": a.get("server"),
                "session_before": b.get("session"), "session_after": a.get("session"),
                "kept": not resets and not after, "resets": len(resets),
                "first_reset": round(resets[0]["t"] - start, 3) if resets else None,
                "reset_error": resets[0]["error"] if resets else None,
                "max_stall": max(stalls, default=0.0),
            })
        timeline = list(self.timeline)
        for e in self.events():
            if e["t"] < start or e["event"] not in ("reset", "connect", "stall"):
                continue
            what = {"reset": f"connection reset ({e.get('error')})",
                    "connect": f"reconnected: {e.get('server')} session {e.get('session')}",
                    "stall": f"answer after {e.get('seconds')} s (connection kept)"}[e["event"]]
            timeline.append({"t": e["t"], "what": f"client {e['client']}: {what}"})
        timeline.sort(key=lambda e: float(e["t"]))
        return {
            "scenario": scenario, "sync": self.sync_mode, "connsync": self.connsync,
            "method": self.method,
            "cvip": "on" if self.cvip else "off",
            "connsync_entries": self.synced,
            "timeline": [{"t": round(e["t"] - start, 3), "what": e["what"]} for e in timeline],
            "clients": len(per),
            "resets": sum(1 for c in per if c["resets"]),
            "reset_events": sum(c["resets"] for c in per),
            "server_changed": sum(1 for c in per if c["server_before"] != c["server_after"]),
            "session_lost": sum(1 for c in per if c["session_before"] != c["session_after"]),
            "per_client": per,
        }

    def stop(self) -> None:
        self.stop_clients_path.touch()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.progress_file.close()


@contextlib.contextmanager
def _lab(workdir: Path, sync: bool) -> Iterator[Lab]:
    lab = Lab(workdir, sync=sync)
    try:
        yield lab
    finally:
        lab.stop()


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def run(workdir: Path, mode: str, *, sync: bool) -> int:
    """Run one lab session inside UML; the outcome (or the error) goes to result.json."""
    result = workdir / "result.json"
    try:
        with _lab(workdir, sync) as lab:
            lab.build()
            lab.start_daemons()
            lab.start_clients()
            if sync:
                lab.wait_synced()
            else:
                time.sleep(2.0)
            if mode == "up":
                lab.progress("lab is up")
                _write(workdir / "status.json", lab.status())
                while not (workdir / "stop").exists():
                    time.sleep(1.0)
                    _write(workdir / "status.json", lab.status())
                lab.progress("stopping")
                _write(result, {"scenario": "up", "stopped": True})
                return 0
            if mode == "failover":
                lab.failover()
            else:
                lab.handoff()
            _write(result, lab.report(mode))
        return 0
    except Exception as exc:  # any failure is reported to the host as one line
        _write(result, {"error": f"{type(exc).__name__}: {exc}"})
        return 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("failover", "handoff", "up"):
        sys.stderr.write("usage: scenario WORKDIR failover|handoff|up [--no-sync]\n")
        return 2
    return run(Path(argv[0]), argv[1], sync="--no-sync" not in argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
