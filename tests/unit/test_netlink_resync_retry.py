"""NetlinkSource's dump-request throttle: an overrun right after a dump request is
answered by a second request once RESYNC_INTERVAL has passed, even when no datagram
arrives any more (the retry used to share its timer slot with the answer check, and was
dropped while that check was pending: the view then kept what the second overrun lost).

A scripted stand-in for the socket: ``recvmsg`` raises ENOBUFS then EAGAIN per wake-up,
``sendto`` records the dump requests.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.pluginhost import PluginHost
from clusterbus.sources import netlink as nl


class ScriptedSocket:
    def __init__(self) -> None:
        self.script: list[BaseException] = []
        self.sent: list[bytes] = []

    def recvmsg(self, *_: object) -> tuple[bytes, list[object], int, object]:
        raise self.script.pop(0) if self.script else BlockingIOError()

    def sendto(self, data: bytes, _addr: object) -> int:
        self.sent.append(data)
        return len(data)

    def overrun(self) -> None:
        self.script.append(OSError(errno.ENOBUFS, "No buffer space available"))


def test_an_overrun_within_the_interval_is_asked_again_without_new_datagrams(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nl, "RESYNC_INTERVAL", 0.1)
    monkeypatch.setattr(nl, "RESYNC_WAIT", 2.0)  # the answer check stays pending throughout
    engine = Engine(origin=1, plugins=PluginHost())
    source = nl.NetlinkSource(engine, parse_config({"netlink": {"group": 7}}, file="<t>"))
    sock = ScriptedSocket()
    source._sock = sock  # type: ignore[assignment]

    async def main() -> None:
        sock.overrun()
        source._on_readable()  # overrun, drained: the first request goes out at once
        assert len(sock.sent) == 1 and source.counters["resync.requests"] == 1
        sock.overrun()
        source._on_readable()  # within RESYNC_INTERVAL: throttled, to be retried
        assert len(sock.sent) == 1
        async with asyncio.timeout(1.5):  # well before RESYNC_WAIT: no datagram arrives
            while len(sock.sent) < 2:
                await asyncio.sleep(0.01)
        assert source.counters["resync.requests"] == 2 and source.counters["overrun"] == 2
        for handle in (source._timer, getattr(source, "_retry_timer", None)):
            if handle is not None:
                handle.cancel()

    asyncio.run(main())
