#!/usr/bin/env python3
"""VRRP failover benchmark: keepalived -> keepalived against clusterbus -> clusterbus.

Run as root from the repository: ``.venv/bin/python bench/vrrp_failover.py [--trials 20]
[--interval 0.05] [--json]``. Not a test: it prints figures and ratios, it asserts nothing.

One topology (two hosts on a bridge in network namespaces); for each kind of speaker, host A
at priority 150 and host B at 100 run VRRPv3 with ``advert_interval``. B runs two observers:
``ip -ts monitor address`` (when the VIP appears on B) and a raw protocol-112 socket with
kernel receive timestamps (``SO_TIMESTAMPNS``: when each advert from A arrived).

Crash failover, per trial: wait until A holds the VIP, wait for an advert from A, wait a
random part of an advert interval (the kill phase: stratified over 10..90 % of the interval,
shuffled, and the same list for both kinds, so their medians compare like with like instead
of being spread by the phase: with an unpaired phase, 20 trials leave about +-4 ms of noise
on a median), crash A (every process of it stopped at once: SIGSTOP then
SIGKILL, because keepalived's parent and VRRP child would otherwise hand over gracefully),
and time the VIP's arrival on B, both from the crash (what a client sees; the random kill
phase spreads it over one advert interval) and from the last advert B received from A (what
the backup's timer is supposed to measure: the RFC 5798 Master_Down_Interval, without the
phase's noise; this is the figure that compares the two implementations' own overhead).
Then restart A and let it preempt back.

Planned handoff, per trial: rewrite A's configuration with priority 50 and send A's daemon
SIGHUP (``clusterbus reload`` does exactly that after checking the file; keepalived reloads on
SIGHUP too), and time the VIP's arrival on B from the signal. clusterbus's master gives up at
once with a priority-0 advert, so B takes over after its Skew_Time; the target is Skew_Time +
10 ms. Then A is reloaded back to 150 and preempts back. ``--sigterm`` also times the
graceful stop (SIGTERM -> VIP on B).

``--json`` prints one JSON object as the last line (``ratio`` is the clusterbus / keepalived
crash median from the crash).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

from addrmonitor import AddrMonitor  # noqa: E402
from keepalived import Keepalived, VrrpInstance, ns_has_addr, wait_for  # noqa: E402
from netns import Topology  # noqa: E402
from speaker import Speaker  # noqa: E402

VIP = "10.77.0.100"
A_ADDR = "10.77.0.1"

#: Runs in B's namespace: prints "<kernel receive time> <source> <priority>" per VRRP packet.
_SNIFFER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
mreqn = struct.pack("4s4si", socket.inet_aton("224.0.0.18"), b"\0" * 4,
                    socket.if_nametoindex("eth0"))
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


class Sniffer:
    """The adverts B receives, with kernel timestamps (wall clock)."""

    def __init__(self, ns: str, path: Path) -> None:
        self.path = path
        self.out = open(path, "w+b")
        self.proc = subprocess.Popen(Topology.prefix(ns) + [sys.executable, "-c", _SNIFFER],
                                     stdout=self.out)
        wait_for(lambda: b"ready" in path.read_bytes(), 10, what="the advert sniffer")

    def next_from(self, src: str, after: float, timeout: float = 5) -> float:
        """Wait for the next non-zero-priority advert from ``src`` received after ``after``
        (polls the file every millisecond: the bench may poll, a test may not)."""
        deadline = time.monotonic() + timeout
        with open(self.path, "rb") as f:
            buf = b""
            while time.monotonic() < deadline:
                buf += f.read()
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    parts = line.decode().split()
                    if len(parts) == 3 and parts[1] == src and parts[2] != "0" and (
                            float(parts[0]) > after):
                        return float(parts[0])
                time.sleep(0.001)
        raise TimeoutError(f"no advert from {src} within {timeout} s")

    def last_from(self, src: str, before: float) -> float | None:
        """Receive time of the last non-zero-priority advert from ``src`` before ``before``."""
        last = None
        for line in self.path.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) == 3 and parts[1] == src and parts[2] != "0":
                t = float(parts[0])
                if t < before:
                    last = t
        return last

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.out.close()


def rss_mb(pid: int) -> float:
    """RSS of a process and its children (MB): the daemon and, with ``[vrrp] isolation =
    "process"`` (the default), the speaker's own process."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return total
    return total + sum(rss_mb(c) for c in children)


