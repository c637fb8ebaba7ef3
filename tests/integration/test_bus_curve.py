"""CURVE on the bus: a real BusService on 127.0.0.1 with a certificate and authorized
keys written by ``clusterbus keygen``; real CURVE and plain ZeroMQ clients. No mocks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from loopbus import bus, run, until

from clusterbus.bus.client import (
    RequestTimeout,
    Subscriber,
    emit,
    fetch_snapshot,
    fetch_status,
)
from clusterbus.bus.service import BusService
from clusterbus.events import NodeUp
from clusterbus.keygen import write_certificates
from clusterbus.view import NodeReport, NodeState


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    """daemon, alice (authorized) and mallory (not) key pairs; alice's .key is in the
    daemon's authorized_keys directory."""
    auth, private = tmp_path / "authorized_keys", tmp_path / "keys"
    auth.mkdir()
    private.mkdir()
    out: dict[str, Path] = {"authorized_keys": auth}
    for name in ("daemon", "alice", "mallory"):
        public, secret = write_certificates(auth if name == "alice" else private, name)
        out[name], out[f"{name}.key"] = secret, public
    return out


def curve_bus(keys: dict[str, Path], **options: Any) -> Any:
    return bus(certificate=str(keys["daemon"]), authorized_keys=str(keys["authorized_keys"]),
               publish="tcp://127.0.0.1:*", ingest="tcp://127.0.0.1:*", **options)


def client(keys: dict[str, Path], who: str) -> dict[str, str]:
    return {"certificate": str(keys[who]), "server_key": str(keys["daemon.key"])}


def up(svc: BusService, node: int) -> None:
    svc.engine.report(NodeReport(state=NodeState.UP, node=node, addrs=(f"10.9.0.{node}",),
                                 reason="test"))


def test_authorized_client_gets_events_snapshot_status_and_can_ingest(
        keys: dict[str, Path]) -> None:
    async def main() -> None:
        async with curve_bus(keys) as svc:
            assert svc.endpoints["ingest"].startswith("tcp://127.0.0.1:")
            alice = client(keys, "alice")
            await emit(svc.endpoints["ingest"], "node.up", 3, ["10.9.0.3"], **alice)
            await until(lambda: svc.counters["ingest.accepted"] == 1)
            snap = await fetch_snapshot(svc.endpoints["snapshot"], **alice)
            assert [n["node"] for n in snap.nodes] == [3]
            async with Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"],
                                  **alice) as sub:
                sub.open()
                await until(lambda: svc.counters["subscribe"] >= 1)
                up(svc, 4)
                got = await sub.next()
                assert isinstance(got, NodeUp) and got.node == 4
            st = await fetch_status(svc.endpoints["snapshot"], **alice)
            assert st == {}  # no status provider: the reply itself is what is tested
            assert svc.counters["auth_denied"] == 0
            assert svc.status()["security"]["curve"] is True
    run(main())


