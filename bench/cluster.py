#!/usr/bin/env python3
"""Director-cluster benchmark (issue 9): peer-link latency and RSS, Corosync detection and
the fast VRRP takeover.

Run as root from the repository: ``.venv/bin/python bench/cluster.py [--trials 7]
[--interval 1.0] [--samples 1000] [--rounds 20] [--json]``. Not a test: it prints figures and ratios, it
asserts nothing.

Four directors, one network namespace each on one bridge, each a whole ``clusterbus run``
daemon with its own CURVE keys, linked to the three others by ``[[cluster.peer]]`` over TCP
(every socket CURVE), each with a recorder plugin (``PEER_RECORDER``: stamps in memory,
written every 0.2 s, so the instrument costs the daemons no file write per event):

- ``p50_ms`` / ``p99_ms``: ``--samples`` membership changes reported to director 1's
  ingest, one every ``--pace`` s; for each, the time from director 1's hook call to the
  hook call of each peer director (2, 3 and 4) for the same event (origin 1, same seq),
  all stamped with CLOCK_MONOTONIC, pooled. Beside it, in the same run and the same
  namespaces, the raw floor: one pyzmq PUB in director 1's namespace and one SUB in each
  peer's (2, 3, 4), CURVE with the same keys, one msgpack event of the same shape per
  frame at the same pace, stamped by the sender and timed by each receiver on the same
  clock (one way, as the daemon figure), pooled. Both fan out to three connections:
  libzmq sends to them in turn and the first is the fastest, so a one-SUB floor or one
  chosen director would compare different things (``by_director`` shows each).
  Both are taken in ``--rounds`` alternating rounds (the daemons and the raw sockets stay
  up throughout), so a change of the machine's load weighs on both.
  ``p99_ratio`` = ``p99_ms`` / ``raw_p99_ms`` (target <= 2).
- ``rss_mb``: the largest VmRSS of the four daemons after that run (each with 3 peers and
  CURVE on every socket; target <= 80 MB); ``rss_mb_each`` lists them.

Then two Corosync 3 instances (token 500 ms, token_coefficient 0), one per network namespace on
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

from cbdaemon import CLUSTERBUS, Daemon, director_keys  # noqa: E402
from corosync_cluster import (  # noqa: E402
    PRIORITY,
    VIP,
    CorosyncCluster,
    Director,
    director_config,
    have_corosync,
    install_recorder,
)
from keepalived import Keepalived, VrrpInstance, ns_has_addr, wait_for  # noqa: E402
from netns import Topology  # noqa: E402

# -- peer links: hook-to-hook latency beside raw pyzmq CURVE, and RSS ------------------------

PEER_NET = "10.78.0"
PEERS = (1, 2, 3, 4)
RAW_PORT = 7700


#: The peer-link run's recorder: it stamps each hook call with CLOCK_MONOTONIC and keeps
#: the line in memory, written out every 0.2 s and at shutdown. Writing each event to a
#: file from the hook (the Corosync part's recorder) cost about 0.3 ms per event on the
#: loaded machine, in every daemon and between director 1's stamp and its send; the raw
#: receivers keep their samples in memory too.
PEER_RECORDER = '''
import asyncio, os, time
import clusterbus

class Recorder:
    def __init__(self):
        self.lines = []
        self.scheduled = False

    @clusterbus.hookimpl
    def clusterbus_event(self, event, cluster):
        self.lines.append("%d %d %s %r\\n" % (event.origin, event.seq, event.topic,
                                              time.monotonic()))
        if not self.scheduled:
            self.scheduled = True
            try:
                asyncio.get_running_loop().call_later(0.2, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self):
        self.scheduled = False
        lines, self.lines = self.lines, []
        with open(os.environ["CB_RECORD"], "a") as f:
            f.writelines(lines)

    @clusterbus.hookimpl
    def clusterbus_shutdown(self, cluster):
        self.flush()

plugin = Recorder()
'''


def install_peer_recorder(site: Path) -> None:
    """Make ``site`` hold :data:`PEER_RECORDER`, installed as ``install_recorder`` does."""
    install_recorder(site)
    (site / "cb_recorder.py").write_text(PEER_RECORDER)


class PeerDirector(Daemon):
    """Director ``node`` in namespace ``ns``: TCP publish/snapshot, every socket CURVE, a
    ``[[cluster.peer]]`` for each other director, the recorder plugin."""

    def __init__(self, node: int, base: Path, ns: str, keys: Path, auth: Path,
                 site: Path) -> None:
        workdir = base / f"peer{node}"
        workdir.mkdir()
        self.record = workdir / "events.jsonl"
        super().__init__(workdir, ns, node=node,
                         env={"PYTHONPATH": str(site), "CB_RECORD": str(self.record)})
        self.node, self.keys = node, keys
        peers = "".join(
            f'[[cluster.peer]]\nnode = {n}\npublish = "tcp://{PEER_NET}.{n}:7661"\n'
            f'snapshot = "tcp://{PEER_NET}.{n}:7663"\npublic_key = "{keys}/d{n}.key"\n\n'
            for n in PEERS if n != node)
        self.config.write_text(  # in place of Daemon's: TCP and CURVE
            f'[daemon]\nnode = {node}\nstate_dir = "{workdir}/state"\n\n'
            f'[bus]\npublish = "tcp://{PEER_NET}.{node}:7661"\n'
            f'snapshot = "tcp://{PEER_NET}.{node}:7663"\ningest = "{self.ingest}"\n'
            f'certificate = "{keys}/d{node}.key_secret"\nauthorized_keys = "{auth}"\n\n'
            f'[netlink]\nenabled = false\n\n{peers}')

    def start(self, timeout: float = 20.0) -> PeerDirector:
        """Start the daemon without waiting (:meth:`alive_peers` tells when it is up)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*Topology.prefix(self.ns or ""), CLUSTERBUS, "run", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def alive_peers(self) -> list[int]:
        """The peers this daemon sees up (``status`` inside its namespace, its own keys)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"director {self.node} exited:\n{self.log.read_text()[-3000:]}")
        p = subprocess.run([*Topology.prefix(self.ns or ""), CLUSTERBUS, "status", "--json",
                            "--timeout", "1", "-c", str(self.config)],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            return []
        return sorted(json.loads(p.stdout)["services"]["peers"]["alive"])

    def hook_times(self, origin: int) -> dict[int, float]:
        """seq -> the time this daemon's hook saw the node.up/down of ``origin``."""
        out: dict[int, float] = {}
        try:
            lines = self.record.read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:  # "origin seq topic time" (PEER_RECORDER)
            fields = line.split()
            if len(fields) == 4 and int(fields[0]) == origin \
                    and fields[2] in ("node.up", "node.down"):
                out.setdefault(int(fields[1]), float(fields[3]))
        return out

    def rss_mb(self) -> float:
        assert self.proc is not None  # ip netns exec execs: this pid is the daemon's
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")


