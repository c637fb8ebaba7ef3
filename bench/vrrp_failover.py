#!/usr/bin/env python3
"""VRRP failover benchmark: keepalived -> keepalived against clusterbus -> clusterbus.

Run as root from the repository: ``.venv/bin/python bench/vrrp_failover.py [--trials 10]
[--interval 0.05] [--json]``. Not a test: it prints figures and ratios, it asserts nothing.

One topology (two hosts and a client-less bridge in network namespaces); for each kind of
speaker, host A at priority 150 and host B at 100 run VRRPv3 with ``advert_interval``.
Per trial: wait until A holds the VIP, wait a random part of an advert interval (the kill
phase), crash A (every process of it stopped at once: SIGSTOP then SIGKILL, because
keepalived's parent and VRRP child would otherwise hand over gracefully), and time the VIP's
arrival on B with ``ip -ts monitor address`` running in B. Then restart A and let it preempt
back. Planned handoff: SIGTERM to A (it sends priority 0), time to the VIP on B.

Reported: median and max crash failover per kind, their ratio (clusterbus / keepalived),
the RFC 5798 Master_Down_Interval and Skew_Time of B, the planned-handoff medians, and the
speaker's RSS. ``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

from keepalived import Keepalived, VrrpInstance, ns_has_addr, wait_for  # noqa: E402
from netns import Topology  # noqa: E402
from speaker import Speaker  # noqa: E402

VIP = "10.77.0.100"
_LINE = re.compile(r"^\[(\S+)\] (Deleted )?\d+: eth0\s+inet (\S+)/")


class Monitor:
    """``ip -ts -o monitor address`` in a namespace, read back by time."""

    def __init__(self, ns: str, path: Path) -> None:
        self.path = path
        self.out = open(path, "wb")
        self.proc = subprocess.Popen(Topology.prefix(ns) + ["ip", "-ts", "-o", "monitor", "address"],
                                     stdout=self.out)
        time.sleep(0.3)  # bench only: give ip monitor time to subscribe

    def added_after(self, t0: float) -> float | None:
        """Wall-clock time of the first VIP addition after ``t0``, or None."""
        for line in self.path.read_text().splitlines():
            m = _LINE.match(line)
            if m and m.group(2) is None and m.group(3) == VIP:
                t = datetime.fromisoformat(m.group(1)).timestamp()
                if t >= t0:
                    return t
        return None

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self.out.close()


def rss_mb(pid: int) -> float:
    """RSS of a process and its children that carry the speaker (MB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


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


def run_kind(kind: str, trials: int, interval: float, workdir: Path) -> dict:
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        b = topo.host("b", "10.77.0.2/24")
        pa = make(kind, a, workdir, 150, interval)
        pb = make(kind, b, workdir, 100, interval)
        mon = Monitor(b, workdir / f"mon-{kind}.txt")
        crash, planned, rss = [], [], None
        try:
            start(pb)
            start(pa)
            for _ in range(trials):
                wait_for(lambda: ns_has_addr(a, VIP) and not ns_has_addr(b, VIP), 30,
                         what=f"{kind}: A as MASTER")
                time.sleep(0.3 + random.uniform(0, interval))  # random kill phase
                if rss is None and isinstance(pa, Speaker):
                    rss = rss_mb(pa.pid)
                t0 = time.time()
                pa.crash()
                wait_for(lambda: mon.added_after(t0), 30, what=f"{kind}: VIP on B")
                crash.append(mon.added_after(t0) - t0)
                start(pa)  # removes the stale VIP (clusterbus) / keepalived removes it too
            for _ in range(max(3, trials // 3)):
                wait_for(lambda: ns_has_addr(a, VIP) and not ns_has_addr(b, VIP), 30,
                         what=f"{kind}: A as MASTER")
                time.sleep(0.3 + random.uniform(0, interval))
                t0 = time.time()
                if isinstance(pa, Speaker):
                    os.kill(pa.pid, signal.SIGTERM)
                else:
                    os.kill(pa.pid, signal.SIGTERM)
                wait_for(lambda: mon.added_after(t0), 30, what=f"{kind}: VIP on B (planned)")
                planned.append(mon.added_after(t0) - t0)
                pa.stop()
                start(pa)
        finally:
            pa.crash()
            pb.crash()
            mon.close()
    return {"crash": crash, "planned": planned, "rss_mb": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    i = args.interval
    rfc_down = 3 * i + (256 - 100) / 256 * i  # RFC 5798 §6.1, backup priority 100
    skew = (256 - 100) / 256 * i
    with tempfile.TemporaryDirectory(prefix="cb-bench-") as d:
        res = {k: run_kind(k, args.trials, i, Path(d)) for k in ("keepalived", "clusterbus")}
    ms = lambda xs: [round(x * 1000, 1) for x in xs]  # noqa: E731
    k, c = res["keepalived"], res["clusterbus"]
    out = {
        "advert_interval": i,
        "trials": args.trials,
        "rfc_master_down_ms": round(rfc_down * 1000, 1),
        "skew_time_ms": round(skew * 1000, 1),
        "keepalived_crash_median_ms": round(statistics.median(k["crash"]) * 1000, 1),
        "keepalived_crash_max_ms": round(max(k["crash"]) * 1000, 1),
        "clusterbus_crash_median_ms": round(statistics.median(c["crash"]) * 1000, 1),
        "clusterbus_crash_max_ms": round(max(c["crash"]) * 1000, 1),
        "ratio": round(statistics.median(c["crash"]) / statistics.median(k["crash"]), 3),
        "clusterbus_median_vs_rfc": round(statistics.median(c["crash"]) / rfc_down, 3),
        "keepalived_planned_median_ms": round(statistics.median(k["planned"]) * 1000, 1),
        "clusterbus_planned_median_ms": round(statistics.median(c["planned"]) * 1000, 1),
        "clusterbus_rss_mb": round(c["rss_mb"] or 0, 1),
        "keepalived_crash_ms": ms(k["crash"]),
        "clusterbus_crash_ms": ms(c["crash"]),
        "keepalived_planned_ms": ms(k["planned"]),
        "clusterbus_planned_ms": ms(c["planned"]),
    }
    print(f"VRRPv3 advert_interval {i} s, {args.trials} crash trials per kind")
    print(f"RFC Master_Down_Interval (backup prio 100): {out['rfc_master_down_ms']} ms; "
          f"Skew_Time {out['skew_time_ms']} ms")
    print(f"{'':12} {'crash median':>13} {'crash max':>10} {'planned median':>15}")
    for kind, r in (("keepalived", k), ("clusterbus", c)):
        print(f"{kind:12} {statistics.median(r['crash']) * 1000:>11.1f}ms "
              f"{max(r['crash']) * 1000:>8.1f}ms {statistics.median(r['planned']) * 1000:>13.1f}ms")
    print(f"ratio clusterbus/keepalived (crash median): {out['ratio']} (target <= 1.0)")
    print(f"clusterbus median / RFC interval: {out['clusterbus_median_vs_rfc']} (target <= 1.1)")
    print(f"clusterbus speaker RSS: {out['clusterbus_rss_mb']} MB (target <= 60)")
    print("planned handoff is SIGTERM -> VIP on B: includes the process's stop path; the "
          f"target is Skew_Time + 10 ms = {out['skew_time_ms'] + 10:.1f} ms")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