def test_unknown_key_gets_nothing_and_is_counted(keys: dict[str, Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with curve_bus(keys) as svc:
            mallory = client(keys, "mallory")
            with pytest.raises(RequestTimeout):
                await fetch_snapshot(svc.endpoints["snapshot"], timeout=0.5, **mallory)
            with pytest.raises(TimeoutError):
                await emit(svc.endpoints["ingest"], "node.up", 5, timeout=0.5, **mallory)
            async with Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"],
                                  **mallory) as sub:
                sub.open()
                await until(lambda: svc.counters.get("auth_denied.publish", 0) >= 1)
                up(svc, 6)
                with pytest.raises(TimeoutError):
                    await sub.next(timeout=0.5)
                assert sub.counters["heartbeats"] == 0
            await until(lambda: svc.counters.get("auth_denied.snapshot", 0) >= 1
                        and svc.counters.get("auth_denied.ingest", 0) >= 1)
            assert svc.counters["ingest.received"] == 0
            assert svc.counters["request.received"] == 0
            assert svc.counters["subscribe"] == 0
            assert svc.counters["auth_denied"] >= 3
            assert svc.engine.snapshot()["nodes"] == [] or all(
                n["node"] != 5 for n in svc.engine.snapshot()["nodes"])
    run(main())
    refused = [r for r in caplog.records if "refused CURVE client key" in r.getMessage()]
    # ZeroMQ reconnects and retries; the address 127.0.0.1 is logged once
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert "127.0.0.1" in refused[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_plain_client_gets_nothing_and_is_counted(keys: dict[str, Path]) -> None:
    async def main() -> None:
        async with curve_bus(keys) as svc:
            with pytest.raises(RequestTimeout):
                await fetch_status(svc.endpoints["snapshot"], timeout=0.5)
            ctx = zmq.asyncio.Context()
            push = ctx.socket(zmq.PUSH)
            sub = ctx.socket(zmq.SUB)
            # a plain requester that stays connected (the 0.5 s request above may give up
            # before the server read its greeting: that is a dropped handshake, not a denial)
            req = ctx.socket(zmq.DEALER)
            try:
                for s in (push, sub, req):
                    s.setsockopt(zmq.LINGER, 0)
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                sub.connect(svc.endpoints["publish"])
                push.connect(svc.endpoints["ingest"])
                req.connect(svc.endpoints["snapshot"])
                push.send_multipart([b"node.up", b"\x81\xa1v\x01"], flags=zmq.NOBLOCK)
                # a plain client that notices the mechanism mismatch first closes before
                # the daemon read its mechanism: the daemon sees a dropped handshake
                await until(lambda: all(svc.counters.get(f"auth_denied.{n}", 0)
                                        + svc.counters.get(f"handshake_dropped.{n}", 0) >= 1
                                        for n in ("publish", "ingest", "snapshot")))
                up(svc, 7)
                assert await sub.poll(300) == 0  # no heartbeat, no event
            finally:
                push.close(0)
                sub.close(0)
                req.close(0)
                ctx.term()
            assert svc.counters["ingest.received"] == 0
            assert svc.counters["request.received"] == 0
    run(main())


def test_client_key_files_must_come_in_pairs(keys: dict[str, Path]) -> None:
    from clusterbus.errors import ConfigError

    with pytest.raises(ConfigError, match="both"):
        Subscriber("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", certificate=str(keys["alice"]))
    with pytest.raises(ConfigError, match="not a secret certificate"):
        Subscriber("tcp://127.0.0.1:1", "tcp://127.0.0.1:2",
                   certificate=str(keys["alice.key"]), server_key=str(keys["daemon.key"]))


def test_stop_leaves_no_socket_open(keys: dict[str, Path]) -> None:
    # the service terminates its context on exit: a socket left open would hang term()
    async def main() -> None:
        for _ in range(2):
            async with curve_bus(keys) as svc:
                await asyncio.sleep(0.05)
                assert svc.security is not None
    run(main())


def test_connection_closed_during_handshake_is_not_a_denial(keys: dict[str, Path]) -> None:
    """A TCP connect-and-close (a health check, a client that gave up waiting) is counted as
    ``handshake_dropped.<socket>``; ``auth_denied`` stays for what was refused."""
    import socket
    from urllib.parse import urlsplit

    async def main() -> None:
        async with curve_bus(keys) as svc:
            url = urlsplit(svc.endpoints["ingest"])
            for _ in range(3):
                socket.create_connection((url.hostname, url.port), timeout=5).close()
            await until(lambda: svc.counters.get("handshake_dropped.ingest", 0) >= 3)
            assert svc.counters["auth_denied"] == 0
            # an authorized client still works afterwards
            await emit(svc.endpoints["ingest"], "node.up", 3, ["10.9.0.3"],
                       **client(keys, "alice"))
            await until(lambda: svc.counters["ingest.accepted"] == 1)
            assert svc.counters["auth_denied"] == 0
    run(main())
