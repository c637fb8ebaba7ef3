"""NetlinkSource's ``resync_pending`` (status): true from an overrun until a complete
answer to the dump request came (or RESYNC_WAIT passed), through a throttled retry; it
used to stay true forever after the first request. Same scripted socket as
test_netlink_resync_retry.py."""

from __future__ import annotations

import asyncio

import pytest
from test_netlink_resync_retry import ScriptedSocket

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.netlink.message import DumpDone
from clusterbus.pluginhost import PluginHost
from clusterbus.sources import netlink as nl


def test_pending_from_the_overrun_to_the_complete_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nl, "RESYNC_INTERVAL", 0.1)
    engine = Engine(origin=1, plugins=PluginHost())
    source = nl.NetlinkSource(engine, parse_config({"netlink": {"group": 7}}, file="<t>"))
    sock = ScriptedSocket()
    source._sock = sock  # type: ignore[assignment]

    def pending() -> bool:
        return bool(source.status()["resync_pending"])

    async def main() -> None:
        assert not pending()
        sock.overrun()
        source._on_readable()  # the request goes out: pending until answered
        assert len(sock.sent) == 1 and pending()
        source._dump_item(DumpDone(cookie=source._cookie, total=0), 4242)
        assert source.counters["resync.done"] == 1 and not pending()
        sock.overrun()
        source._on_readable()  # within RESYNC_INTERVAL: throttled, pending all the same
        assert len(sock.sent) == 1 and pending()
        async with asyncio.timeout(5):
            while len(sock.sent) < 2:
                await asyncio.sleep(0.01)
        assert pending()  # sent, not answered yet
        source._dump_item(DumpDone(cookie=source._cookie - 1, total=0), 4242)  # an old one
        assert pending() and source.counters["resync.stale"] == 1
        source._dump_item(DumpDone(cookie=source._cookie, total=0), 4242)
        assert not pending() and source.counters["resync.done"] == 2
        for handle in (source._timer, source._retry_timer):
            if handle is not None:
                handle.cancel()

    asyncio.run(main())
