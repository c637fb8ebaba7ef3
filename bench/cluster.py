#!/usr/bin/env python3
"""Director-cluster benchmark (issue 9): Corosync detection and the fast VRRP takeover.

Run as root from the repository: ``.venv/bin/python bench/cluster.py [--trials 7]
[--interval 1.0] [--json]``. Not a test: it prints figures and ratios, it asserts nothing.

Two Corosync 3 instances (token 500 ms, token_coefficient 0), one per network namespace on
one bridge (tests/support/corosync_cluster.py), each with a whole ``clusterbus run`` daemon
and a recorder plugin that stamps every event with CLOCK_MONOTONIC (the bench's clock).

- ``director_down_median_ms``: daemon 2 ``kill -9`` -> ``director.down 2`` (procdown)
  handed to the hooks of daemon 1; median of ``--trials``; daemon 2 restarted between
  trials.
- ``fast_takeover_ratio``: director 1 (priority 150) is VRRP master, director 2 (100)
  backup with ``fast_takeover = "corosync"``; director 1's daemon ``kill -9`` -> the VIP
  is on director 2 (polled with ``ip addr`` every ~10 ms), median of ``--trials``;
  divided by the same measure for two keepalived (same priorities, same advert interval,
  same namespaces, crashed with SIGSTOP+SIGKILL of every process as bench/vrrp_failover.py
  does) in the same run. Each kill waits a random part of an advert interval (the same
  phases for both kinds), so the RFC timer's phase is not favoured on either side.

``--json`` ends with one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

from cbdaemon import Daemon  # noqa: E402
from corosync_cluster import RECORDER, SUBNET, CorosyncCluster, have_corosync  # noqa: E402
from keepalived import Keepalived, VrrpInstance, ns_has_addr, wait_for  # noqa: E402

VIP = f"{SUBNET}.100"
PRIORITY = {1: 150, 2: 100}


def install_recorder(site: Path) -> None:
    site.mkdir()
    (site / "cb_recorder.py").write_text(RECORDER)
    info = site / "cb_recorder-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cb-recorder\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clusterbus]\nrecorder = cb_recorder:plugin\n")


class Director:
    """A daemon in node ``i``'s namespace and the file its recorder writes."""

    def __init__(self, i: int, workdir: Path, ns: str, site: Path, vrrp: float | None) -> None:
        workdir.mkdir()
        self.record = workdir / "events.jsonl"
        extra = "[netlink]\nenabled = false\n\n[corosync]\nenabled = true\n"
        if vrrp is not None:
            extra += textwrap.dedent(f"""
                [nodemap.nodes]
                1 = ["{SUBNET}.1"]
                2 = ["{SUBNET}.2"]

                [[vrrp.instance]]
                name = "VI_1"
                interface = "eth0"
                vrid = 51
                priority = {PRIORITY[i]}
                advert_interval = {vrrp}
                virtual_ipaddress = ["{VIP}/24"]
                garp_delay = 0.0
                fast_takeover = "corosync"
                """)
        self.daemon = Daemon(workdir, ns, node=i, extra=extra,
                             env={"PYTHONPATH": str(site), "CB_RECORD": str(self.record)})

    def event_after(self, topic: str, since: float, **fields: Any) -> dict[str, Any] | None:
        try:
            lines = self.record.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            if not line.endswith("}"):
                continue
            e = json.loads(line)
            if e["topic"] == topic and e["t"] >= since and all(
                    e.get(k) == v for k, v in fields.items()):
                return e
        return None

    def directors(self) -> int:
        try:
            return len(self.daemon.status()["services"]["corosync"]["directors"])
        except Exception:
            return 0

    def kill9(self) -> None:
        p = self.daemon.proc
        assert p is not None
        p.send_signal(signal.SIGKILL)
        p.wait(10)


def bench_director_down(cc: CorosyncCluster, base: Path, site: Path, trials: int) -> list[float]:
    d1 = Director(1, base / "dd1", cc.ns[1], site, None)
    d2 = Director(2, base / "dd2", cc.ns[2], site, None)
    out = []
    try:
        d1.daemon.start()
        d2.daemon.start()
        for _ in range(trials):
            wait_for(lambda: d1.directors() == 2 and d2.directors() == 2, 30,
                     what="both daemons in the group")
            time.sleep(0.2)
            t0 = time.monotonic()
            d2.kill9()
            e = wait_for(lambda t0=t0: d1.event_after("director.down", t0, node=2), 30,
                         what="director.down on node 1")
            out.append(e["t"] - t0)
            d2.daemon.start()
    finally:
        d1.daemon.stop()
        d2.daemon.stop()
    return out


