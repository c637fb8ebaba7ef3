#!/usr/bin/env python3
"""Soak (issue 12): a daemon under a steady event rate for a long time, with 4 plugins
and 3 subscribers, one of them slow::

    .venv/bin/python bench/soak.py --json                          # 10,000/s for 600 s
    .venv/bin/python bench/soak.py --rate 2000 --seconds 60 --json  # a short run

The daemon (a child process: ``clusterbus.daemon.Daemon`` with the installed entry-point
plugins, e.g. contrib/example-plugin, plus three small plugins registered here, so at
least 4 plugins; netlink off, ipc:// bus endpoints in a temporary directory) receives
membership reports on its ingest socket from a PUSH socket in this process, paced to
``--rate`` (alternating up/down of ``--nodes`` nodes: every report is a change and
publishes one event). Three :class:`clusterbus.bus.Subscriber` child processes follow
it: two fast ones, and a slow one that sleeps ``--slow-ms`` per event (it falls behind,
ZeroMQ drops its frames, and it repairs by REPLAY or resyncs by SNAPSHOT).

Figures (``--json``: the last line is one JSON object with all of them):

* ``rss_growth_pct``: the daemon's VmRSS at the end against its VmRSS at the end of the
  first window or 2 s after ``replay_ring`` reports were sent (the ring is full),
  whichever is later: filling the ring is a one-off, not growth (a short run should pass
  a smaller ``--replay-ring``; if the ring never fills there is no baseline and
  ``rss_growth_pct`` is null); ``rss_start_kb``, ``rss_baseline_kb``, ``rss_end_kb``,
  ``rss_baseline_at_s`` (when the baseline was taken).
* ``lost``: events the fast subscribers did not deliver, summed, counted against the
  daemon's ``published``: ``published - delivered`` per fast subscriber (a snapshot
  covers events without delivering them, so it counts as loss here).
* ``p99_ms_first_minute`` / ``p99_ms_last_minute``: p99 of the fast subscribers' latency
  (receive time minus the event's ``time``) for events produced in the first and the last
  window; the window is a minute, or a quarter of ``--seconds`` when that is shorter
  (``window_s``); ``p99_ms_per_window``: the same for every window of the run in order
  (a tail that grows shows as a rising series, a burst as one high window).
* ``slow``: the slow subscriber's counters (delivered, snapshots, gaps repaired, ...),
  ``sent`` / ``refused`` (reports sent, refused by a full PUSH queue), ``achieved_rate``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

#: set to a directory: the daemon writes cProfile stats there (daemon.prof), for finding
#: where its time goes (the profile slows it down: CPU figures are then not comparable).
PROFILE_ENV = "CLUSTERBUS_BENCH_PROFILE"


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=10_000, help="events per second (10000)")
    p.add_argument("--seconds", type=float, default=600, help="duration (600)")
    p.add_argument("--nodes", type=int, default=1000, help="nodes that flap (1000)")
    p.add_argument("--replay-ring", type=int, default=100_000,
                   help="the daemon's [bus] replay_ring (100000, the default)")
    p.add_argument("--slow-ms", type=float, default=5.0, help="slow subscriber ms/event")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    p.add_argument("--role", default="main", help=argparse.SUPPRESS)
    p.add_argument("--config", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--slow", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- child: the daemon ------------------------------------------------------------------------

def daemon_child(config_path: str) -> int:
    import logging

    from clusterbus import hookimpl
    from clusterbus.config import load_config
    from clusterbus.daemon import Daemon

    logging.basicConfig(level=logging.WARNING)

    class Counter:
        def __init__(self) -> None:
            self.n = 0

        @hookimpl
        def clusterbus_event(self, event: Any, cluster: Any) -> None:
            self.n += 1

    class Membership:
        @hookimpl
        def clusterbus_node_up(self, event: Any, cluster: Any) -> None:
            pass

        @hookimpl
        def clusterbus_node_down(self, event: Any, cluster: Any) -> None:
            pass

    async def main() -> None:
        daemon = Daemon(load_config(config_path), load_entrypoints=True)
        for name, plugin in (("soak_counter", Counter()), ("soak_membership", Membership()),
                             ("soak_counter2", Counter())):
            daemon.plugins.register(plugin, name)
        daemon.setup()
        task = asyncio.create_task(daemon.run())
        bus = daemon.services["bus"]
        async with asyncio.timeout(20):
            await bus.ready.wait()  # type: ignore[attr-defined]
        names = [p.name for p in daemon.plugins.describe()]
        print(json.dumps({"pid": os.getpid(), "plugins": names}), flush=True)
        await task

    where = os.environ.get(PROFILE_ENV)
    if not where:
        asyncio.run(main())
        return 0
    import cProfile
    import signal

    # the parent stops the daemon with SIGTERM: turn it into SystemExit so the stats
    # are written
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    prof = cProfile.Profile()
    try:
        prof.runcall(lambda: asyncio.run(main()))
    except SystemExit:
        pass
    finally:
        prof.dump_stats(os.path.join(where, "daemon.prof"))
    return 0


# -- child: a subscriber ----------------------------------------------------------------------

def subscriber_child(args: argparse.Namespace) -> int:
    from clusterbus.bus.client import RequestTimeout, Snapshot, Subscriber

    conf = json.loads(Path(args.config).read_text())
    stop = Path(args.out + ".stop")
    # (event time, latency s) of every event, as two flat arrays of doubles: 16 bytes an
    # event, where a list of tuples cost ~100 bytes and an allocation or three each, and
    # that cost of the measuring subscriber grew with the run (6M events in 10 minutes)
    times, lats = array("d"), array("d")
    snapshots = 0
    last_seq = 0

    async def main() -> dict[str, Any]:
        nonlocal snapshots, last_seq
        async with Subscriber(conf["publish"], conf["snapshot"], request_timeout=2.0) as sub:
            Path(args.out + ".ready").touch()
            checked = time.monotonic()
            while True:
                if time.monotonic() - checked > 0.5:  # a busy (or slow) one is told too
                    checked = time.monotonic()
                    if stop.exists():
                        break
                try:
                    item = await sub.next(timeout=0.5)
                except (TimeoutError, RequestTimeout):
                    if stop.exists():
                        break
                    continue
                if isinstance(item, Snapshot):
                    snapshots += 1
                else:
                    times.append(item.time)
                    lats.append(time.time() - item.time)
                    if args.slow:
                        time.sleep(args.slow_ms / 1000)  # blocks the loop: frames pile up
                last_seq = sub.seq or 0
            return dict(sub.counters)

    counters = asyncio.run(main())
    Path(args.out).write_text(json.dumps({"counters": counters, "snapshots": snapshots,
                                          "seq": last_seq, "times": times.tolist(),
                                          "lats": lats.tolist()}))
    return 0


# -- main -------------------------------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    # utime + stime (fields 14 and 15 of /proc/PID/stat, after the parenthesised comm)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status(snapshot: str) -> dict[str, Any]:
    from clusterbus.bus.client import fetch_status

    return asyncio.run(fetch_status(snapshot, timeout=5.0, retries=3))


def _published(st: dict[str, Any]) -> int:
    bus = st.get("services", {}).get("bus", {})
    value = bus.get("counters", {}).get("published")
    return int(value) if value is not None else int(st["seq"])


def _p99_ms(lat: list[float]) -> float | None:
    if len(lat) < 2:
        return None
    return round(statistics.quantiles(lat, n=100, method="inclusive")[98] * 1000, 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    from clusterbus.bus import codec

    tmp = Path(tempfile.mkdtemp(prefix="cbsoak."))
    eps = {k: f"ipc://{tmp}/{k}" for k in ("publish", "ingest", "snapshot")}
    config = tmp / "clusterbus.toml"
    config.write_text(f'[daemon]\nnode = 1\nstate_dir = "{tmp}/state"\nlog_level = "warning"\n'
                      f"[netlink]\nenabled = false\n[bus]\nreplay_ring = {args.replay_ring}\n"
                      + "".join(f'{k} = "{v}"\n' for k, v in eps.items()))
    (tmp / "endpoints.json").write_text(json.dumps(eps))
    me = [sys.executable, os.path.abspath(__file__)]
    daemon = subprocess.Popen([*me, "--role", "daemon", "--config", str(config)],
                              stdout=subprocess.PIPE, text=True)
    subs: list[subprocess.Popen[bytes]] = []
    outs = [str(tmp / f"sub{i}.json") for i in range(3)]
    try:
        assert daemon.stdout is not None
        ready = json.loads(daemon.stdout.readline())
        pid = ready["pid"]
        for i, out in enumerate(outs):
            slow = ["--slow", "--slow-ms", str(args.slow_ms)] if i == 2 else []
            subs.append(subprocess.Popen([*me, "--role", "sub", "--config",
                                          str(tmp / "endpoints.json"), "--out", out, *slow]))
        deadline = time.monotonic() + 30
        while not all(Path(o + ".ready").exists() for o in outs):
            assert time.monotonic() < deadline, "subscribers did not start"
            time.sleep(0.1)
        time.sleep(1.0)  # a heartbeat or two: every subscriber has its baseline
        rss_start = _rss_kb(pid)
        window = min(60.0, args.seconds / 4)
        # RSS baseline: after the first window and once the replay ring is full: counted by
        # reports sent (each one publishes an event), not by the nominal rate, which a
        # loaded machine may not reach (+ 2 s for the daemon to take what was queued)
        settled: float | None = None
        ring_full_at: float | None = None
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 100_000)
        push.connect(eps["ingest"])
        encoded = [[codec.encode_ingest(topic, n, [f"10.{n >> 8 & 255}.{n & 255}.1"])
                    for n in range(1, args.nodes + 1)] for topic in ("node.up", "node.down")]
        sent = refused = 0
        rss_baseline = 0
        cpu_start = _cpu_s(pid)
        t0 = time.time()
        start = time.monotonic()
        tick = 0.01
        while True:
            now = time.monotonic() - start
            if now >= args.seconds:
                break
            if ring_full_at is None and sent >= args.replay_ring:
                ring_full_at = now
            if (not rss_baseline and ring_full_at is not None and now >= window
                    and now >= ring_full_at + 2.0):
                rss_baseline, settled = _rss_kb(pid), round(now, 1)
            due = int(now * args.rate) + 1
            while sent + refused < due:
                i = sent + refused
                frames = encoded[(i // args.nodes) % 2][i % args.nodes]
                try:
                    push.send_multipart(frames, zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    refused += 1
            time.sleep(max(0.0, tick - ((time.monotonic() - start) - now)))
        elapsed = time.monotonic() - start
        push.close(linger=10_000)
        ctx.term()
        # let the daemon take what was sent, then stop the subscribers once they caught up
        settle = time.monotonic() + 60
        published = _published(_status(eps["snapshot"]))
        while time.monotonic() < settle:
            time.sleep(1.0)
            now_pub = _published(_status(eps["snapshot"]))
            if now_pub == published:
                break
            published = now_pub
        rss_end = _rss_kb(pid)
        cpu_used = _cpu_s(pid) - cpu_start
        time.sleep(3.0)  # fast subscribers drain; the slow one gets what it can
        for out in outs:
            Path(out + ".stop").touch()
        for s in subs:
            s.wait(120)
        results = [json.loads(Path(o).read_text()) for o in outs]
    finally:
        for s in subs:
            if s.poll() is None:
                s.kill()
                s.wait()
        daemon.terminate()
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)  # sockets, config, the subscribers' samples

    first_end, last_start = t0 + window, t0 + elapsed - window
    fast = results[:2]
    lost = sum(max(0, published - r["counters"].get("delivered", 0)) for r in fast)
    first = [lat for r in fast for t, lat in zip(r["times"], r["lats"]) if t < first_end]
    last = [lat for r in fast for t, lat in zip(r["times"], r["lats"]) if t >= last_start]
    nwin = max(1, int(elapsed // window))
    per_window: list[list[float]] = [[] for _ in range(nwin)]
    for r in fast:
        for t, lat in zip(r["times"], r["lats"]):
            i = int((t - t0) // window)
            if 0 <= i < nwin:
                per_window[i].append(lat)
    slow = results[2]
    return {
        "rate": args.rate, "seconds": args.seconds, "window_s": window,
        "sent": sent, "refused": refused, "achieved_rate": round(sent / elapsed, 1),
        "published": published,
        "daemon_cpu_us_per_event": round(cpu_used / published * 1e6, 1) if published else None,
        "plugins": ready["plugins"],
        "rss_baseline_at_s": settled, "rss_start_kb": rss_start,
        "rss_baseline_kb": rss_baseline, "rss_end_kb": rss_end,
        "rss_growth_pct": round((rss_end - rss_baseline) / rss_baseline * 100, 2)
        if rss_baseline else None,
        "lost": lost,
        "fast_delivered": [r["counters"].get("delivered", 0) for r in fast],
        "fast_snapshots": [r["snapshots"] for r in fast],
        "p99_ms_first_minute": _p99_ms(first), "p99_ms_last_minute": _p99_ms(last),
        "p99_ms_per_window": [_p99_ms(w) for w in per_window],
        "slow": {k: v for k, v in slow["counters"].items() if v} | {
            "snapshots": slow["snapshots"], "seq": slow["seq"]},
    }


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.role == "daemon":
        return daemon_child(args.config)
    if args.role == "sub":
        return subscriber_child(args)
    out = run(args)
    for key, value in out.items():
        print(f"{key:22} {value}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
