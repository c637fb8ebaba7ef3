"""Three directors linked by ``[[cluster.peer]]`` over CURVE, one network namespace each.

* each director has its own keys (``clusterbus keygen``) and authorizes the other two;
* a ``node.up`` on director 1 reaches the plugin hooks of director 2 (the example plugin's
  JSON lines) with origin 1, and does not move director 2's own view;
* a client with an unknown key gets nothing and ``auth_denied`` counts it;
* kill -9 director 1 and restart it: directors 2 and 3 publish ``director.down`` then
  ``director.up`` and the restarted run's events reach their hooks;
* a peer that sends garbage over an authorized link changes only counters (loopback).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cbdaemon import CLUSTERBUS, stop_process
from loopbus import dead_endpoint
from netns import Topology, is_root

from clusterbus.bus.codec import Heartbeat, encode_heartbeat

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="network namespaces need root")]

LIMIT = 30.0
NET = "10.93.0"


def keygen(d: Path, name: str) -> None:
    subprocess.run([CLUSTERBUS, "keygen", "--dir", str(d), "--name", name],
                   capture_output=True, text=True, timeout=LIMIT, check=True)


def until(what: str, check: Callable[[], Any], logs: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + LIMIT
    while True:
        try:
            result = check()
        except (subprocess.SubprocessError, ValueError, KeyError, TypeError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.2)


class Director:
    def __init__(self, tmp: Path, topo: Topology | None, node: int, keys: Path,
                 auth: Path, peers: list[tuple[int, str, str]], *, ns: str | None = None,
                 publish: str | None = None, snapshot: str | None = None) -> None:
        self.node, self.topo, self.ns = node, topo, ns
        self.dir = tmp / f"d{node}"
        self.dir.mkdir()
        self.publish = publish or f"tcp://{NET}.{node}:7661"
        self.snapshot = snapshot or f"tcp://{NET}.{node}:7663"
        self.jsonl = self.dir / "example.jsonl"
        peer_tables = "".join(
            f'[[cluster.peer]]\nnode = {n}\npublish = "{pub}"\nsnapshot = "{snap}"\n'
            f'public_key = "{keys}/d{n}.key"\n\n' for n, pub, snap in peers)
        self.config = self.dir / "clusterbus.toml"
        self.config.write_text(
            f'[daemon]\nnode = {node}\nlog_level = "debug"\nstate_dir = "{self.dir}/state"\n\n'
            f'[bus]\npublish = "{self.publish}"\nsnapshot = "{self.snapshot}"\n'
            f'ingest = "ipc://{self.dir}/ingest"\nheartbeat_interval = 0.2\n'
            f'certificate = "{keys}/d{node}.key_secret"\nauthorized_keys = "{auth}"\n\n'
            f'[netlink]\nenabled = false\n\n[example]\nlog_file = "{self.jsonl}"\n\n'
            f'{peer_tables}')
        self.log = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def prefix(self) -> list[str]:
        return Topology.prefix(self.ns) if self.ns else []

    def start(self) -> Director:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.prefix(), CLUSTERBUS, "run", "-c",
                                          str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        until(f"director {self.node} to answer", self.status, self.logs)
        return self

    def logs(self) -> str:
        return f"--- d{self.node} ---\n" + self.log.read_text()[-6000:]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*self.prefix(), CLUSTERBUS, *args, "-c", str(self.config)],
                           capture_output=True, text=True, timeout=LIMIT)
        if check and p.returncode != 0:
            raise subprocess.SubprocessError(f"{args}: {p.returncode} {p.stderr}")
        return p

    def status(self) -> dict[str, Any]:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}\n{self.logs()}")
        out: dict[str, Any] = json.loads(self.cli("status", "--json", "--timeout", "1").stdout)
        return out

    def peer(self, node: int) -> dict[str, Any]:
        p: dict[str, Any] = self.status()["services"]["peers"]["peers"][str(node)]
        return p

    def seen(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[Director, Director, Director, Path]]:
    keys, auth = tmp_path / "keys", tmp_path / "authorized_keys"
    auth.mkdir(mode=0o700)
    for n in (1, 2, 3):
        keygen(keys, f"d{n}")
        os.link(keys / f"d{n}.key", auth / f"d{n}.key")
    keygen(keys, "mallory")
    with Topology() as topo:
        directors = []
        try:
            for n in (1, 2, 3):
                ns = topo.host(f"d{n}", f"{NET}.{n}/24")
                peers = [(p, f"tcp://{NET}.{p}:7661", f"tcp://{NET}.{p}:7663")
                         for p in (1, 2, 3) if p != n]
                directors.append(Director(tmp_path, topo, n, keys, auth, peers, ns=ns))
            for d in directors:
                d.start()
            yield directors[0], directors[1], directors[2], keys
        finally:
            for d in directors:
                d.stop()


def test_three_directors(three: tuple[Director, Director, Director, Path]) -> None:
    d1, d2, d3, keys = three
    logs = lambda: "\n".join(d.logs() for d in (d1, d2, d3))  # noqa: E731
    for d in (d1, d2, d3):
        others = sorted({1, 2, 3} - {d.node})
        until(f"director {d.node} to see {others} up",
              lambda d=d, o=others: d.status()["services"]["peers"]["alive"] == o, logs)

    # a node.up on director 1 reaches director 2's plugin with origin 1 ...
    d1.cli("emit", "node-up", "42", "--via", "zmq")
    until("node 42 in director 2's plugin log",
          lambda: any(r["node"] == 42 and r["what"] == "up" for r in d2.seen()), logs)
    p1 = d2.peer(1)
    assert p1["alive"] and p1["connected"]
    assert p1["last_event"]["origin"] == 1 and p1["last_event"]["topic"] == "node.up"
    assert p1["counters"]["events.delivered"] >= 1
    assert p1["counters"]["dropped.wrong_origin"] == 0
    # ... and director 3's, but neither moves its own view, nor re-publishes it
    until("node 42 in director 3's plugin log",
          lambda: any(r["node"] == 42 for r in d3.seen()), logs)
    assert d1.status()["view"] >= 1
    assert d2.status()["view"] == 0 and d3.status()["view"] == 0
    assert d3.peer(2)["last_event"] is None or d3.peer(2)["last_event"]["origin"] == 2

    # an unknown key gets nothing, and auth_denied counts it
    denied = d1.status()["services"]["bus"]["counters"].get("auth_denied", 0)
    got = subprocess.run(
        [*d2.prefix(), CLUSTERBUS, "events", "--json", "--count", "1", "--timeout", "2",
         "--follow", "--certificate", str(keys / "mallory.key_secret"), "--server-key",
         str(keys / "d1.key"), "-c", str(d1.config)], capture_output=True, text=True,
        timeout=LIMIT)
    d1.cli("emit", "node-down", "42", "--via", "zmq")
    assert got.returncode != 0 and got.stdout == ""
    bad = subprocess.run(
        [*d2.prefix(), CLUSTERBUS, "status", "--json", "--timeout", "1", "--certificate",
         str(keys / "mallory.key_secret"), "--server-key", str(keys / "d1.key"), "-c",
         str(d1.config)], capture_output=True, text=True, timeout=LIMIT)
    assert bad.returncode != 0 and "no daemon answered" in bad.stderr
    until("auth_denied to count mallory",
          lambda: d1.status()["services"]["bus"]["counters"].get("auth_denied", 0) > denied, logs)

    # kill -9 director 1: the others see director.down, then director.up after a restart
    before = {d.node: d.peer(1)["counters"] for d in (d2, d3)}
    d1.kill9()
    for d in (d2, d3):
        until(f"director {d.node} to see director 1 down",
              lambda d=d: not d.peer(1)["alive"] and 1 not in
              d.status()["services"]["peers"]["alive"], logs)
        assert d.peer(1)["counters"]["director.down"] == before[d.node]["director.down"] + 1
    d1.start()
    d1.cli("emit", "node-up", "43", "--via", "zmq")  # the new run's first event, right away
    for d in (d2, d3):
        until(f"director {d.node} to see director 1 up again",
              lambda d=d: d.peer(1)["alive"] and
              d.peer(1)["counters"]["director.up"] == before[d.node]["director.up"] + 1, logs)
        until(f"node 43 (director 1's new run) in director {d.node}'s plugin log",
              lambda d=d: any(r["node"] == 43 for r in d.seen()), logs)
        c = d.peer(1)["counters"]
        assert c["director.restarts"] >= 1 or c["director.down"] >= 1
        assert sorted(d.status()["services"]["peers"]["alive"]) == \
            sorted({1, 2, 3} - {d.node})


def test_garbage_from_an_authorized_peer_changes_only_counters(tmp_path: Path) -> None:
    keys, auth = tmp_path / "keys", tmp_path / "authorized_keys"
    auth.mkdir(mode=0o700)
    for n in (2, 9):
        keygen(keys, f"d{n}")
        os.link(keys / f"d{n}.key", auth / f"d{n}.key")
    import zmq.auth

    public, secret = zmq.auth.load_certificate(keys / "d9.key_secret")
    pub_ep, snap_ep = dead_endpoint(), dead_endpoint()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.curve_secretkey, pub.curve_publickey, pub.curve_server = secret, public, True
    pub.bind(pub_ep)
    d2 = Director(tmp_path, None, 2, keys, auth, [(9, pub_ep, snap_ep)],
                  publish=dead_endpoint(), snapshot=dead_endpoint())
    try:
        d2.start()
        garbage = [[b"node.up", b"\xc1\xff not msgpack"], [b"_hb", b"\x00"], [b"\xff" * 300],
                   [b"_batch", b"junk", b"junk"], [b"node.down"]]
        seq_hb = encode_heartbeat(Heartbeat(epoch=77, origin=9, seq=0, time=time.time(),
                                            interval=5.0))  # alive while checked

        def dropped() -> int:
            c = d2.peer(9)["counters"]
            return sum(v for k, v in c.items() if k.startswith("stream.dropped."))

        deadline = time.monotonic() + LIMIT
        while dropped() < 5 and time.monotonic() < deadline:
            pub.send_multipart(seq_hb)
            for frames in garbage:
                pub.send_multipart(frames)
            time.sleep(0.2)
        p9 = d2.peer(9)
        assert dropped() >= 5, p9
        assert p9["alive"] and p9["counters"]["events.delivered"] == 0
        st = d2.status()
        assert st["view"] == 0 and d2.seen() == []
        assert d2.proc is not None and d2.proc.poll() is None
    finally:
        d2.stop()
        pub.close(0)
        ctx.term()