def vip_on(ns: str, t0: float) -> float:
    wait_for(lambda: ns_has_addr(ns, VIP), 30, interval=0.005, what=f"VIP on {ns}")
    return time.monotonic() - t0


def bench_clusterbus(cc: CorosyncCluster, base: Path, site: Path, phases: list[float],
                     interval: float) -> list[float]:
    d = {i: Director(i, base / f"vr{i}", cc.ns[i], site, interval) for i in (1, 2)}
    out = []
    try:
        d[1].daemon.start()
        wait_for(lambda: ns_has_addr(cc.ns[1], VIP), 30, what="VIP on node 1")
        d[2].daemon.start()
        for phase in phases:
            wait_for(lambda: ns_has_addr(cc.ns[1], VIP) and not ns_has_addr(cc.ns[2], VIP)
                     and d[2].directors() == 2, 60, what="node 1 master, node 2 in the group")
            time.sleep(interval + phase)
            t0 = time.monotonic()
            d[1].kill9()
            out.append(vip_on(cc.ns[2], t0))
            d[1].daemon.start()  # removes its stale VIP, listens, preempts back
    finally:
        for x in d.values():
            x.daemon.stop()
    return out


def bench_keepalived(cc: CorosyncCluster, base: Path, phases: list[float],
                     interval: float) -> list[float]:
    k = {i: Keepalived(cc.ns[i], base / f"ka{i}", [VrrpInstance(
        vrid=52, priority=PRIORITY[i], advert_int=interval, vips=(f"{VIP}/24",))])
        for i in (1, 2)}
    out = []
    try:
        k[1].start()
        k[1].wait_vrrp_child()
        wait_for(lambda: ns_has_addr(cc.ns[1], VIP), 30, what="VIP on node 1 (keepalived)")
        k[2].start()
        k[2].wait_vrrp_child()
        for phase in phases:
            wait_for(lambda: ns_has_addr(cc.ns[1], VIP) and not ns_has_addr(cc.ns[2], VIP),
                     60, what="keepalived 1 master")
            time.sleep(interval + phase)
            t0 = time.monotonic()
            k[1].crash()
            out.append(vip_on(cc.ns[2], t0))
            k[1].start()
            k[1].wait_vrrp_child()
    finally:
        for x in k.values():
            x.crash()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--interval", type=float, default=1.0, help="VRRP advert interval (s)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    why = have_corosync()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    i = args.interval
    rng = random.Random(args.seed)
    phases = [i * rng.random() for _ in range(args.trials)]
    with tempfile.TemporaryDirectory(prefix="cb-cluster-") as d:
        base = Path(d)
        site = base / "site"
        install_recorder(site)
        with CorosyncCluster(base / "corosync", 2, token=500) as cc:
            cc.start_all()
            down = bench_director_down(cc, base, site, args.trials)
            fast = bench_clusterbus(cc, base, site, phases, i)
            ka = bench_keepalived(cc, base, phases, i)
    med = lambda xs: round(statistics.median(xs) * 1000, 1)  # noqa: E731
    skew = (256 - PRIORITY[2]) * i / 256
    out: dict[str, Any] = {
        "trials": args.trials,
        "advert_interval": i,
        "rfc_master_down_ms": round((3 * i + skew) * 1000, 1),
        "skew_time_ms": round(skew * 1000, 1),
        "director_down_ms": [round(x * 1000, 1) for x in down],
        "director_down_median_ms": med(down),
        "fast_takeover_ms": [round(x * 1000, 1) for x in fast],
        "fast_takeover_median_ms": med(fast),
        "keepalived_crash_ms": [round(x * 1000, 1) for x in ka],
        "keepalived_crash_median_ms": med(ka),
        "fast_takeover_ratio": round(statistics.median(fast) / statistics.median(ka), 3),
    }
    print(f"daemon kill -9 -> director.down on the peer: median "
          f"{out['director_down_median_ms']} ms (target <= 50)")
    print(f"VRRPv3 advert_interval {i} s: RFC Master_Down_Interval {out['rfc_master_down_ms']}"
          f" ms, Skew_Time {out['skew_time_ms']} ms (backup priority {PRIORITY[2]})")
    print(f"master daemon kill -9 -> VIP on backup, fast_takeover: median "
          f"{out['fast_takeover_median_ms']} ms; keepalived crash: median "
          f"{out['keepalived_crash_median_ms']} ms; ratio {out['fast_takeover_ratio']} "
          "(target <= 0.5)")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