class IngestFeeder:
    """Membership changes of node 42 (alternating node.up/node.down, each a real change)
    to ``d``'s ingest over CURVE, on one connection kept open for every round."""

    def __init__(self, d: PeerDirector) -> None:
        import zmq

        from clusterbus.bus.security import load_client_keys

        keys = load_client_keys(d.keys / f"d{d.node}.key_secret", d.keys / f"d{d.node}.key")
        assert keys is not None
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        for option, value in keys.sockopts().items():
            self.sock.setsockopt(option, value)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)
        self.sock.connect(d.ingest)
        self.sent = 0

    def round(self, n: int, pace: float) -> None:
        """``n`` changes, one every ``pace`` s."""
        from clusterbus.bus.codec import encode_ingest

        for _ in range(n):
            up = self.sent % 2 == 0
            self.sock.send_multipart(
                encode_ingest("node.up" if up else "node.down", 42,
                              [f"{PEER_NET}.42"] if up else []))
            self.sent += 1
            time.sleep(pace)

    def close(self) -> None:
        self.sock.close(linger=2000)
        self.ctx.term()


def raw_body(i: int, stamp: int) -> dict[str, Any]:
    """An event of the same shape as the daemon's node.up/node.down bodies."""
    up = i % 2 == 0
    return {"v": 1, "origin": 1, "seq": i + 1, "time": time.time(), "node": 42,
            "addrs": [f"{PEER_NET}.42"] if up else [], "view": i + 1,
            "joined": [42] if up else [], "left": [] if up else [42],
            "reason": "ingest", "incarnation": 0, "t": stamp}


def raw_publisher(keys: Path, subscribers: int, pace: float) -> int:
    """(In director 1's namespace) a CURVE pyzmq PUB with director 1's keys. Waits for
    ``subscribers`` subscriptions, then for each line ``N`` on stdin sends N events one
    every ``pace`` s and answers ``ok``; ``end`` ends it."""
    import msgpack
    import zmq
    import zmq.auth

    public, secret = zmq.auth.load_certificate(keys / "d1.key_secret")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # XPUB only to wait for the subscriptions
    pub.curve_secretkey, pub.curve_publickey, pub.curve_server = secret, public, True
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not the first
    pub.setsockopt(zmq.LINGER, 2000)
    pub.bind(f"tcp://{PEER_NET}.1:{RAW_PORT}")
    for _ in range(subscribers):
        if not pub.poll(30_000):
            return 1
        pub.recv()
    for _ in range(20):
        pub.send_multipart([b"warm", b""])
        time.sleep(pace)
    print("ready", flush=True)
    i = 0
    for line in sys.stdin:
        if line.strip() == "end":
            break
        for _ in range(int(line)):
            pub.send_multipart([b"node.up" if i % 2 == 0 else b"node.down",
                                msgpack.packb(raw_body(i, time.perf_counter_ns()))])
            i += 1
            time.sleep(pace)
        print("ok", flush=True)
    pub.send_multipart([b"end", b""])
    pub.close()
    ctx.term()
    return 0


