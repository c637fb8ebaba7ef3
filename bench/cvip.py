#!/usr/bin/env python3
"""CVIP benchmark: planned moves under load, and owner crashes, clusterbus against keepalived.

Run as root from the repository: ``.venv/bin/python bench/cvip.py [--moves 6] [--crashes 7]
[--interval 0.1] [--backup-priority 190] [--lab] [--json]``. Not a test: it prints figures
and ratios, it asserts nothing.

Topology, once per system: two directors (network namespaces A and B) and a client
namespace C on one bridge; both systems run at once, each on its own bridge. Each director
runs a small TCP echo service on port 8080 (every connection: read one line, answer it,
close), so whoever holds the CVIP serves it. C runs ``--clients`` threads that connect to
the CVIP continuously, one short request per connection (connect timeout 3 s: a SYN lost in
a handoff gap is retransmitted, which is latency, not an error). A connection that fails
(refused, reset, timed out) is an error.

clusterbus: each director runs the daemon with its VRRP speaker, peer links (CURVE over
ipc://) and the CVIP policy (``[cvip]``, owner ``--owner-priority``, next in line
``--backup-priority``); a planned move is ``clusterbus cvip move``: the new owner raises its
priority, the old one steps down with a priority-0 advert.
Reference: keepalived on both, A at ``--owner-priority`` and B at the same backup priority
(``--reference-backup-priority`` to differ), same advert interval; a planned move is
lowering A's priority below B's (SIGHUP) and back, with no connection sync on either side
(conntrackd absent), as sites do it today. The moves run with load, one system after the
other.

Owner crash, alternating between the systems: half an interval after the survivor
received an advert from the owner, the owner's speaker and daemon (keepalived: both
processes) are stopped at once and its address removed (its host is gone); the time until
the CVIP is on the other director (``ip -ts monitor address``) is taken, and the medians
compared: ``crash_ratio`` = clusterbus / keepalived. Each crash also gives the time from
the survivor's last advert of the dead owner (kernel timestamps) to the CVIP: that is
Master_Down_Interval (3 * interval + Skew_Time, RFC 5798 §6.1) plus the speaker's own
latency (``late_ms``), free of the kill's phase.

Connection sync: conn-sync replicates IPVS connections, and here each director serves the
CVIP itself, so a connection in flight at a handoff may be reset whatever the sync.
``--lab`` also runs ``clusterbus lab handoff`` with and without conn-sync (User-Mode Linux,
real IPVS, persistent clients behind the directors): its resets are
``errors_clusterbus_connsync``.

``--json`` ends with one JSON object on the last line holding ``errors_clusterbus``,
``errors_reference`` and ``crash_ratio`` (and the details).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

from addrmonitor import AddrMonitor  # noqa: E402
from cbdaemon import CLUSTERBUS, director_keys  # noqa: E402
from keepalived import Keepalived, VrrpInstance, ns_has_addr, wait_for  # noqa: E402
from netns import Topology  # noqa: E402
from speaker import AdvertSniffer, CurveSpeaker  # noqa: E402

from clusterbus.plugins.cvip.cli import control_request  # noqa: E402

VIP = "10.79.0.100"
NET = "10.79.0"
PORT = 8080

#: Runs in a director's namespace: a one-line echo service on every address.
_SERVER = r"""
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1024)
print("ready", flush=True)
def serve(c):
    try:
        c.settimeout(5)
        data = c.recv(100)
        c.sendall(data)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

#: Runs in the client namespace: argv[1] threads hammer argv[2]:argv[3] until SIGTERM,
#: then print {"ok": N, "errors": {kind: N}, "when": [error times]} on one line.
_CLIENT = r"""
import json, signal, socket, sys, threading, time
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
ok = [0]
errors = {}
when = []
lock = threading.Lock()
def run():
    while not stop.is_set():
        try:
            c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3)
            try:
                c.settimeout(3)
                c.sendall(b"ping\n")
                if c.recv(100) != b"ping\n":
                    raise ConnectionError("short answer")
            finally:
                c.close()
            with lock:
                ok[0] += 1
        except (OSError, ConnectionError) as exc:
            kind = type(exc).__name__
            with lock:
                errors[kind] = errors.get(kind, 0) + 1
                when.append(round(time.time(), 3))
        time.sleep(0.005)
threads = [threading.Thread(target=run) for _ in range(int(sys.argv[1]))]
for t in threads:
    t.start()
print("ready", flush=True)
while not stop.is_set():
    stop.wait(0.2)
for t in threads:
    t.join(10)
print(json.dumps({"ok": ok[0], "errors": errors, "when": when}), flush=True)
"""


