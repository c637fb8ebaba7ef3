#!/usr/bin/env python3
"""Bus benchmark: netlink emit -> daemon -> 4 no-op plugins -> ZeroMQ -> subscriber,
side by side with the raw floor (one pyzmq PUB, one SUB, one msgpack event per frame).

Run as root (the daemon's netlink source accepts uid 0 and NETLINK_USERSOCK needs no
privilege, but the benchmark isolates itself in a fresh network namespace with
``unshare -n`` so other netlink users on the machine are not disturbed)::

    .venv/bin/python bench/bus.py                 # 1M events, human-readable
    .venv/bin/python bench/bus.py --events 50000 --json

Figures:

* ``events_per_s_single``: netlink messages sent by this process, one per datagram, each
  a real membership change, through a real ``clusterbus.daemon.Daemon`` in a child
  process (netlink source, engine, four no-op plugins, BusService), received in order by
  :class:`clusterbus.bus.Subscriber` here. The sender keeps at most ``--window`` events
  in flight so that no queue overflows (an overflow would be a loss, not speed).
* ``events_per_s_batched``: the same with every send packing the messages the window
  allows into datagrams of up to 4096 bytes (``Sender.send_encoded``: 93 messages of 44
  bytes), which the netlink format allows and the issue's "batching allowed" covers.
* ``events_per_s`` / ``ratio``: the headline, from the mode named by ``mode``
  (``batched``); ``ratio_single`` and ``ratio_batched`` are both modes against the raw
  floor of the same run.
* ``latency_p50_us`` / ``latency_p99_us``: one message at a time on an idle daemon, from
  before the netlink ``sendto`` to the event coming out of the subscriber.
* ``raw_*``: the same for a child process with one pyzmq PUB that msgpack-encodes an event
  of the same shape per frame and a plain pyzmq SUB here that decodes it (no framework).
  Raw latency uses ``time.perf_counter_ns`` stamped by the sender (CLOCK_MONOTONIC is
  shared by all processes of the machine); its probes, one per millisecond, start once
  the subscriber has drained the throughput run (it subscribes to ``_ready`` then), so
  both latencies are measured on an idle pair.
* ``latency_ratio`` = p50 / raw p50; ``latency_p99_ratio`` = p99 / raw p99.
* ``daemon_cpu_us_per_event_*``: the daemon's CPU (user + system, from /proc) per event in
  each mode; ``*_sys_*`` the kernel's share.
* ``events_per_frame_*``: events per batch frame the daemon sent in each mode.
* ``daemon_rss_bytes``: the daemon's VmRSS after the throughput run
  (``daemon_rss_after_events`` events: both throughput runs).

``--json`` prints one JSON object with every figure as the last line.
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
from pathlib import Path
from typing import Any

NETNS_ENV = "CLUSTERBUS_BENCH_NETNS"
#: set to a directory: the daemon and this process write cProfile stats there
#: (daemon.prof, main.prof), for finding where the time goes.
PROFILE_ENV = "CLUSTERBUS_BENCH_PROFILE"
GROUP = 22  # inside our own network namespace nobody else listens
#: the raw subscriber subscribes to this once it has received the whole flood
READY = b"_ready"
NODES = 1000


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000, help="throughput events (1M)")
    p.add_argument("--latency-samples", type=int, default=5000, help="latency samples")
    p.add_argument("--window", type=int, default=1000, help="max events in flight")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    p.add_argument("--no-netns", action="store_true",
                   help="do not isolate in a new network namespace")
    p.add_argument("--role", default="main", help=argparse.SUPPRESS)
    p.add_argument("--config", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- child: the daemon ---------------------------------------------------------------------------

def daemon_child(config_path: str) -> int:
    """Run a clusterbus Daemon with four no-op plugins; print its endpoints when ready."""
    import logging

    from clusterbus import hookimpl
    from clusterbus.config import load_config
    from clusterbus.daemon import Daemon

    logging.basicConfig(level=logging.WARNING)

    class NoOp:
        """A plugin that implements the hooks every membership event reaches."""

        @hookimpl
        def clusterbus_node_up(self, event: Any, cluster: Any) -> None:
            pass

        @hookimpl
        def clusterbus_node_down(self, event: Any, cluster: Any) -> None:
            pass

        @hookimpl
        def clusterbus_event(self, event: Any, cluster: Any) -> None:
            pass

    async def main() -> None:
        daemon = Daemon(load_config(config_path), load_entrypoints=False)
        for i in range(4):
            daemon.plugins.register(NoOp(), f"noop{i}")
        daemon.setup()
        task = asyncio.create_task(daemon.run())
        bus, netlink = daemon.services["bus"], daemon.services["netlink"]
        async with asyncio.timeout(20):
            await bus.ready.wait()  # type: ignore[attr-defined]
            await netlink.ready.wait()  # type: ignore[attr-defined]
        print(json.dumps({"endpoints": bus.endpoints, "pid": os.getpid()}),  # type: ignore[attr-defined]
              flush=True)
        await task

    _profiled(lambda: asyncio.run(main()), "daemon.prof")
    return 0


def _profiled(fn: Any, name: str) -> Any:
    where = os.environ.get(PROFILE_ENV)
    if not where:
        return fn()
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        prof.dump_stats(os.path.join(where, name))


# -- child: the raw floor publisher -------------------------------------------------------------

def raw_body(i: int, stamp: int = 0) -> dict[str, Any]:
    """An event of the same shape as the daemon's node.up/node.down bodies."""
    node = i % NODES + 2
    up = (i // NODES) % 2 == 0
    return {"v": 1, "origin": 1, "seq": i + 1, "time": time.time(), "node": node,
            "addrs": [f"10.77.{node >> 8}.{node & 255}"], "view": i + 1,
            "joined": [node] if up else [], "left": [] if up else [node],
            "reason": "netlink", "incarnation": stamp}


def raw_publisher_child(count: int, samples: int) -> int:
    """One pyzmq PUB: ``count`` events flat out, then ``samples`` paced latency probes."""
    import msgpack
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # XPUB only to wait for the subscription; sends are PUB's
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, -1)
    pub.bind("tcp://127.0.0.1:*")
    print(pub.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    pub.recv()  # the subscription
    for topic in (b"warm",) * 100:
        pub.send_multipart([topic, msgpack.packb({"v": 1})])
    for i in range(count):
        pub.send_multipart([b"node.up" if (i // NODES) % 2 == 0 else b"node.down",
                            msgpack.packb(raw_body(i))])
    # Probe an idle pair, as ours is: the subscriber says it has drained the flood by
    # subscribing to READY (else the first probes queue behind the flood's tail and the
    # raw p99 measures that backlog).
    while pub.recv() != b"\x01" + READY:
        pass
    for i in range(samples):
        time.sleep(0.001)
        pub.send_multipart([b"probe", msgpack.packb(raw_body(i, 0) | {
            "t": time.perf_counter_ns()})])
    pub.send_multipart([b"end", b""])
    pub.close()
    ctx.term()
    return 0


def raw_subscriber(endpoint: str, count: int, samples: int) -> dict[str, Any]:
    import msgpack
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 60_000)
    sub.connect(endpoint)
    try:
        topic, body = sub.recv_multipart()
        while topic == b"warm":
            topic, body = sub.recv_multipart()
        t0, c0 = time.perf_counter(), time.thread_time()
        got = 1
        msgpack.unpackb(body, raw=False)
        while got < count:
            topic, body = sub.recv_multipart()
            msgpack.unpackb(body, raw=False)
            got += 1
        t1, c1 = time.perf_counter(), time.thread_time()
        sub.setsockopt(zmq.SUBSCRIBE, READY)  # drained: the publisher may start probing
        lat = []
        while True:
            topic, body = sub.recv_multipart()
            if topic == b"end":
                break
            now = time.perf_counter_ns()
            lat.append(now - msgpack.unpackb(body, raw=False)["t"])
    finally:
        sub.close(0)
        ctx.term()
    return {"raw_events_per_s": (count - 1) / (t1 - t0), **_percentiles("raw_", lat),
            "raw_receiver_cpu_us_per_event": round((c1 - c0) / max(1, count - 1) * 1e6, 2)}


def _percentiles(prefix: str, ns: list[int]) -> dict[str, float]:
    if not ns:
        return {f"{prefix}latency_p50_us": float("nan"), f"{prefix}latency_p99_us": float("nan")}
    q = statistics.quantiles(ns, n=100, method="inclusive")
    return {f"{prefix}latency_p50_us": round(q[49] / 1000, 1),
            f"{prefix}latency_p99_us": round(q[98] / 1000, 1)}


async def bench_raw(args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", "raw", "--events", str(args.events),
         "--latency-samples", str(args.latency_samples)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        endpoint = (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)).strip()
        return await asyncio.to_thread(raw_subscriber, endpoint, args.events,
                                       args.latency_samples)
    finally:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- ours ---------------------------------------------------------------------------------------

def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Emitter:
    """Netlink sender whose every message is a real membership change (UP/DOWN flips).

    The 2 x NODES distinct messages are encoded once up front (``nlmsg_seq`` 0, which is
    informational): the sender shares this process with the subscriber, and the cost of
    building messages in Python is not what the benchmark measures. :meth:`send` sends
    one message per datagram, one ``sendto`` each; :meth:`send_batch` packs several into
    datagrams of up to :data:`~clusterbus.netlink.sender.DATAGRAM_BYTES`.
    """

    def __init__(self, group: int) -> None:
        from clusterbus.netlink.message import encode
        from clusterbus.netlink.sender import Sender
        from clusterbus.view import NodeState

        self.sender = Sender(group)
        self.i = 0
        pid = self.sender.port_id
        up = [encode(NodeState.UP, n, (f"10.77.{n >> 8}.{n & 255}",), pid=pid)
              for n in range(2, NODES + 2)]
        down = [encode(NodeState.DOWN, n, (), pid=pid) for n in range(2, NODES + 2)]
        self._cycle = up + down  # message i is _cycle[i % (2 * NODES)]

    def send(self) -> None:
        self.sender.send_bytes(self._cycle[self.i % (2 * NODES)])
        self.i += 1

    def send_batch(self, count: int) -> None:
        start = self.i % (2 * NODES)
        msgs = self._cycle[start:start + count]
        if len(msgs) < count:  # wrapped around the cycle
            msgs += self._cycle[:count - len(msgs)]
        self.sender.send_encoded(msgs)
        self.i += count


async def bench_ours(args: argparse.Namespace) -> dict[str, Any]:
    from clusterbus.bus.client import Snapshot, Subscriber
    from clusterbus.netlink.sender import DATAGRAM_BYTES

    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-"))
    cfg = tmp / "bench.toml"
    cfg.write_text(
        f'[daemon]\nnode = 1\nlog_level = "warning"\nstate_dir = "{tmp}/state"\n'
        f'[bus]\npublish = "tcp://127.0.0.1:*"\ningest = "ipc://{tmp}/ingest"\n'
        'snapshot = "tcp://127.0.0.1:*"\n'
        f'[netlink]\nenabled = true\ngroup = {GROUP}\nallowed_uids = [0]\n'
    )
    proc = subprocess.Popen([sys.executable, __file__, "--role", "daemon", "--config", str(cfg)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        if not line:
            raise SystemExit("the daemon did not start (see its log above)")
        ready = json.loads(line)
        endpoints, pid = ready["endpoints"], ready["pid"]
        emitter = Emitter(GROUP)
        async with Subscriber(endpoints["publish"], endpoints["snapshot"]) as sub:
            # Connected once a heartbeat came through.
            async with asyncio.timeout(30):
                while not sub.counters["heartbeats"]:
                    try:
                        await sub.next(timeout=0.2)
                    except TimeoutError:
                        pass

            async def pump(n: int, batched: bool) -> float:
                sent = received = 0
                t0 = time.perf_counter()
                async with asyncio.timeout(max(60.0, n / 1000)):
                    while received < n:
                        room = min(n - sent, args.window - (sent - received))
                        if not batched:
                            for _ in range(room):
                                emitter.send()
                            sent += max(room, 0)
                        elif room >= min(per_datagram, n - sent) > 0:
                            # refill once a whole datagram's worth is free, not one
                            # message per received event
                            emitter.send_batch(room)
                            sent += room
                        item = await sub.next()
                        if isinstance(item, Snapshot):
                            raise SystemExit(f"resynchronised ({item.reason}): events lost")
                        received += 1
                return time.perf_counter() - t0

            per_datagram = DATAGRAM_BYTES // 44  # messages of the usual size per datagram
            out: dict[str, Any] = {"events": args.events}
            async def batches_sent() -> int:
                status = await sub.fetch_status()
                return int(status["services"]["bus"]["counters"].get("batches_sent", 0))

            for mode in ("single", "batched"):
                await pump(min(10_000, args.events), mode == "batched")  # warm-up
                frames0 = await batches_sent()
                cpu0, self0 = _cpu(pid), time.process_time()
                elapsed = await pump(args.events, mode == "batched")
                cpu1, self1 = _cpu(pid), time.process_time()
                # events per batch frame: how much each send and wake-up is shared
                out[f"events_per_frame_{mode}"] = round(
                    args.events / max(1, await batches_sent() - frames0), 1)
                out[f"events_per_s_{mode}"] = args.events / elapsed
                out[f"daemon_cpu_us_per_event_{mode}"] = round(
                    (sum(cpu1) - sum(cpu0)) / args.events * 1e6, 2)
                out[f"daemon_sys_us_per_event_{mode}"] = round(
                    (cpu1[1] - cpu0[1]) / args.events * 1e6, 2)
                out[f"receiver_cpu_us_per_event_{mode}"] = round(
                    (self1 - self0) / args.events * 1e6, 2)
            rss, rss_after = _rss(pid), emitter.i
            lat = []  # one message per datagram, one at a time, on an idle daemon
            async with asyncio.timeout(max(60.0, args.latency_samples / 100)):
                for _ in range(args.latency_samples):
                    t = time.perf_counter_ns()
                    emitter.send()
                    await sub.next()
                    lat.append(time.perf_counter_ns() - t)
            client = dict(sub.counters)
            bus_counters = (await sub.fetch_status())["services"]["bus"]["counters"]
        emitter.sender.close()
        return {**out, **_percentiles("", lat), "daemon_rss_bytes": rss,
                "daemon_rss_after_events": rss_after,
                "daemon_batches_sent": bus_counters.get("batches_sent", 0),
                "daemon_frames_sent": bus_counters.get("frames_sent", 0),
                "subscriber_gaps": client.get("gaps", 0),
                "subscriber_replayed": client.get("replayed", 0)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ours = await bench_ours(args)
    raw = await bench_raw(args)
    return _combine(ours, raw)


#: The mode whose figures are the headline ``events_per_s`` and ``ratio``.
HEADLINE_MODE = "batched"


def _combine(ours: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    out = {**ours, **raw}
    for mode in ("single", "batched"):
        out[f"ratio_{mode}"] = round(out[f"events_per_s_{mode}"] / out["raw_events_per_s"], 3)
        out[f"events_per_s_{mode}"] = round(out[f"events_per_s_{mode}"])
    out["mode"] = HEADLINE_MODE
    out["events_per_s"] = out[f"events_per_s_{HEADLINE_MODE}"]
    out["ratio"] = out[f"ratio_{HEADLINE_MODE}"]
    out["latency_ratio"] = round(out["latency_p50_us"] / out["raw_latency_p50_us"], 3)
    out["latency_p99_ratio"] = round(out["latency_p99_us"] / out["raw_latency_p99_us"], 3)
    out["raw_events_per_s"] = round(out["raw_events_per_s"])
    return out


def _run_bench(args: argparse.Namespace) -> dict[str, Any]:
    if not os.environ.get(PROFILE_ENV):
        return asyncio.run(bench(args))
    # profiled: our side runs in its own loop so the profile holds only it
    ours = _profiled(lambda: asyncio.run(bench_ours(args)), "main.prof")
    raw = asyncio.run(bench_raw(args))
    return _combine(ours, raw)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.role == "daemon":
        return daemon_child(args.config)
    if args.role == "raw":
        return raw_publisher_child(args.events, args.latency_samples)
    if not args.no_netns and not os.environ.get(NETNS_ENV):
        if os.geteuid() != 0:
            raise SystemExit("run as root, or pass --no-netns")
        env = {**os.environ, NETNS_ENV: "1"}
        return subprocess.call(["unshare", "--net", "--", sys.executable, __file__,
                                *(argv if argv is not None else sys.argv[1:])], env=env)
    if os.environ.get(NETNS_ENV):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    out = _run_bench(args)
    for mode, what in (("single", "one message per datagram"),
                       ("batched", "batched datagrams (<= 4096 bytes)")):
        print(f"clusterbus, {what + ':':<36} {out[f'events_per_s_{mode}']:>9,} events/s  "
              f"ratio {out[f'ratio_{mode}']}  daemon CPU "
              f"{out[f'daemon_cpu_us_per_event_{mode}']} us/event "
              f"({out[f'daemon_sys_us_per_event_{mode}']} in the kernel), "
              f"{out[f'events_per_frame_{mode}']} events per frame")
    print(f"{'raw pyzmq (one PUB, one SUB, msgpack):':<49} {out['raw_events_per_s']:>9,} "
          f"events/s  raw receiver CPU {out['raw_receiver_cpu_us_per_event']} us/event")
    print(f"headline ratio ({out['mode']}): {out['ratio']}")
    print(f"latency (one message per datagram, idle daemon): p50 {out['latency_p50_us']} us "
          f"p99 {out['latency_p99_us']} us; raw p50 {out['raw_latency_p50_us']} us p99 "
          f"{out['raw_latency_p99_us']} us; ratios p50 {out['latency_ratio']} p99 "
          f"{out['latency_p99_ratio']}")
    print(f"our receiver CPU (netlink sender + subscriber): single "
          f"{out['receiver_cpu_us_per_event_single']} us/event, batched "
          f"{out['receiver_cpu_us_per_event_batched']} us/event")
    print(f"daemon RSS after {out['daemon_rss_after_events']:,} events: "
          f"{out['daemon_rss_bytes'] / 2**20:.1f} MiB")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