def raw_subscriber(keys: Path, node: int) -> int:
    """(In director ``node``'s namespace) a CURVE pyzmq SUB with that director's keys;
    prints the one-way latencies (ns) as one JSON list."""
    import msgpack
    import zmq
    import zmq.auth

    public, secret = zmq.auth.load_certificate(keys / f"d{node}.key_secret")
    server, _ = zmq.auth.load_certificate(keys / "d1.key")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.curve_secretkey, sub.curve_publickey, sub.curve_serverkey = secret, public, server
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 120_000)
    sub.connect(f"tcp://{PEER_NET}.1:{RAW_PORT}")
    lat = []
    try:
        while True:
            topic, body = sub.recv_multipart()
            now = time.perf_counter_ns()
            if topic == b"end":
                break
            if topic != b"warm":
                lat.append(now - msgpack.unpackb(body, raw=False)["t"])
    finally:
        sub.close(0)
        ctx.term()
    print(json.dumps(lat))
    return 0


class RawFloor:
    """The raw reference, kept running for every round: one CURVE PUB in director 1's
    namespace and one CURVE SUB in each other director's namespace with that director's
    keys, as many as subscribe to director 1's publish socket in the daemon run (so
    libzmq fans each message out to as many connections, in some order)."""

    def __init__(self, ns: dict[int, str], keys: Path, pace: float) -> None:
        me = [sys.executable, __file__, "--keys", str(keys), "--pace", str(pace)]
        self.subs = {n: subprocess.Popen([*Topology.prefix(ns[n]), *me, "--role", "raw-sub",
                                          "--node", str(n)], stdout=subprocess.PIPE, text=True)
                     for n in PEERS[1:]}
        self.pub = subprocess.Popen([*Topology.prefix(ns[1]), *me, "--role", "raw-pub",
                                     "--node", str(len(self.subs))],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.pub.stdout is not None
        line = self.pub.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"raw publisher said {line!r}, not {word!r}")

    def round(self, n: int) -> None:
        assert self.pub.stdin is not None
        self.pub.stdin.write(f"{n}\n")
        self.pub.stdin.flush()
        self._expect("ok")

    def finish(self) -> dict[int, list[float]]:
        """Each SUB's one-way latencies (s), by director."""
        assert self.pub.stdin is not None
        self.pub.stdin.write("end\n")
        self.pub.stdin.flush()
        out = {n: [x / 1e9 for x in json.loads(p.communicate(timeout=60)[0])]
               for n, p in self.subs.items()}
        self.pub.wait(30)
        return out

    def close(self) -> None:
        for p in (self.pub, *self.subs.values()):
            if p.poll() is None:
                p.kill()
                p.wait(5)