def make(kind: str, ns: str, workdir: Path, prio: int, interval: float):
    inst = VrrpInstance(priority=prio, advert_int=interval, version=3, vips=(f"{VIP}/24",))
    if kind == "keepalived":
        return Keepalived(ns, workdir, [inst])
    return Speaker(ns, workdir, [inst], node=prio)


def start(p) -> None:
    p.start()
    if isinstance(p, Speaker):
        p.wait_running()
    else:
        p.wait_vrrp_child()


def reconfigure(p, priority: int) -> None:
    """Rewrite ``p``'s configuration with ``priority`` and send its daemon SIGHUP."""
    p.instances = [replace(i, priority=priority) for i in p.instances]
    if isinstance(p, Speaker):
        p.conf.write_text(p.render())
    else:
        p.write_config()
    os.kill(p.pid, signal.SIGHUP)


def run_kind(kind: str, phases: list[float], planned_trials: int, interval: float,
             workdir: Path, sigterm: bool) -> dict:
    with Topology() as topo:
        a = topo.host("a", f"{A_ADDR}/24")
        b = topo.host("b", "10.77.0.2/24")
        pa = make(kind, a, workdir, 150, interval)
        pb = make(kind, b, workdir, 100, interval)
        mon = AddrMonitor(b, workdir / f"mon-{kind}.txt", VIP)
        sniff = Sniffer(b, workdir / f"sniff-{kind}.txt")
        crash, after_advert, planned, stop, rss, phase = [], [], [], [], None, []

        def a_is_master() -> None:
            wait_for(lambda: ns_has_addr(a, VIP) and not ns_has_addr(b, VIP), 30,
                     what=f"{kind}: A as MASTER")
            time.sleep(0.3 + random.uniform(0, interval))  # random phase

        try:
            start(pb)
            start(pa)
            for kill_phase in phases:
                a_is_master()
                if rss is None and isinstance(pa, Speaker):
                    rss = rss_mb(pa.pid)
                adv = sniff.next_from(A_ADDR, time.time())
                time.sleep(max(0.0, adv + kill_phase - time.time()))
                t0 = time.time()
                pa.crash()
                t1 = wait_for(lambda t0=t0: mon.added_after(t0), 30, what=f"{kind}: VIP on B")
                crash.append(t1 - t0)
                last = sniff.last_from(A_ADDR, t0)
                if last is not None:
                    after_advert.append(t1 - last)
                    phase.append(t0 - last)
                start(pa)  # removes the stale VIP (clusterbus) / keepalived removes it too
            for _ in range(planned_trials):
                a_is_master()
                t0 = time.time()
                reconfigure(pa, 50)
                t1 = wait_for(lambda t0=t0: mon.added_after(t0), 30, what=f"{kind}: VIP on B (reload)")
                planned.append(t1 - t0)
                reconfigure(pa, 150)
            for _ in range(planned_trials if sigterm else 0):
                a_is_master()
                t0 = time.time()
                os.kill(pa.pid, signal.SIGTERM)
                t1 = wait_for(lambda t0=t0: mon.added_after(t0), 30, what=f"{kind}: VIP on B (stop)")
                stop.append(t1 - t0)
                pa.stop()
                start(pa)
        finally:
            pa.crash()
            pb.crash()
            mon.close()
            sniff.close()
    return {"crash": crash, "after_advert": after_advert, "planned": planned, "stop": stop,
            "rss_mb": rss, "phase": phase}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="crash trials per kind")
    ap.add_argument("--planned", type=int, default=10, help="planned-handoff trials per kind")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--kinds", default="keepalived,clusterbus")
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill phases")
    ap.add_argument("--sigterm", action="store_true", help="also time SIGTERM -> VIP on B")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    i = args.interval
    rfc_down = 3 * i + (256 - 100) / 256 * i  # RFC 5798 §6.1, backup priority 100
    skew = (256 - 100) / 256 * i
    kinds = args.kinds.split(",")
    rng = random.Random(args.seed)
    phases = [i * (0.1 + 0.8 * (n + rng.random()) / args.trials) for n in range(args.trials)]
    rng.shuffle(phases)
    with tempfile.TemporaryDirectory(prefix="cb-bench-") as d:
        res = {k: run_kind(k, phases, args.planned, i, Path(d), args.sigterm) for k in kinds}
    ms = lambda xs: [round(x * 1000, 1) for x in xs]  # noqa: E731
    med = lambda xs: round(statistics.median(xs) * 1000, 1) if xs else None  # noqa: E731
    mx = lambda xs: round(max(xs) * 1000, 1) if xs else None  # noqa: E731
    out: dict = {
        "advert_interval": i,
        "trials": args.trials,
        "planned_trials": args.planned,
        "rfc_master_down_ms": round(rfc_down * 1000, 1),
        "skew_time_ms": round(skew * 1000, 1),
        "planned_target_ms": round(skew * 1000 + 10, 1),
    }
    for kind, r in res.items():
        out[f"{kind}_crash_median_ms"] = med(r["crash"])
        out[f"{kind}_crash_max_ms"] = mx(r["crash"])
        out[f"{kind}_after_advert_median_ms"] = med(r["after_advert"])
        out[f"{kind}_after_advert_max_ms"] = mx(r["after_advert"])
        out[f"{kind}_planned_median_ms"] = med(r["planned"])
        out[f"{kind}_planned_max_ms"] = mx(r["planned"])
        out[f"{kind}_stop_median_ms"] = med(r["stop"])
        out[f"{kind}_kill_phase_median_ms"] = med(r["phase"])
        for key in ("crash", "after_advert", "planned", "stop", "phase"):
            out[f"{kind}_{key}_ms"] = ms(r[key])
    if "clusterbus" in res:
        c = res["clusterbus"]
        out["clusterbus_rss_mb"] = round(c["rss_mb"] or 0, 1)
        out["clusterbus_median_vs_rfc"] = round(statistics.median(c["crash"]) / rfc_down, 3)
    if "clusterbus" in res and "keepalived" in res:
        k, c = res["keepalived"], res["clusterbus"]
        out["ratio"] = round(statistics.median(c["crash"]) / statistics.median(k["crash"]), 3)
        if k["after_advert"] and c["after_advert"]:
            out["ratio_after_advert"] = round(
                statistics.median(c["after_advert"]) / statistics.median(k["after_advert"]), 3)
    print(f"VRRPv3 advert_interval {i} s, {args.trials} crash and {args.planned} planned "
          "trials per kind")
    print(f"RFC Master_Down_Interval (backup prio 100): {out['rfc_master_down_ms']} ms; "
          f"Skew_Time {out['skew_time_ms']} ms")
    print(f"{'':12} {'crash med':>10} {'crash max':>10} {'last advert->VIP med':>21} "
          f"{'max':>8} {'reload->VIP med':>16} {'max':>8}")
    f = lambda v: "-" if v is None else f"{v:.1f}ms"  # noqa: E731
    for kind in res:
        print(f"{kind:12} {f(out[f'{kind}_crash_median_ms']):>10} "
              f"{f(out[f'{kind}_crash_max_ms']):>10} "
              f"{f(out[f'{kind}_after_advert_median_ms']):>21} "
              f"{f(out[f'{kind}_after_advert_max_ms']):>8} "
              f"{f(out[f'{kind}_planned_median_ms']):>16} {f(out[f'{kind}_planned_max_ms']):>8}")
    if "ratio" in out:
        print(f"ratio clusterbus/keepalived, crash median: {out['ratio']} (target <= 1.0); "
              f"from the last advert: {out.get('ratio_after_advert')}")
    if "clusterbus" in res:
        print(f"clusterbus crash median / RFC interval: {out['clusterbus_median_vs_rfc']} "
              "(target <= 1.1)")
        print(f"clusterbus speaker RSS (daemon + speaker process): "
              f"{out['clusterbus_rss_mb']} MB (target <= 60)")
    print(f"planned handoff = reload with priority 50 (SIGHUP) -> VIP on B; target Skew_Time + "
          f"10 ms = {out['planned_target_ms']} ms")
    if args.sigterm:
        for kind in res:
            print(f"{kind}: SIGTERM -> VIP on B, median {f(out[f'{kind}_stop_median_ms'])}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
