"""An example third-party clusterbus plugin.

It appends one JSON line per node up/down to a file, and shows the shape of a plugin: a
configuration section validated at start-up, notification hooks that take only the
arguments they need, and an async service for work that must not block the loop.

Configuration (the section is named after the plugin's entry-point name)::

    [example]
    log_file = "/var/log/clusterbus-example.jsonl"
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import clusterbus
from clusterbus.config import Config, Key, validate_table

SCHEMA = {"log_file": Key(str, "", None, "file to append JSON lines to ('' = none)")}


class ExamplePlugin:
    def __init__(self) -> None:
        self.log_file = ""
        self.queue: asyncio.Queue[dict[str, Any]] | None = None
        self.seen: list[tuple[str, int]] = []

    @clusterbus.hookimpl
    def clusterbus_configure(self, config: Config, section: Mapping[str, Any] | None) -> None:
        self.log_file = validate_table(section or {}, SCHEMA, file=config.file,
                                       prefix="example")["log_file"]

    @clusterbus.hookimpl
    def clusterbus_startup(self, cluster: clusterbus.Cluster) -> None:
        self.queue = asyncio.Queue()

    @clusterbus.hookimpl
    def clusterbus_node_up(self, event: clusterbus.NodeUp) -> None:
        self._record("up", event)

    @clusterbus.hookimpl
    def clusterbus_node_down(self, event: clusterbus.NodeDown) -> None:
        self._record("down", event)

    def _record(self, what: str, event: clusterbus.MembershipEvent) -> None:
        self.seen.append((what, event.node))
        if self.queue is not None and self.log_file:
            # Hooks must not block: hand the write to the service below.
            self.queue.put_nowait({"what": what, "node": event.node, "addrs": list(event.addrs),
                                   "view": event.view, "seq": event.seq})

    @clusterbus.hookimpl
    def clusterbus_services(self) -> list[Callable[[], Awaitable[None]]]:
        return [self.writer]

    async def writer(self) -> None:
        assert self.queue is not None
        while True:
            record = await self.queue.get()
            line = json.dumps(record) + "\n"
            await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with open(self.log_file, "a") as f:
            f.write(line)


plugin = ExamplePlugin()
