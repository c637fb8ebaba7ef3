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
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import clusterbus
from clusterbus.config import Config, Key, validate_table

SCHEMA = {"log_file": Key(str, "", None, "file to append JSON lines to ('' = none)")}
#: The last membership changes kept in memory (``seen``): a plugin lives as long as the
#: daemon, so everything it keeps per event must be bounded.
SEEN_MAX = 1024
#: Records waiting for the writer; past this the newest are dropped and counted rather than
#: let a slow disk grow the daemon's memory.
QUEUE_MAX = 10_000

log = logging.getLogger(__name__)


class ExamplePlugin:
    def __init__(self) -> None:
        self.log_file = ""
        self.queue: asyncio.Queue[dict[str, Any]] | None = None
        #: the last SEEN_MAX changes, oldest first
        self.seen: deque[tuple[str, int]] = deque(maxlen=SEEN_MAX)
        self.dropped = 0  #: records the writer could not keep up with

    @clusterbus.hookimpl
    def clusterbus_configure(self, config: Config, section: Mapping[str, Any] | None) -> None:
        self.log_file = validate_table(section or {}, SCHEMA, file=config.file,
                                       prefix="example")["log_file"]

    @clusterbus.hookimpl
    def clusterbus_startup(self, cluster: clusterbus.Cluster) -> None:
        self.queue = asyncio.Queue(QUEUE_MAX)

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
            try:
                self.queue.put_nowait({"what": what, "node": event.node,
                                       "addrs": list(event.addrs), "view": event.view,
                                       "seq": event.seq})
            except asyncio.QueueFull:
                if not self.dropped:
                    log.warning("example: %s cannot keep up; dropping records", self.log_file)
                self.dropped += 1

    @clusterbus.hookimpl
    def clusterbus_services(self) -> list[Callable[[], Awaitable[None]]]:
        return [self.writer]

    async def writer(self) -> None:
        assert self.queue is not None
        while True:
            # everything queued so far in one write (one thread hop per burst, not per line)
            records = [await self.queue.get()]
            while not self.queue.empty():
                records.append(self.queue.get_nowait())
            await asyncio.to_thread(self._append, "".join(json.dumps(r) + "\n" for r in records))

    def _append(self, line: str) -> None:
        with open(self.log_file, "a") as f:
            f.write(line)


plugin = ExamplePlugin()
