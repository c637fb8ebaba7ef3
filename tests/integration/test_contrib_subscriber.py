"""contrib/subscriber-c (cb-sub), built with its Makefile and run against a real daemon on
``ipc://`` endpoints in the test's directory: heartbeats, events in order, gaps (injected
with ``-x``) repaired by REPLAY, the SNAPSHOT fallback when the replay ring no longer holds
them, and a daemon restart detected by its epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from cbdaemon import Daemon

from clusterbus.bus.codec import encode_ingest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "contrib" / "subscriber-c"
IN_CI = os.environ.get("CI") == "true"


def _missing() -> str | None:
    if not shutil.which("make") or not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler or make"
    if not shutil.which("pkg-config"):
        return "no pkg-config"
    for pc in ("libzmq", "msgpack"):
        if subprocess.run(["pkg-config", "--exists", pc]).returncode != 0 and not (
                pc == "msgpack" and
                subprocess.run(["pkg-config", "--exists", "msgpack-c"]).returncode == 0):
            return f"pkg-config finds no {pc} (tests/run installs libzmq3-dev libmsgpack-dev)"
    return None


@pytest.fixture(scope="module")
def cbsub(tmp_path_factory) -> str:
    """The Makefile's build; CB_SUB=/path/to/cb-sub tests another (e.g. a sanitizer build)."""
    if os.environ.get("CB_SUB"):
        return os.environ["CB_SUB"]
    why = _missing()
    if why and not IN_CI:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("cbsub") / "cb-sub"
    p = subprocess.run(["make", "-s", "-C", str(SRC), f"OUT={out}"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return str(out)


class Sub:
    """cb-sub as a child process; its JSON lines collected by a thread."""

    def __init__(self, exe: str, d: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen([exe, "-p", d.publish, "-s", d.snapshot, "-t", "60", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, pred, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(pred(x) for x in list(self.lines)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"cb-sub: no {what}; got {self.lines}")

    def finish(self, timeout: float = 60.0) -> str:
        """Wait for the exit (``-n`` reached); its stderr."""
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(10)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        assert self.proc.returncode == 0, err
        return err

    def events(self) -> list[dict]:
        return [x for x in self.lines if not x["topic"].startswith("_")]

    def of(self, topic: str) -> list[dict]:
        return [x for x in self.lines if x["topic"] == topic]


def push(d: Daemon, nodes: range, topic: str = "node.up") -> None:
    """Membership reports on the daemon's ingest socket, in order."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    try:
        s.connect(d.ingest)
        for n in nodes:
            s.send_multipart(encode_ingest(topic, n))
    finally:
        s.close(linger=5000)
        ctx.term()


@pytest.fixture()
def daemon(tmp_path):
    d = Daemon(tmp_path, None, extra="[netlink]\nenabled = false\n").start()
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log.read_text()


def _seqs(sub: Sub) -> list[int]:
    return [x["seq"] for x in sub.events()]


def test_heartbeats_snapshot_and_events_in_order(cbsub: str, daemon: Daemon):
    d = daemon
    sub = Sub(cbsub, d, "-S", "-H", "-n", "20")
    sub.wait_for(lambda x: x["topic"] == "_hb", "heartbeat")
    push(d, range(1, 21))
    err = sub.finish()
    snap = sub.of("_snapshot")
    assert len(snap) == 1 and snap[0]["reason"] == "start" and snap[0]["seq"] == 0
    hb = sub.of("_hb")[0]
    # the epoch is a decimal string in JSON (a u64 does not survive a double)
    assert isinstance(hb["epoch"], str) and int(hb["epoch"]) > 0
    assert snap[0]["epoch"] == hb["epoch"] and hb["origin"] == 7 and hb["interval"] == 0.2
    assert _seqs(sub) == list(range(1, 21))
    assert [(x["topic"], x["node"]) for x in sub.events()] == [("node.up", n) for n in range(1, 21)]
    assert all(x["origin"] == 7 and x["reason"] == "zmq" for x in sub.events())
    assert "0 duplicates, 0 unknown, 0 undecodable" in err


def test_gaps_repaired_by_replay(cbsub: str, daemon: Daemon):
    d = daemon
    # lost: seq 3 and 6..9 (the next event shows the gap), and 20, the last one of the
    # second burst (only the next heartbeat shows that gap)
    sub = Sub(cbsub, d, "-H", "-x", "3", "-x", "6-9", "-x", "20", "-n", "20")
    sub.wait_for(lambda x: x["topic"] == "_hb", "heartbeat")
    push(d, range(1, 11))
    sub.wait_for(lambda x: x.get("seq") == 10 and x["topic"] == "node.up", "event 10")
    push(d, range(11, 21))
    err = sub.finish()
    assert _seqs(sub) == list(range(1, 21))
    assert [x["node"] for x in sub.events()] == list(range(1, 21))
    repairs = sub.of("_repair")
    # the first burst's repairs may fetch more than the gap (whatever the ring holds by then)
    assert repairs[0]["after"] == 2 and {r["after"] for r in repairs} <= {2, 5, 19}
    assert repairs[-1] == {"topic": "_repair", "via": "replay", "after": 19, "events": 1,
                           "last_seq": 20}
    assert sub.of("_snapshot") == []
    assert "6 dropped (-x)" in err, err


def test_too_old_gap_falls_back_to_snapshot(cbsub: str, tmp_path: Path):
    d = Daemon(tmp_path, None, extra="[netlink]\nenabled = false\n").start()
    d.stop()  # rewrite the config: a 16-event replay ring
    d.config.write_text(d.config.read_text().replace("heartbeat_interval = 0.2",
                                 "heartbeat_interval = 0.2\nreplay_ring = 16"))
    d.start()
    try:
        sub = Sub(cbsub, d, "-H", "-x", "2-40", "-n", "11")
        sub.wait_for(lambda x: x["topic"] == "_hb", "heartbeat")
        push(d, range(1, 51))
        sub.wait_for(lambda x: x["topic"] == "_snapshot", "a snapshot")
        push(d, range(51, 61))
        sub.finish()
    finally:
        assert d.stop() == 0, d.log.read_text()
    snaps = sub.of("_snapshot")
    assert len(snaps) == 1 and snaps[0]["reason"] == "too_old", sub.lines
    after = snaps[0]["seq"]
    assert 41 <= after <= 50  # the gap showed at seq 41; the ring held only 16 events
    # seq 1 live, then the snapshot (nodes 1..after up), then what came after it
    assert _seqs(sub) == [1, *range(after + 1, after + 11)]
    assert {n["node"] for n in snaps[0]["nodes"] if n["state"] == "up"} == set(range(1, after + 1))


def test_restart_detected_by_epoch(cbsub: str, daemon: Daemon):
    d = daemon
    sub = Sub(cbsub, d, "-H", "-n", "3")
    sub.wait_for(lambda x: x["topic"] == "_hb", "heartbeat")
    push(d, range(1, 3))
    sub.wait_for(lambda x: x.get("seq") == 2 and x["topic"] == "node.up", "event 2")
    first_epoch = sub.of("_hb")[0]["epoch"]
    assert d.stop() == 0
    d.start()
    sub.wait_for(lambda x: x["topic"] == "_snapshot", "resync after the restart")
    push(d, range(5, 6))
    sub.finish()
    snap = sub.of("_snapshot")[0]
    assert snap["reason"] == "restart" and snap["epoch"] != first_epoch
    assert [(x["seq"], x["node"]) for x in sub.events()] == [(1, 1), (2, 2), (snap["seq"] + 1, 5)]


# -- against a scripted daemon: what a real one never sends -----------------------------

EPOCH1 = 2**64 - 5  # beyond 2^53: must print exactly, as a string
EPOCH2 = 12345


def _body(seq: int, node: int, **over) -> bytes:
    body = {"v": 1, "origin": 7, "seq": seq, "time": 1.5, "node": node, "addrs": ["10.0.0.1"],
            "view": seq, "joined": [node], "left": [], "reason": "zmq", "incarnation": 0}
    body.update(over)
    return msgpack.packb({k: v for k, v in body.items() if v is not None})


class Scripted:
    """An XPUB and a ROUTER on ipc:// answering SNAPSHOT/REPLAY from a script."""

    def __init__(self, tmp_path: Path, curve_secret: bytes | None = None) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.router = self.ctx.socket(zmq.ROUTER)
        for sock in (self.pub, self.router) if curve_secret else ():
            sock.curve_server = True
            sock.curve_secretkey = curve_secret
        self.publish, self.snapshot = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/snap"
        self.pub.bind(self.publish)
        self.router.bind(self.snapshot)
        self.replays: dict[int, list[bytes]] = {}  # after -> payload frames
        self.epoch = EPOCH1
        self.snap_seq = 0
        self.requests: list[tuple] = []

    def wait_subscriber(self) -> None:
        assert self.pub.poll(30_000), "no subscription"
        assert self.pub.recv() == b"\x01"

    def send(self, topic: bytes, body: bytes) -> None:
        self.pub.send_multipart([topic, body])

    def hb(self, seq: int) -> None:
        self.send(b"_hb", msgpack.packb({"v": 1, "epoch": self.epoch, "origin": 7, "seq": seq,
                                         "time": 1.0, "interval": 0.2, "extra": "ignored"}))

    def serve(self, n: int) -> None:
        """Answer n requests."""
        for _ in range(n):
            assert self.router.poll(30_000), f"no request; got {self.requests}"
            ident, cmd, *args = self.router.recv_multipart()
            args = [msgpack.unpackb(a) for a in args]
            self.requests.append((cmd.decode(), *args))
            if cmd == b"SNAPSHOT":
                hdr = {"v": 1, "epoch": self.epoch, "origin": 7, "seq": self.snap_seq, "view": 1,
                       "nodes": [], "nodemap": {}}
                self.router.send_multipart([ident, cmd, msgpack.packb(hdr)])
            else:
                payload = self.replays[args[0]]
                hdr = {"v": 1, "epoch": self.epoch, "origin": 7, "status": "ok", "after": args[0],
                       "first": 1, "head": 99, "count": len(payload) // 2, "more": False}
                self.router.send_multipart([ident, cmd, msgpack.packb(hdr), *payload])

    def close(self) -> None:
        self.pub.close(0)
        self.router.close(0)
        self.ctx.term()


def test_unknown_undecodable_and_restart_against_a_scripted_daemon(cbsub: str, tmp_path: Path):
    bus = Scripted(tmp_path)
    try:
        sub = subprocess.Popen([cbsub, "-p", bus.publish, "-s", bus.snapshot, "-t", "60", "-H",
                                "-n", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        bus.wait_subscriber()
        bus.hb(0)
        bus.send(b"node.up", _body(1, 1))
        bus.send(b"plugin.thing", msgpack.packb({"v": 1, "origin": 7, "seq": 2, "x": 1}))
        bus.send(b"node.up", _body(3, 3, v=2))            # unknown version: accounted
        bus.send(b"_batch", msgpack.packb({"v": 1, "events": []}))  # not subscribed: ignored
        bad4 = _body(4, 4, bogus=1)                        # unknown field: undecodable
        bus.send(b"node.up", bad4)
        # seq 5 shows the gap after 3; the replay holds the undecodable 4: resynchronise
        bus.replays[3] = [b"node.up", bad4, b"node.up", _body(5, 5)]
        bus.snap_seq = 5
        bus.send(b"node.up", _body(5, 5))
        bus.serve(2)                                       # REPLAY after=3, then SNAPSHOT
        bus.send(b"node.up", _body(6, 6))
        bus.epoch, bus.snap_seq = EPOCH2, 0                # restarted
        bus.hb(0)
        bus.serve(1)                                       # SNAPSHOT
        bus.send(b"node.up", _body(1, 8))
        out, err = sub.communicate(timeout=60)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
        bus.close()
    assert sub.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["topic"], x.get("seq"), x.get("reason")) for x in lines if x["topic"] != "_hb"] == [
        ("node.up", 1, "zmq"), ("_snapshot", 5, "undecodable"), ("node.up", 6, "zmq"),
        ("_snapshot", 0, "restart"), ("node.up", 1, "zmq")]
    hbs = [x for x in lines if x["topic"] == "_hb"]
    assert [x["epoch"] for x in hbs] == [str(EPOCH1), str(EPOCH2)]
    assert bus.requests == [("REPLAY", 3, 1000), ("SNAPSHOT",), ("SNAPSHOT",)]
    assert "2 unknown, 2 undecodable" in err, err


def test_curve(cbsub: str, tmp_path: Path):
    """-K: both sockets are CURVE clients of a daemon's key; a wrong key gets nothing."""
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    public, secret = zmq.curve_keypair()
    bus = Scripted(tmp_path, curve_secret=secret)
    try:
        wrong = subprocess.run([cbsub, "-p", bus.publish, "-s", bus.snapshot, "-S", "-r", "0.3",
                                "-R", "1", "-K", zmq.curve_keypair()[0].decode()],
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 1 and "no SNAPSHOT" in wrong.stderr, wrong.stderr
        assert bus.requests == []
        sub = subprocess.Popen([cbsub, "-p", bus.publish, "-s", bus.snapshot, "-t", "60", "-S",
                                "-n", "1", "-K", public.decode()],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            bus.serve(1)  # the SNAPSHOT, through CURVE
            bus.wait_subscriber()
            bus.send(b"node.up", _body(1, 4))
            out, err = sub.communicate(timeout=60)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait(5)
    finally:
        bus.close()
    assert sub.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["topic"], x["seq"]) for x in lines] == [("_snapshot", 0), ("node.up", 1)]
