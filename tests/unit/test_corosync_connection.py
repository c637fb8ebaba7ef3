"""The Corosync source's connection handling, with scripted stand-ins for libcpg/libquorum.

The stand-ins have real fds (pipes) on the loop, so the source's add_reader / dispatch /
reconnect path runs as it does against Corosync (tests/integration/test_corosync_source.py
runs it against three real instances).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from clusterbus import Engine, PluginHost
from clusterbus.config import parse_config
from clusterbus.corosync.binding import CS_ERR_LIBRARY, CS_ERR_TRY_AGAIN, CS_OK, CorosyncError
from clusterbus.corosync.membership import (
    BadCallback,
    CpgAddress,
    GroupConfchg,
    QuorumNotify,
    TotemConfchg,
)
from clusterbus.sources import corosync as src

FAIL = {"opens": 0}


class FakeHandle:
    instances: list[FakeHandle] = []

    def __init__(self, group: str = "") -> None:
        self.fd = self._w = -1
        self.records: list[object] = []
        self.codes: list[int] = []
        self.local_nodeid = 1
        self.quorate = False
        self.left = self.closed = False
        FakeHandle.instances.append(self)

    def open(self) -> None:
        if FAIL["opens"] > 0:
            FAIL["opens"] -= 1
            raise CorosyncError("cpg_model_initialize", CS_ERR_LIBRARY)
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)

    def push(self, *records: object, code: int = CS_OK) -> None:
        self.records.extend(records)
        self.codes.append(code)
        os.write(self._w, b"x")

    def dispatch(self) -> int:
        try:
            os.read(self.fd, 64)
        except BlockingIOError:
            pass
        return self.codes.pop(0) if self.codes else CS_OK

    def take(self) -> list[object]:
        out, self.records = self.records, []
        return out

    def leave(self) -> int:
        self.left = True
        return CS_OK

    def close(self) -> int:
        if not self.closed and self.fd >= 0:
            self.closed = True
            os.close(self.fd)
            os.close(self._w)
        return CS_OK


class FakeCpg(FakeHandle):
    pass


class FakeQuorum(FakeHandle):
    pass


@pytest.fixture()
def source(monkeypatch):
    FakeHandle.instances.clear()
    FAIL["opens"] = 0
    monkeypatch.setattr(src, "Cpg", FakeCpg)
    monkeypatch.setattr(src, "Quorum", FakeQuorum)
    monkeypatch.setattr(src, "BACKOFF_MIN", 0.01)
    engine = Engine(origin=1, plugins=PluginHost())
    events: list[object] = []
    engine.sinks.append(events.append)
    config = parse_config({"corosync": {"enabled": True}}, file="t.toml")
    s = src.CorosyncSource(engine, config)
    s.events = events  # type: ignore[attr-defined]
    yield s
    for h in FakeHandle.instances:
        h.close()


def _topics(events: list[object]) -> list[tuple[str, object]]:
    return [(e.topic, getattr(e, "node", getattr(e, "quorate", None)))  # type: ignore[attr-defined]
            for e in events]


async def _until(pred, what: str) -> None:
    async with asyncio.timeout(10):
        while not pred():
            await asyncio.sleep(0.005)


def test_connect_retries_dispatch_reconnect_and_leave_on_stop(source):
    me = os.getpid()

    async def main() -> None:
        FAIL["opens"] = 2  # corosync not there yet
        task = asyncio.create_task(source.run())
        try:
            await _until(lambda: source.connected, "connected")
            assert source.counters["connect.failed"] == 2
            assert source.status()["connected"] is True
            cpg, quorum = (h for h in FakeHandle.instances if h.fd >= 0 and not h.closed)
            cpg.push(TotemConfchg(ring_seq=4, members=(1, 2, 3)),
                     GroupConfchg(group="clusterbus",
                                  members=(CpgAddress(nodeid=1, pid=me),
                                           CpgAddress(nodeid=2, pid=20)),
                                  joined=(CpgAddress(nodeid=1, pid=me, reason=1),)),
                     BadCallback(what="confchg.too_many_entries"))
            quorum.push(QuorumNotify(quorate=True, members=(1, 2, 3)))
            await _until(lambda: len(source.events) == 5, "5 events")
            assert _topics(source.events) == [
                ("node.up", 1), ("node.up", 2), ("node.up", 3), ("director.up", 2),
                ("cluster.quorum", True)]
            assert source.engine.view.up_nodes() == (1, 2, 3)
            # TRY_AGAIN is not a lost connection
            cpg.push(code=CS_ERR_TRY_AGAIN)
            await _until(lambda: source.counters["dispatch.try_again"] == 1, "try again")
            assert source.connected
            # the local corosync dies: quorum lost, handles freed (no leave), reconnected
            cpg.push(code=CS_ERR_LIBRARY)
            await _until(lambda: source.reconnects == 1 and source.connected, "reconnected")
            assert cpg.closed and not cpg.left and quorum.closed
            assert _topics(source.events[5:]) == [("cluster.quorum", False)]
            cpg2 = [h for h in FakeHandle.instances if isinstance(h, FakeCpg)][-1]
            assert cpg2 is not cpg
            # the new connection's lists are compared with what was known
            cpg2.push(TotemConfchg(ring_seq=9, members=(1, 2)))
            await _until(lambda: len(source.events) == 7, "node.down")
            assert _topics(source.events[6:]) == [("node.down", 3)]
            st = source.status()
            assert st["members"] == [1, 2] and st["reconnects"] == 1
            assert st["counters"]["dropped.confchg.too_many_entries"] == 1
            assert st["counters"]["dispatch.failed"] == 1
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert cpg2.left and cpg2.closed  # a clean stop leaves the group
        assert not source.connected

    asyncio.run(main())


def test_disabled_source_returns_and_missing_library_stops_the_source(source, monkeypatch):
    async def main() -> None:
        source.enabled = False
        await source.run()  # returns at once
        source.enabled = True

        def missing(self: object) -> None:
            raise CorosyncError("load", 0, "cannot load libcpg.so.4")

        monkeypatch.setattr(FakeCpg, "open", missing)
        with pytest.raises(CorosyncError, match="libcpg"):
            await source.run()

    asyncio.run(main())


def test_directors_in_the_group_count_for_cluster_directors_at_their_events(source):
    """The source is an engine director source: Cluster.directors() holds a CPG peer from
    its director.up to its director.down, already when the hooks get those events."""
    import clusterbus

    me = os.getpid()
    seen: list[tuple[str, int, tuple[int, ...]]] = []

    class Watch:
        @clusterbus.hookimpl
        def clusterbus_event(self, event, cluster):
            if event.topic.startswith("director."):
                seen.append((event.topic, event.node, cluster.directors()))

    source.engine.plugins.register(Watch(), "watch")
    assert source.engine.director_sources["corosync"] == source.directors
    cluster = source.engine.cluster

    def group(*members: tuple[int, int], left: tuple[CpgAddress, ...] = ()) -> GroupConfchg:
        return GroupConfchg(group="clusterbus",
                            members=tuple(CpgAddress(nodeid=n, pid=p) for n, p in members),
                            left=left)

    async def main() -> None:
        task = asyncio.create_task(source.run())
        try:
            await _until(lambda: source.connected, "connected")
            assert cluster.directors() == (1,)
            cpg = next(h for h in FakeHandle.instances if isinstance(h, FakeCpg))
            cpg.push(group((1, me), (2, 20), (3, 30)))
            await _until(lambda: len(seen) == 2, "two director.up")
            assert seen == [("director.up", 2, (1, 2, 3)), ("director.up", 3, (1, 2, 3))]
            assert cluster.directors() == (1, 2, 3)
            cpg.push(group((1, me), (2, 20), left=(CpgAddress(nodeid=3, pid=30, reason=3),)))
            await _until(lambda: len(seen) == 3, "director.down")
            assert seen[2] == ("director.down", 3, (1, 2))
            assert source.directors() == [2] and cluster.directors() == (1, 2)
            # a peer link's view joins in: a director counts while any source has it up
            source.engine.director_sources["peers"] = lambda: [3, 4]
            assert cluster.directors() == (1, 2, 3, 4)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_a_disabled_source_is_no_director_source():
    engine = Engine(origin=1, plugins=PluginHost())
    src.CorosyncSource(engine, parse_config({"corosync": {"enabled": False}}, file="t.toml"))
    assert "corosync" not in engine.director_sources
