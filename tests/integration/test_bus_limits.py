"""The bus respects its own limits (issue 8): replies bigger than one frame are split under
MAX_FRAME, so a snapshot of 10,000 nodes with 4 addresses each reaches the Python client
and ``clusterbus events --snapshot``; a peer that sends requests and never reads the
replies costs the service a bounded amount of memory. A real BusService in a child
process (tests/support/busproc.py), real sockets, RSS read from /proc."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from pathlib import Path

import zmq
from busproc import BusProcess
from cbdaemon import CLUSTERBUS

from clusterbus.bus import codec
from clusterbus.bus.client import Snapshot, Subscriber, fetch_snapshot, fetch_status
from clusterbus.bus.service import (
    MAX_PEER_REPLIES,
    MAX_QUEUED_BYTES,
    MAX_REPLAY_BATCH,
    MAX_REPLAY_BYTES,
)

log = logging.getLogger(__name__)

NODES = 10_000
MiB = 1024 * 1024


def addrs_of(n: int) -> list[str]:
    return [f"10.{n // 256}.{n % 256}.{k}" for k in range(1, 5)]


def counters(endpoint: str) -> dict[str, int]:
    status = asyncio.run(fetch_status(endpoint, timeout=20))
    return status["bus"]["counters"]  # type: ignore[no-any-return]


def report_all(svc: BusProcess, reports: list[list[bytes]]) -> None:
    """Send the ingest frames and wait until the service has read every one."""
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.connect(svc.endpoints["ingest"])
        for frames in reports:
            push.send_multipart(frames)
        for _ in range(2000):
            if counters(svc.endpoints["snapshot"])["ingest.received"] >= len(reports):
                break
        else:
            raise AssertionError("the service did not read every report")
    finally:
        ctx.destroy(linger=0)


def test_snapshot_of_10000_nodes_with_4_addresses(tmp_path: Path) -> None:
    with BusProcess(heartbeat_interval=0.05) as svc:
        report_all(svc, [codec.encode_ingest("node.up", n, addrs_of(n))
                         for n in range(1, NODES + 1)])
        snapshot = svc.endpoints["snapshot"]

        # On the wire: every frame of the reply is within MAX_FRAME, the header is split.
        ctx = zmq.Context()
        try:
            dealer = ctx.socket(zmq.DEALER)
            dealer.connect(snapshot)
            dealer.send_multipart(codec.encode_request("SNAPSHOT"))
            assert dealer.poll(20_000)
            frames = dealer.recv_multipart()
        finally:
            ctx.destroy(linger=0)
        assert len(frames) > 3 and all(len(f) <= codec.MAX_FRAME for f in frames)
        assert codec.unpack_map(frames[1])["v"] == codec.SPLIT_VERSION
        name, header, payload = codec.decode_reply(frames)
        assert name == "SNAPSHOT" and payload == [] and len(header["nodes"]) == NODES

        # The Python client, one-shot and inside a subscriber.
        snap = asyncio.run(fetch_snapshot(snapshot, timeout=20))
        assert len(snap.nodes) == NODES and snap.seq == NODES
        assert snap.nodes[-1]["node"] == NODES
        assert tuple(snap.nodes[-1]["addrs"]) == tuple(addrs_of(NODES))

        async def initial() -> Snapshot | object:
            async with Subscriber(svc.endpoints["publish"], snapshot, initial_snapshot=True,
                                  request_timeout=20) as sub:
                return await sub.next(timeout=30)

        first = asyncio.run(initial())
        assert isinstance(first, Snapshot) and len(first.nodes) == NODES

        # The CLI: --snapshot --count 0 prints the snapshot record alone, then exits.
        config = tmp_path / "clusterbus.toml"
        config.write_text("[bus]\n" + "".join(f'{k} = "{v}"\n'
                                              for k, v in svc.endpoints.items()))
        p = subprocess.run([CLUSTERBUS, "events", "-c", str(config), "--json", "--snapshot",
                            "--count", "0"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert len(lines) == 1
        record = json.loads(lines[0])
        assert list(record) == ["snapshot"]
        assert len(record["snapshot"]["nodes"]) == NODES
        assert record["snapshot"]["nodes"][0]["addrs"] == addrs_of(1)


def test_a_peer_that_never_reads_its_replies_costs_bounded_memory() -> None:
    requests = 400
    # 4000 events of about 0.5 KB each (16 addresses, the most a node may have): a REPLAY
    # reply of 1 MiB (its byte cap) holds about 2000 of them.
    reports = [codec.encode_ingest("node.up", n, [f"fd00:1234:5678:9abc:{n:x}:{k:x}:ffff:1"
                                                  for k in range(16)])
               for n in range(1, 4001)]
    with BusProcess(heartbeat_interval=0.05) as svc:
        report_all(svc, reports)
        snapshot = svc.endpoints["snapshot"]
        before = svc.rss()
        ctx = zmq.Context()
        try:
            attacker = ctx.socket(zmq.DEALER)
            attacker.setsockopt(zmq.RCVHWM, 1)
            attacker.setsockopt(zmq.RCVBUF, 4096)
            attacker.connect(snapshot)
            for _ in range(requests):
                attacker.send_multipart(codec.encode_request("REPLAY", 0, MAX_REPLAY_BATCH))
            # every request read (the attacker's and our STATUS requests)
            for _ in range(2000):
                c = counters(snapshot)
                if c.get("request.replay", 0) >= requests:
                    break
            else:
                raise AssertionError(f"not every request was read: {c}")
            after = svc.rss()
            log.info("RSS %d -> %d, counters %s", before, after, c)
        finally:
            ctx.destroy(linger=0)
        dropped = c.get("reply.dropped.queue_full", 0)
        # the service answered a few, then refused (and counted) the rest ...
        assert dropped >= requests - 2 * MAX_PEER_REPLIES, json.dumps([c, before, after])
        # ... so its memory grew by about one peer's allowance, not 400 replies' worth
        # (each is 1 MiB: 400 MiB unbounded)
        assert after - before < 4 * MAX_PEER_REPLIES * MAX_REPLAY_BYTES, (before, after)
        assert after - before < 100 * MiB
        # and it still answers everyone else
        assert counters(snapshot)["request.replay"] == requests


def test_many_peers_that_never_read_share_one_bounded_budget() -> None:
    peers, each = 24, MAX_PEER_REPLIES  # 24 x 8 x 1 MiB = 192 MiB if nothing bounded it
    reports = [codec.encode_ingest("node.up", n, [f"fd00:1234:5678:9abc:{n:x}:{k:x}:ffff:1"
                                                  for k in range(16)])
               for n in range(1, 4001)]
    with BusProcess(heartbeat_interval=0.05) as svc:
        report_all(svc, reports)
        snapshot = svc.endpoints["snapshot"]
        before = svc.rss()
        ctx = zmq.Context()
        attackers = []  # referenced: a collected socket is a closed one
        try:
            for _ in range(peers):
                attacker = ctx.socket(zmq.DEALER)
                attackers.append(attacker)
                attacker.setsockopt(zmq.RCVHWM, 1)
                attacker.setsockopt(zmq.RCVBUF, 4096)
                attacker.connect(snapshot)
                for _ in range(each):
                    attacker.send_multipart(codec.encode_request("REPLAY", 0, MAX_REPLAY_BATCH))
            for _ in range(2000):
                c = counters(snapshot)
                if c.get("request.replay", 0) >= peers * each:
                    break
            else:
                raise AssertionError(f"not every request was read: {c}")
            after = svc.rss()
            log.info("RSS %d -> %d, counters %s", before, after, c)
        finally:
            ctx.destroy(linger=0)
        assert c.get("reply.dropped.total_limit", 0) >= 1, c
        assert after - before < MAX_QUEUED_BYTES + 16 * MiB, (before, after)
