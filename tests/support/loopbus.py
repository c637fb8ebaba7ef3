"""A real BusService on 127.0.0.1 (ephemeral ports) around an in-process Engine, for the
bus integration tests; every wait is bounded by :data:`LIMIT` through :func:`run`.

The helpers are :mod:`clusterbus.testing.bus`'s, the public ones plugin authors use; this
module adds the defaults of clusterbus's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import zmq

from clusterbus.bus.service import BusService
from clusterbus.engine import Engine
from clusterbus.pluginhost import PluginHost
from clusterbus.testing.bus import LIMIT, LOOPBACK, bus_service, run, until

__all__ = ["LIMIT", "LOOPBACK", "bus", "dead_endpoint", "new_engine", "run", "until"]


def new_engine(origin: int = 1) -> Engine:
    return Engine(origin=origin, plugins=PluginHost())


@asynccontextmanager
async def bus(engine: Engine | None = None, *, status_provider: Callable[[], dict[str, Any]]
              | None = None, **options: Any) -> AsyncIterator[BusService]:
    """A running BusService (``[bus]`` ``options`` over loopback defaults, heartbeats every
    0.05 s) around ``engine`` or a new one; a bind failure is raised here."""
    async with bus_service(engine or new_engine(), status_provider=status_provider,
                           **options) as svc:
        yield svc


def dead_endpoint() -> str:
    """A loopback TCP endpoint nobody listens on (bound once, then closed)."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)
    ctx.term()
    return f"tcp://127.0.0.1:{port}"
