"""A real BusService on 127.0.0.1 (ephemeral ports) around an in-process Engine, for the
bus integration tests; every wait is bounded by :data:`LIMIT` through :func:`run`."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import zmq

from clusterbus.bus.service import BusService
from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.pluginhost import PluginHost

__all__ = ["LIMIT", "LOOPBACK", "bus", "new_engine", "run", "until"]

LIMIT = 20.0  # seconds: upper bound on any one test's waiting, never a speed assertion
LOOPBACK = {"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"}


def run(coro: Any) -> Any:
    """``asyncio.run(coro)``, failing after :data:`LIMIT` seconds."""
    async def bounded() -> Any:
        async with asyncio.timeout(LIMIT):
            return await coro
    return asyncio.run(bounded())


def new_engine(origin: int = 1) -> Engine:
    return Engine(origin=origin, plugins=PluginHost())


@asynccontextmanager
async def bus(engine: Engine | None = None, *, status_provider: Callable[[], dict[str, Any]]
              | None = None, **options: Any) -> AsyncIterator[BusService]:
    """A running BusService (``[bus]`` ``options`` over loopback defaults, heartbeats every
    0.05 s; ingest on an ``ipc://`` socket in a private directory, since TCP ingest needs
    CURVE); a bind failure is raised here instead of leaving the caller waiting."""
    tmp = tempfile.mkdtemp(prefix="loopbus-")
    cfg = parse_config({"bus": {**LOOPBACK, "ingest": f"ipc://{tmp}/ingest",
                                "heartbeat_interval": 0.05, **options}}, file="<test>")
    svc = BusService(engine or new_engine(), cfg, status_provider=status_provider)
    task = asyncio.create_task(svc.run())
    try:
        ready = asyncio.create_task(svc.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # bind failed: raise it
        yield svc
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


async def until(pred: Callable[[], bool]) -> None:
    """Wait until ``pred()`` is true (bounded by the caller's :func:`run`)."""
    while not pred():
        await asyncio.sleep(0.01)


def dead_endpoint() -> str:
    """A loopback TCP endpoint nobody listens on (bound once, then closed)."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)
    ctx.term()
    return f"tcp://127.0.0.1:{port}"