def in_windows(times: list[float], windows: list[tuple[float, float]]) -> int:
    """How many of ``times`` fall inside one of ``windows``."""
    return sum(1 for t in times if any(a <= t <= b for a, b in windows))


def master_down(interval: float, priority: int) -> float:
    """RFC 5798 §6.1: Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time, with
    Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256."""
    return 3 * interval + (256 - priority) * interval / 256


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def log_times(text: str, needle: str) -> list[float]:
    """Wall-clock times of the daemon's log lines holding ``needle``."""
    out = []
    for line in text.splitlines():
        m = _LOG_TIME.match(line)
        if m and needle in line:
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                       + int(m.group(2)) / 1000)
    return out


#: where in the advert cycle the owner is killed (fraction of an interval after an advert)
PHASE = 0.5


def last_advert(path: Path, src: str) -> float | None:
    """Receive time of the last advert from ``src`` in an :class:`AdvertSniffer`'s file
    (its tail only: it is polled every few milliseconds)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 2048))
        lines = f.read().decode(errors="replace").splitlines()[1:]
    for line in reversed(lines):
        parts = line.split()
        if len(parts) == 3 and parts[1] == src and parts[2] != "0":
            return float(parts[0])
    return None


class Director(CurveSpeaker):
    """A clusterbus daemon with a CURVE key pair, peer links and ``[cvip]``."""

    #: dead after three: 1.5 s. Shorter heartbeats made a loaded host (the daemon's loop
    #: stalled 0.2-0.7 s) declare a live owner down, and the CVIP moved without a crash.
    #: The crash figure does not depend on it: VRRP's Master_Down timer takes over first.
    heartbeat = 0.5

    def cvip(self) -> dict[str, Any] | None:
        p = self.cli("cvip", "show", "--json", "--timeout", "5", check=False)
        if p.returncode != 0:
            return None
        row: dict[str, Any] = json.loads(p.stdout)["cvips"][0]
        return row

    def owner(self) -> int | None:
        row = self.cvip()
        return None if row is None else row["owner"]


class Load:
    """The echo services on both directors and the clients in C."""

    def __init__(self, ns: dict[str, str], clients: int) -> None:
        self.servers = []
        for name in ("a", "b"):
            p = subprocess.Popen(Topology.prefix(ns[name]) + [sys.executable, "-c", _SERVER,
                                                              str(PORT)],
                                 stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            self.servers.append(p)
        self.ns_c = ns["c"]
        self.clients = clients
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(Topology.prefix(self.ns_c) + [
            sys.executable, "-c", _CLIENT, str(self.clients), VIP, str(PORT)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.proc = None
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        for p in [*self.servers, *([self.proc] if self.proc else [])]:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def topology(topo: Topology) -> dict[str, str]:
    return {"a": topo.host("a", f"{NET}.1/24"), "b": topo.host("b", f"{NET}.2/24"),
            "c": topo.host("c", f"{NET}.9/24")}


#: the directors' own addresses (the adverts' sources), by side key
ADDR = {"a": f"{NET}.1", "b": f"{NET}.2"}


class Side:
    """One system under test (its own bridge and namespaces): planned moves and crashes.

    Both sides run at once, so their crashes can alternate under the same load."""

    name = ""

    def __init__(self, stack: ExitStack, workdir: Path, interval: float, clients: int) -> None:
        self.workdir, self.interval = workdir, interval
        topo = stack.enter_context(Topology())
        self.topo = topo
        self.ns = topology(topo)
        self.mons = {k: AddrMonitor(self.ns[k], workdir / f"mon-{k}.txt", VIP) for k in "ab"}
        self.sniff = {k: AdvertSniffer(self.ns[k], workdir / f"adverts-{k}.txt") for k in "ab"}
        stack.callback(self._close_observers)
        self.load = Load(self.ns, clients)
        stack.callback(self.load.close)
        self.moved: list[float] = []
        self.gaps: list[float] = []
        self.windows: list[tuple[float, float]] = []
        self.crashes: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {"ok": 0, "errors": {}, "when": []}

    def _close_observers(self) -> None:
        for m in [*self.mons.values(), *self.sniff.values()]:
            m.close()

    # what each side provides
    def holder(self) -> str | None:
        """"a" or "b" when exactly that director holds the CVIP and is its owner."""
        raise NotImplementedError

    def request_move(self, cur: str, to: str) -> None:
        raise NotImplementedError

    def kill(self, key: str) -> None:
        raise NotImplementedError

    def restart(self, key: str) -> None:
        raise NotImplementedError

    def priority(self, key: str) -> int:
        """The VRRP priority of ``key`` now (a backup's sets its Skew_Time)."""
        raise NotImplementedError

    def transition_after(self, key: str, t0: float) -> float | None:
        """When ``key`` logged its BACKUP -> MASTER after ``t0`` (None: not known)."""
        return None

    # the measurements
    def moves(self, n: int) -> None:
        """``n`` planned moves under load, one second apart."""
        self.load.start()
        try:
            time.sleep(1.0)
            cur = wait_for(self.holder, 30, interval=0.1, what=f"{self.name}: an owner")
            for _ in range(n):
                to = "b" if cur == "a" else "a"
                t0 = time.time()
                self.request_move(cur, to)
                t1 = wait_for(lambda t0=t0, to=to: self.mons[to].added_after(t0), 30,
                              what=f"{self.name}: the move")
                gone = wait_for(lambda t0=t0, c=cur: self.mons[c].deleted_after(t0), 30,
                                what=f"{self.name}: the release")
                self.moved.append(t1 - t0)
                self.gaps.append(t1 - gone)
                self.windows.append((t0, t1 + 1.0))
                time.sleep(1.0)
                cur = wait_for(self.holder, 30, interval=0.1, what=f"{self.name}: the owner")
                assert cur == to, (self.name, cur, to)
        finally:
            self.result = self.load.stop()

    def crash(self) -> None:
        """Kill the owner (every process at once) and remove its address (its host is
        gone); time the CVIP's arrival on the other, from the kill and from the last
        advert the survivor received from the dead owner."""
        for _attempt in range(5):
            cur = wait_for(self.holder, 60, interval=0.1, what=f"{self.name}: an owner")
            other = "b" if cur == "a" else "a"
            prio = self.priority(other)
            # The kill comes at the same phase of the advert cycle on both sides: half an
            # interval after the survivor received an advert. Unsynchronised, the phase
            # alone moves a sample by up to one interval (the whole difference between the
            # sides with a few samples), while both speakers take over within a
            # millisecond of Master_Down_Interval after the last advert.
            time.sleep(self.interval * 1.5)
            seen = time.time()
            try:
                last_rx = wait_for(
                    lambda o=other, c=cur, s=seen: (t := last_advert(self.sniff[o].path,
                                                                     ADDR[c]))
                    is not None and t > s and t, 3, interval=0.002,
                    what=f"{self.name}: an advert of the owner")
            except TimeoutError:  # the owner changed meanwhile: look again
                print(f"{self.name}: no advert from the owner {cur}; looking again",
                      file=sys.stderr, flush=True)
                continue
            break
        else:
            raise TimeoutError(f"{self.name}: the owner never stayed put")
        time.sleep(max(0.0, last_rx + self.interval * PHASE - time.time()))
        t0 = time.time()
        self.kill(cur)
        self.topo.exec(self.ns[cur], ["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"],
                       check=False)
        t1 = wait_for(lambda: self.mons[other].added_after(t0), 30,
                      what=f"{self.name}: takeover")
        time.sleep(0.3)  # the sniffer's file catches up
        last = max((t for t, _src, p in self.sniff[other].adverts(ADDR[cur])
                    if t <= t1 and p > 0), default=None)
        expect = master_down(self.interval, prio)
        sample: dict[str, Any] = {"crash_ms": round((t1 - t0) * 1000, 1),
                                  "survivor_priority": prio,
                                  "master_down_ms": round(expect * 1000, 1)}
        if last is not None:
            # Master_Down_Interval from the last advert, then how late the VIP came after it
            sample["after_last_advert_ms"] = round((t1 - last) * 1000, 1)
            sample["late_ms"] = round((t1 - last - expect) * 1000, 1)
            sample["kill_after_advert_ms"] = round((t0 - last) * 1000, 1)
        tr = self.transition_after(other, t0)
        if tr is not None and last is not None:
            sample["timer_late_ms"] = round((tr - last - expect) * 1000, 1)
        self.crashes.append(sample)
        self.restart(cur)

    def figures(self) -> dict[str, Any]:
        return {"moves": self.moved, "gaps": self.gaps, "crashes": self.crashes,
                "load": self.result, "move_errors": in_windows(self.result["when"],
                                                                self.windows)}


class ClusterbusSide(Side):
    """Each director runs the daemon with its speaker, peer links and ``[cvip]``."""

    name = "clusterbus"

    def __init__(self, stack: ExitStack, workdir: Path, interval: float, clients: int,
                 owner_priority: int, backup_priority: int) -> None:
        super().__init__(stack, workdir, interval, clients)
        keys, auth = director_keys(workdir, (1, 2))
        self.node = {"a": 1, "b": 2}
        inst = VrrpInstance(vrid=52, priority=backup_priority, advert_int=interval, version=3,
                            vips=(f"{VIP}/24",))
        self.ds: dict[str, Director] = {}
        for k, n in self.node.items():
            p = 2 if n == 1 else 1
            other = self.ns["b" if k == "a" else "a"]
            extra = (f"[cvip]\nsettle_time = 1.0\npriority_owner = {owner_priority}\n"
                     f"priority_backup = {backup_priority}\n"
                     f'control = "{workdir}/{self.ns[k]}.cvip"\n\n'
                     f'[[cvip.vip]]\naddress = "{VIP}/24"\ninterface = "eth0"\nvrid = 52\n'
                     f"directors = [1, 2]\n\n"
                     f'[[cluster.peer]]\nnode = {p}\npublish = "ipc://{workdir}/{other}.pub"\n'
                     f'snapshot = "ipc://{workdir}/{other}.snap"\n'
                     f'public_key = "{keys}/d{p}.key"\n')
            d = Director(self.ns[k], workdir, [inst], node=n, extra=extra, bus=True,
                         garp_delay=0.0)
            d.keys, d.auth = keys, auth
            self.ds[k] = d
        stack.callback(lambda: [d.crash() for d in self.ds.values()])
        for d in self.ds.values():
            d.start()
        for d in self.ds.values():
            d.wait_running(60)
        wait_for(self.holder, 60, interval=0.2, what="clusterbus: one owner")

    def holder(self) -> str | None:
        owners = {d.owner() for d in self.ds.values()}
        o = owners.pop() if len(owners) == 1 else None
        key = {1: "a", 2: "b"}.get(o) if o is not None else None
        return key if key is not None and ns_has_addr(self.ns[key], VIP) else None

    def request_move(self, cur: str, to: str) -> None:
        # the request `clusterbus cvip move` sends, without the CLI's start-up time
        reply = control_request(f"{self.workdir}/{self.ns[cur]}.cvip",
                                {"op": "move", "cvip": VIP, "node": self.node[to]})
        assert reply.get("ok"), reply

    def kill(self, key: str) -> None:
        self.ds[key].crash()

    def restart(self, key: str) -> None:
        d = self.ds[key]
        d.start()
        d.wait_running(60)
        # it settles (settle_time), hears the owner's claim and takes its backup rank
        wait_for(lambda: (r := d.cvip()) is not None and r["owner"] is not None
                 and r["priority"] is not None and not r["holding"], 60, interval=0.2,
                 what="clusterbus: the restarted director follows the owner")

    def priority(self, key: str) -> int:
        row = self.ds[key].cvip()
        assert row is not None and row["priority"] is not None, row
        return int(row["priority"])

    def transition_after(self, key: str, t0: float) -> float | None:
        times = [t for t in log_times(self.ds[key].log_text(), "-> MASTER") if t >= t0]
        return min(times, default=None)


class KeepalivedSide(Side):
    """keepalived on both: A the owner, B the backup; a move lowers A's priority (SIGHUP)."""

    name = "keepalived"

    def __init__(self, stack: ExitStack, workdir: Path, interval: float, clients: int,
                 owner_priority: int, backup_priority: int) -> None:
        super().__init__(stack, workdir, interval, clients)
        self.owner_priority = owner_priority
        self.prio = {"a": owner_priority, "b": backup_priority}
        self.ka = {k: Keepalived(self.ns[k], workdir, [VrrpInstance(
            vrid=52, priority=self.prio[k], advert_int=interval, version=3,
            vips=(f"{VIP}/24",))]) for k in "ab"}
        stack.callback(lambda: [k.crash() for k in self.ka.values()])
        for k in ("b", "a"):
            self.ka[k].start()
            self.ka[k].wait_vrrp_child()
        wait_for(lambda: self.holder() == "a", 60, what="keepalived: A master")

    def holder(self) -> str | None:
        held = [k for k in "ab" if ns_has_addr(self.ns[k], VIP)]
        return held[0] if len(held) == 1 else None

    def _set_a(self, priority: int) -> None:
        ka = self.ka["a"]
        self.prio["a"] = priority
        ka.instances = [replace(i, priority=priority) for i in ka.instances]
        ka.write_config()
        assert ka.pid is not None
        os.kill(ka.pid, signal.SIGHUP)

    def request_move(self, cur: str, to: str) -> None:
        # as sites do it: A's priority below B's (SIGHUP), then back (B's is fixed)
        self._set_a(max(1, self.prio["b"] - 50) if to == "b" else self.owner_priority)

    def moves(self, n: int) -> None:
        super().moves(n)
        if self.prio["a"] != self.owner_priority:
            self._set_a(self.owner_priority)
            wait_for(lambda: self.holder() == "a", 60, what="keepalived: A master again")

    def crash(self) -> None:
        # B is the backup; A always comes back as the master (preemption)
        wait_for(lambda: self.holder() == "a", 60, what="keepalived: A master")
        time.sleep(0.5)
        super().crash()

    def kill(self, key: str) -> None:
        self.ka[key].crash()

    def restart(self, key: str) -> None:
        self.ka[key].start()
        self.ka[key].wait_vrrp_child()

    def priority(self, key: str) -> int:
        return self.prio[key]


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both sides up at once; moves side by side; crashes alternating between them."""
    for sub in ("cb", "ka"):
        (workdir / sub).mkdir()
    with ExitStack() as stack:
        sides: list[Side] = []
        if args.only != "keepalived":
            sides.append(ClusterbusSide(stack, workdir / "cb", args.interval, args.clients,
                                        args.owner_priority, args.backup_priority))
        if args.only != "clusterbus":
            sides.append(KeepalivedSide(stack, workdir / "ka", args.interval, args.clients,
                                        args.owner_priority,
                                        args.reference_backup_priority or args.backup_priority))
        for s in sides:
            s.moves(args.moves)
        for i in range(args.crashes):
            for s in (sides if i % 2 == 0 else sides[::-1]):
                s.crash()
                print(f"crash {i + 1}/{args.crashes} {s.name}: {s.crashes[-1]}",
                      file=sys.stderr, flush=True)
        return {s.name: s.figures() for s in sides}


def lab_handoff(sync: bool) -> dict[str, Any]:
    """``clusterbus lab [--no-sync] handoff --json``: the planned move where conn-sync can
    run (real IPVS under User-Mode Linux: the directors forward to three app nodes, with
    persistent clients); its result's figures."""
    argv = [CLUSTERBUS, "lab", *([] if sync else ["--no-sync"]), "handoff", "--json"]
    print(f"running {' '.join(argv[1:])} (UML: a few minutes)", file=sys.stderr, flush=True)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        # the lab's own line, not UML's console that follows it
        why = [ln for ln in p.stderr.splitlines() if ln.startswith("clusterbus lab:")]
        return {"error": f"exit {p.returncode}: " + (why or ["no output"])[-1][:300]}
    r: dict[str, Any] = json.loads(lines[-1])
    return {k: r.get(k) for k in ("sync", "clients", "resets", "reset_events",
                                  "server_changed", "session_lost", "connsync_entries",
                                  "duration")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moves", type=int, default=6, help="planned moves under load per kind")
    ap.add_argument("--crashes", type=int, default=7,
                    help="owner crashes per kind (alternating between the kinds)")
    ap.add_argument("--interval", type=float, default=0.1, help="VRRP advert interval (s)")
    ap.add_argument("--clients", type=int, default=8, help="client threads")
    ap.add_argument("--owner-priority", type=int, default=200,
                    help="the owner's VRRP priority (both kinds)")
    ap.add_argument("--backup-priority", type=int, default=190,
                    help="the next in line's VRRP priority: [cvip] priority_backup, and "
                         "keepalived B's unless --reference-backup-priority")
    ap.add_argument("--reference-backup-priority", type=int, default=None,
                    help="keepalived B's priority when it should differ (e.g. 100, a common "
                         "keepalived backup)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--workdir", default=None, help="keep logs here (an empty directory)")
    ap.add_argument("--only", choices=("clusterbus", "keepalived"), default=None)
    ap.add_argument("--lab", action="store_true",
                    help="also run the lab's planned handoff with and without conn-sync "
                         "(UML, real IPVS): errors_clusterbus_connsync")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cb-bench-cvip-") as tmp:
        res = run(args, Path(args.workdir or tmp))
    lab = {"connsync": lab_handoff(True), "off": lab_handoff(False)} if args.lab else None
    none: dict[str, Any] = {"moves": [], "gaps": [], "crashes": [], "move_errors": 0,
                            "load": {"ok": 0, "errors": {}, "when": []}}
    cb, ref = res.get("clusterbus", none), res.get("keepalived", none)
    med = lambda xs: round(statistics.median(xs), 1) if xs else None  # noqa: E731
    ms = lambda xs: [round(x * 1000, 1) for x in xs]  # noqa: E731
    col = lambda r, k: [c[k] for c in r["crashes"] if k in c]  # noqa: E731
    errs = lambda r: sum(r["load"]["errors"].values())  # noqa: E731
    out: dict[str, Any] = {
        "advert_interval": args.interval,
        "moves": args.moves,
        "crashes": args.crashes,
        "clients": args.clients,
        "owner_priority": args.owner_priority,
        "backup_priority_clusterbus": args.backup_priority,
        "backup_priority_reference": args.reference_backup_priority or args.backup_priority,
        # conn-sync syncs IPVS connections: here each director serves the CVIP itself
        # (no IPVS on a host kernel that may lack it), so a connection in flight at a
        # handoff can be reset whatever the sync; --lab measures it with IPVS
        "connsync_clusterbus": "off here (directors serve the CVIP themselves); --lab",
        "errors_clusterbus": cb["move_errors"],
        "errors_reference": ref["move_errors"],
        "errors_total_clusterbus": errs(cb),
        "errors_total_reference": errs(ref),
        "gap_ms_clusterbus": ms(cb["gaps"]),
        "gap_ms_reference": ms(ref["gaps"]),
        "connections_clusterbus": cb["load"]["ok"],
        "connections_reference": ref["load"]["ok"],
        "error_kinds_clusterbus": cb["load"]["errors"],
        "error_kinds_reference": ref["load"]["errors"],
        "move_median_ms_clusterbus": med(ms(cb["moves"])),
        "move_median_ms_reference": med(ms(ref["moves"])),
        "crash_ms_clusterbus": col(cb, "crash_ms"),
        "crash_ms_reference": col(ref, "crash_ms"),
        "crash_median_ms_clusterbus": med(col(cb, "crash_ms")),
        "crash_median_ms_reference": med(col(ref, "crash_ms")),
        # the phase-free figures: from the survivor's last advert of the dead owner
        "after_last_advert_median_ms_clusterbus": med(col(cb, "after_last_advert_ms")),
        "after_last_advert_median_ms_reference": med(col(ref, "after_last_advert_ms")),
        "master_down_ms_clusterbus": med(col(cb, "master_down_ms")),
        "master_down_ms_reference": med(col(ref, "master_down_ms")),
        "late_median_ms_clusterbus": med(col(cb, "late_ms")),
        "late_median_ms_reference": med(col(ref, "late_ms")),
        "timer_late_median_ms_clusterbus": med(col(cb, "timer_late_ms")),
        "crash_detail_clusterbus": cb["crashes"],
        "crash_detail_reference": ref["crashes"],
    }
    if lab is not None:
        out["lab_handoff_connsync"] = lab["connsync"]
        out["lab_handoff_no_sync"] = lab["off"]
        out["errors_clusterbus_connsync"] = lab["connsync"].get("resets")
    a, b = out["crash_median_ms_clusterbus"], out["crash_median_ms_reference"]
    out["crash_ratio"] = round(a / b, 3) if a and b else None
    a, b = (out["after_last_advert_median_ms_clusterbus"],
            out["after_last_advert_median_ms_reference"])
    out["after_last_advert_ratio"] = round(a / b, 3) if a and b else None
    print(f"advert interval {args.interval} s, {args.clients} clients, {args.moves} planned "
          f"moves and {args.crashes} crashes per kind (alternating); backup priority "
          f"clusterbus {out['backup_priority_clusterbus']}, keepalived "
          f"{out['backup_priority_reference']}")
    print(f"planned moves under load: connection errors within a second of a move: "
          f"clusterbus {out['errors_clusterbus']}, keepalived priority drop "
          f"{out['errors_reference']}; over the whole run {out['errors_total_clusterbus']} "
          f"(of {out['connections_clusterbus']} ok) and {out['errors_total_reference']} (of "
          f"{out['connections_reference']} ok)")
    print(f"release -> takeover gap per move (negative: both held it): clusterbus "
          f"{out['gap_ms_clusterbus']} ms, keepalived {out['gap_ms_reference']} ms")
    print(f"move -> CVIP on the new owner, median: clusterbus {out['move_median_ms_clusterbus']} "
          f"ms, keepalived {out['move_median_ms_reference']} ms")
    print(f"owner crash -> CVIP on the new owner: clusterbus {out['crash_ms_clusterbus']} ms, "
          f"keepalived {out['crash_ms_reference']} ms")
    print(f"  medians: clusterbus {out['crash_median_ms_clusterbus']} ms, keepalived "
          f"{out['crash_median_ms_reference']} ms, ratio {out['crash_ratio']} (target <= 1.0)")
    print(f"  from the survivor's last advert of the dead owner (median): clusterbus "
          f"{out['after_last_advert_median_ms_clusterbus']} ms (Master_Down_Interval "
          f"{out['master_down_ms_clusterbus']} ms, VIP {out['late_median_ms_clusterbus']} ms "
          f"after it; timer fired {out['timer_late_median_ms_clusterbus']} ms after it), "
          f"keepalived {out['after_last_advert_median_ms_reference']} ms (Master_Down_Interval "
          f"{out['master_down_ms_reference']} ms, VIP {out['late_median_ms_reference']} ms "
          f"after it)")
    if lab is not None:
        for k, r in (("conn-sync", lab["connsync"]), ("no sync", lab["off"])):
            print(f"lab handoff (UML, IPVS, cvip drain) with {k}: "
                  + (r["error"] if "error" in r else
                     f"{r['resets']} of {r['clients']} clients reset, {r['server_changed']} "
                     f"changed real server ({r['connsync_entries']} VIP1 connections synced)"))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
