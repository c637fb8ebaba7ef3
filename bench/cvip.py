#!/usr/bin/env python3
"""CVIP benchmark: planned moves under load, and owner crashes, clusterbus against keepalived.

Run as root from the repository: ``.venv/bin/python bench/cvip.py [--moves 6] [--crashes 6]
[--interval 0.1] [--json]``. Not a test: it prints figures and ratios, it asserts nothing.

Topology: two directors (network namespaces A and B) and a client namespace C on one
bridge. Each director runs a small TCP echo service on port 8080 (every connection: read
one line, answer it, close), so whoever holds the CVIP serves it. C runs ``--clients``
threads that connect to the CVIP continuously, one short request per connection (connect
timeout 3 s: a SYN lost in a handoff gap is retransmitted, which is latency, not an error).
A connection that fails (refused, reset, timed out) is an error.

clusterbus: each director runs the daemon with its VRRP speaker, peer links (CURVE over
ipc://) and the CVIP policy (``[cvip]``); a planned move is ``clusterbus cvip move``: the
new owner raises its priority, the old one steps down with a priority-0 advert.
Reference (same run, same interval): keepalived on both, A at 150 and B at 100; a planned
move is lowering A's priority to 50 (SIGHUP) and back to 150, with no connection sync on
either side (conntrackd absent), as sites do it today.

Owner crash: the owner's speaker and daemon (keepalived: both processes) are killed at once
and its address removed (its host is gone); the time until the CVIP is on the other
director (``ip -ts monitor address``) is taken; medians compared, ``crash_ratio`` =
clusterbus / keepalived.

``--json`` ends with one JSON object on the last line holding ``errors_clusterbus``,
``errors_reference`` and ``crash_ratio`` (and the details).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

from addrmonitor import AddrMonitor  # noqa: E402
from cbdaemon import director_keys  # noqa: E402
from keepalived import Keepalived, VrrpInstance, ns_has_addr, wait_for  # noqa: E402
from netns import Topology  # noqa: E402
from speaker import CurveSpeaker  # noqa: E402

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


class Director(CurveSpeaker):
    """A clusterbus daemon with a CURVE key pair, peer links and ``[cvip]``."""

    heartbeat = 0.1

    def owner(self) -> int | None:
        p = self.cli("cvip", "show", "--json", "--timeout", "5", check=False)
        if p.returncode != 0:
            return None
        owner: int | None = json.loads(p.stdout)["cvips"][0]["owner"]
        return owner


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


def run_clusterbus(workdir: Path, interval: float, moves: int, crashes: int,
                   clients: int) -> dict[str, Any]:
    keys, auth = director_keys(workdir, (1, 2))
    with Topology() as topo:
        ns = topology(topo)
        by_node = {1: ns["a"], 2: ns["b"]}
        inst = VrrpInstance(vrid=52, priority=100, advert_int=interval, version=3,
                            vips=(f"{VIP}/24",))
        ds: dict[int, Director] = {}
        for n, me in by_node.items():
            p = 2 if n == 1 else 1
            extra = (f'[cvip]\nsettle_time = 1.0\ncontrol = "{workdir}/{me}.cvip"\n\n'
                     f'[[cvip.vip]]\naddress = "{VIP}/24"\ninterface = "eth0"\nvrid = 52\n'
                     f"directors = [1, 2]\n\n"
                     f'[[cluster.peer]]\nnode = {p}\npublish = "ipc://{workdir}/{by_node[p]}.pub"\n'
                     f'snapshot = "ipc://{workdir}/{by_node[p]}.snap"\n'
                     f'public_key = "{keys}/d{p}.key"\n')
            d = Director(me, workdir, [inst], node=n, extra=extra, bus=True, garp_delay=0.0)
            d.keys, d.auth = keys, auth
            ds[n] = d
        mons = {n: AddrMonitor(by_node[n], workdir / f"mon-cb-{n}.txt", VIP) for n in (1, 2)}
        load = Load(ns, clients)
        moved: list[float] = []
        gaps: list[float] = []
        windows: list[tuple[float, float]] = []
        crash: list[float] = []
        try:
            for d in ds.values():
                d.start()
            for d in ds.values():
                d.wait_running(60)

            def owner() -> int | None:
                owners = {d.owner() for d in ds.values()}
                o = owners.pop() if len(owners) == 1 else None
                return o if o is not None and ns_has_addr(by_node[o], VIP) else None
            wait_for(owner, 60, interval=0.2, what="clusterbus: one owner")
            load.start()
            time.sleep(1.0)
            cur = wait_for(owner, 30, interval=0.1, what="clusterbus: an owner")
            for _ in range(moves):
                to = 2 if cur == 1 else 1
                t0 = time.time()
                # the request `clusterbus cvip move` sends, without the CLI's start-up time
                reply = control_request(f"{workdir}/{by_node[cur]}.cvip",
                                        {"op": "move", "cvip": VIP, "node": to})
                assert reply.get("ok"), reply
                t1 = wait_for(lambda t0=t0, to=to: mons[to].added_after(t0), 30,
                              what="clusterbus: the move")
                gone = wait_for(lambda t0=t0, c=cur: mons[c].deleted_after(t0), 30,
                                what="clusterbus: the release")
                moved.append(t1 - t0)
                gaps.append(t1 - gone)
                windows.append((t0, t1 + 1.0))
                time.sleep(1.0)
                cur = to
            result = load.stop()
            for _ in range(crashes):
                cur = wait_for(owner, 60, interval=0.1, what="clusterbus: an owner")
                other = 2 if cur == 1 else 1
                time.sleep(interval * 1.5)
                t0 = time.time()
                ds[cur].crash()
                topo.exec(by_node[cur], ["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"],
                          check=False)
                t1 = wait_for(lambda t0=t0, o=other: mons[o].added_after(t0), 30,
                              what="clusterbus: takeover")
                crash.append(t1 - t0)
                ds[cur].start()
                ds[cur].wait_running(60)
                time.sleep(1.5)  # it settles and learns the owner
        finally:
            load.close()
            for d in ds.values():
                d.crash()
            for m in mons.values():
                m.close()
    return {"moves": moved, "gaps": gaps, "crash": crash, "load": result,
            "move_errors": in_windows(result["when"], windows)}


def run_keepalived(workdir: Path, interval: float, moves: int, crashes: int,
                   clients: int) -> dict[str, Any]:
    with Topology() as topo:
        ns = topology(topo)
        mk = lambda n, prio: Keepalived(ns[n], workdir, [VrrpInstance(  # noqa: E731
            vrid=52, priority=prio, advert_int=interval, version=3, vips=(f"{VIP}/24",))])
        ka, kb = mk("a", 150), mk("b", 100)
        mons = {"a": AddrMonitor(ns["a"], workdir / "mon-ka-a.txt", VIP),
                "b": AddrMonitor(ns["b"], workdir / "mon-ka-b.txt", VIP)}
        load = Load(ns, clients)
        moved: list[float] = []
        gaps: list[float] = []
        windows: list[tuple[float, float]] = []
        crash: list[float] = []

        def set_a(priority: int) -> None:
            ka.instances = [replace(i, priority=priority) for i in ka.instances]
            ka.write_config()
            assert ka.pid is not None
            os.kill(ka.pid, signal.SIGHUP)
        try:
            for k in (kb, ka):
                k.start()
                k.wait_vrrp_child()
            wait_for(lambda: ns_has_addr(ns["a"], VIP), 60, what="keepalived: A master")
            load.start()
            time.sleep(1.0)
            for i in range(moves):
                to, cur = ("b", "a") if i % 2 == 0 else ("a", "b")
                t0 = time.time()
                set_a(50 if to == "b" else 150)
                t1 = wait_for(lambda t0=t0, to=to: mons[to].added_after(t0), 30,
                              what="keepalived: the move")
                gone = wait_for(lambda t0=t0, c=cur: mons[c].deleted_after(t0), 30,
                                what="keepalived: the release")
                moved.append(t1 - t0)
                gaps.append(t1 - gone)
                windows.append((t0, t1 + 1.0))
                time.sleep(1.0)
            result = load.stop()
            if moves % 2:
                set_a(150)
            for _ in range(crashes):
                wait_for(lambda: ns_has_addr(ns["a"], VIP) and not ns_has_addr(ns["b"], VIP),
                         60, what="keepalived: A master")
                time.sleep(0.5 + interval * 1.5)
                t0 = time.time()
                ka.crash()
                topo.exec(ns["a"], ["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"],
                          check=False)
                t1 = wait_for(lambda t0=t0: mons["b"].added_after(t0), 30,
                              what="keepalived: takeover")
                crash.append(t1 - t0)
                ka.start()
                ka.wait_vrrp_child()
        finally:
            load.close()
            ka.crash()
            kb.crash()
            for m in mons.values():
                m.close()
    return {"moves": moved, "gaps": gaps, "crash": crash, "load": result,
            "move_errors": in_windows(result["when"], windows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moves", type=int, default=6, help="planned moves under load per kind")
    ap.add_argument("--crashes", type=int, default=6, help="owner crashes per kind")
    ap.add_argument("--interval", type=float, default=0.1, help="VRRP advert interval (s)")
    ap.add_argument("--clients", type=int, default=8, help="client threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--workdir", default=None, help="keep logs here (an empty directory)")
    ap.add_argument("--only", choices=("clusterbus", "keepalived"), default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cb-bench-cvip-") as tmp:
        d = args.workdir or tmp
        for sub in ("cb", "ka"):
            (Path(d) / sub).mkdir()
        none: dict[str, Any] = {"moves": [], "gaps": [], "crash": [], "move_errors": 0,
                                "load": {"ok": 0, "errors": {}, "when": []}}
        cb = none if args.only == "keepalived" else run_clusterbus(
            Path(d) / "cb", args.interval, args.moves, args.crashes, args.clients)
        ref = none if args.only == "clusterbus" else run_keepalived(
            Path(d) / "ka", args.interval, args.moves, args.crashes, args.clients)
    med = lambda xs: round(statistics.median(xs) * 1000, 1) if xs else None  # noqa: E731
    errs = lambda r: sum(r["load"]["errors"].values())  # noqa: E731
    out: dict[str, Any] = {
        "advert_interval": args.interval,
        "moves": args.moves,
        "crashes": args.crashes,
        "clients": args.clients,
        "errors_clusterbus": cb["move_errors"],
        "errors_reference": ref["move_errors"],
        "errors_total_clusterbus": errs(cb),
        "errors_total_reference": errs(ref),
        "gap_ms_clusterbus": [round(x * 1000, 1) for x in cb["gaps"]],
        "gap_ms_reference": [round(x * 1000, 1) for x in ref["gaps"]],
        "connections_clusterbus": cb["load"]["ok"],
        "connections_reference": ref["load"]["ok"],
        "error_kinds_clusterbus": cb["load"]["errors"],
        "error_kinds_reference": ref["load"]["errors"],
        "move_median_ms_clusterbus": med(cb["moves"]),
        "move_median_ms_reference": med(ref["moves"]),
        "crash_median_ms_clusterbus": med(cb["crash"]),
        "crash_median_ms_reference": med(ref["crash"]),
        "crash_ms_clusterbus": [round(x * 1000, 1) for x in cb["crash"]],
        "crash_ms_reference": [round(x * 1000, 1) for x in ref["crash"]],
    }
    out["crash_ratio"] = (round(statistics.median(cb["crash"]) / statistics.median(ref["crash"]),
                                3) if cb["crash"] and ref["crash"] else None)
    print(f"advert interval {args.interval} s, {args.clients} clients, {args.moves} planned "
          f"moves and {args.crashes} crashes per kind")
    print(f"planned moves under load: connection errors within a second of a move: "
          f"clusterbus {out['errors_clusterbus']}, keepalived priority drop "
          f"{out['errors_reference']}; over the whole run {out['errors_total_clusterbus']} "
          f"(of {out['connections_clusterbus']} ok) and {out['errors_total_reference']} (of "
          f"{out['connections_reference']} ok)")
    print(f"release -> takeover gap per move (negative: both held it): clusterbus "
          f"{out['gap_ms_clusterbus']} ms, keepalived {out['gap_ms_reference']} ms")
    print(f"move -> CVIP on the new owner, median: clusterbus {out['move_median_ms_clusterbus']} "
          f"ms, keepalived {out['move_median_ms_reference']} ms")
    print(f"owner crash -> CVIP on the new owner, median: clusterbus "
          f"{out['crash_median_ms_clusterbus']} ms, keepalived "
          f"{out['crash_median_ms_reference']} ms, ratio {out['crash_ratio']} (target <= 1.0)")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