def bench_peers(base: Path, site: Path, samples: int, pace: float, rounds: int
                ) -> tuple[dict[int, list[float]], dict[int, list[float]], dict[int, float]]:
    """(director 1 -> peer hook latencies by peer, raw latencies by SUB's director,
    RSS MB per director)."""
    keys, auth = director_keys(base, PEERS)
    with Topology() as topo:
        ns = {n: topo.host(f"d{n}", f"{PEER_NET}.{n}/24") for n in PEERS}
        ds = {n: PeerDirector(n, base, ns[n], keys, auth, site) for n in PEERS}
        try:
            for d in ds.values():
                d.start()
            for d in ds.values():
                others = [n for n in PEERS if n != d.node]
                wait_for(lambda d=d, o=others: d.alive_peers() == o, 60, interval=0.5,
                         what=f"director {d.node} sees its 3 peers up")
            per = max(2, samples // rounds // 2 * 2)  # even: node 42 ends each round down
            feeder = IngestFeeder(ds[1])
            floor = RawFloor(ns, keys, pace)
            try:
                # interleaved rounds, both paths set up throughout: a load change of the
                # machine weighs on both
                for _ in range(rounds):
                    feeder.round(per, pace)
                    time.sleep(0.05)  # the last events' tail, before the other side starts
                    floor.round(per)
                    time.sleep(0.05)
                raw = floor.finish()
            finally:
                floor.close()
                feeder.close()
            total = rounds * per
            sent = wait_for(lambda: len(ds[1].hook_times(1)) >= total and ds[1].hook_times(1),
                            60, interval=0.5, what="director 1's hooks saw every event")
            lat = {}
            for n in PEERS[1:]:
                got = wait_for(lambda n=n: len(ds[n].hook_times(1)) >= total
                               and ds[n].hook_times(1), 60, interval=0.5,
                               what=f"director {n}'s hooks saw director 1's events")
                lat[n] = [got[s] - t for s, t in sent.items() if s in got]
            rss = {n: d.rss_mb() for n, d in ds.items()}
        finally:
            for d in ds.values():
                d.stop()
    return lat, raw, rss


def percentile_ms(xs: list[float], p: int) -> float:
    return round(statistics.quantiles(xs, n=100, method="inclusive")[p - 1] * 1000, 3)


def bench_director_down(cc: CorosyncCluster, base: Path, site: Path, trials: int) -> list[float]:
    d1 = Director(1, base / "dd1", cc.ns[1], site)
    d2 = Director(2, base / "dd2", cc.ns[2], site)
    out = []
    try:
        d1.daemon.start()
        d2.daemon.start()
        for _ in range(trials):
            wait_for(lambda: d1.group_size() == 2 and d2.group_size() == 2, 30,
                     what="both daemons in the group")
            time.sleep(0.2)
            t0 = d2.kill9()
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
    d = {i: Director(i, base / f"vr{i}", cc.ns[i], site, director_config(i, advert=interval))
         for i in (1, 2)}
    out = []
    try:
        d[1].daemon.start()
        wait_for(lambda: ns_has_addr(cc.ns[1], VIP), 30, what="VIP on node 1")
        d[2].daemon.start()
        for phase in phases:
            wait_for(lambda: ns_has_addr(cc.ns[1], VIP) and not ns_has_addr(cc.ns[2], VIP)
                     and d[2].group_size() == 2, 60, what="node 1 master, node 2 in the group")
            time.sleep(interval + phase)
            t0 = d[1].kill9()
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
    ap.add_argument("--samples", type=int, default=1000, help="peer-link latency samples")
    ap.add_argument("--pace", type=float, default=0.005, help="seconds between two samples")
    ap.add_argument("--rounds", type=int, default=20,
                    help="peer-link and raw samples are taken in this many alternating rounds")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--role", choices=("raw-pub", "raw-sub"), help=argparse.SUPPRESS)
    ap.add_argument("--keys", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--node", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "raw-pub":
        return raw_publisher(args.keys, args.node, args.pace)
    if args.role == "raw-sub":
        return raw_subscriber(args.keys, args.node)
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
        install_peer_recorder(base / "peer-site")
        lat_by, raw_by, rss = bench_peers(base, base / "peer-site", args.samples, args.pace,
                                          args.rounds)
        with CorosyncCluster(base / "corosync", 2, token=500) as cc:
            cc.start_all()
            down = bench_director_down(cc, base, site, args.trials)
            fast = bench_clusterbus(cc, base, site, phases, i)
            ka = bench_keepalived(cc, base, phases, i)
    med = lambda xs: round(statistics.median(xs) * 1000, 1)  # noqa: E731
    lat = [x for n in sorted(lat_by) for x in lat_by[n]]  # every peer director, pooled
    raw = [x for n in sorted(raw_by) for x in raw_by[n]]
    skew = (256 - PRIORITY[2]) * i / 256
    out: dict[str, Any] = {
        "samples": len(lat),
        "raw_samples": len(raw),
        "pace_s": args.pace,
        "rounds": args.rounds,
        "p50_ms": percentile_ms(lat, 50),
        "p99_ms": percentile_ms(lat, 99),
        "raw_p50_ms": percentile_ms(raw, 50),
        "raw_p99_ms": percentile_ms(raw, 99),
        "p50_ratio": round(percentile_ms(lat, 50) / percentile_ms(raw, 50), 2),
        "p99_ratio": round(percentile_ms(lat, 99) / percentile_ms(raw, 99), 2),
        # by receiving director: libzmq sends to the connections in turn, and the first
        # one's is the fastest
        "by_director": {str(n): {"p50_ms": percentile_ms(lat_by[n], 50),
                                 "p99_ms": percentile_ms(lat_by[n], 99),
                                 "raw_p50_ms": percentile_ms(raw_by[n], 50),
                                 "raw_p99_ms": percentile_ms(raw_by[n], 99)}
                        for n in sorted(lat_by)},
        "rss_mb_each": {str(n): v for n, v in rss.items()},
        "rss_mb": max(rss.values()),
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
    print(f"event on director 1 -> hook on directors 2-4: p50 {out['p50_ms']} ms, p99 "
          f"{out['p99_ms']} ms; raw pyzmq CURVE PUB/SUB: p50 {out['raw_p50_ms']} ms, p99 "
          f"{out['raw_p99_ms']} ms; p99 ratio {out['p99_ratio']} (target <= 2)")
    print(f"daemon RSS with 3 peers and CURVE: {out['rss_mb']} MB (largest of "
          f"{len(rss)}; target <= 80)")
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
