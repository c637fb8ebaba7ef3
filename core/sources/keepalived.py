"""keepalived as a membership source: read its ``notify_fifo``.

keepalived (``global_defs { notify_fifo PATH }``) writes one line per VRRP event::

    INSTANCE "VI_1" MASTER 150        <TYPE> "<NAME>" <STATE> <PRIORITY>
    GROUP "VG_1" MASTER 0             (sync groups)

BACKUP, MASTER, FAULT and STOP are state changes and become
:class:`~clusterbus.events.VrrpTransition` events (``source="keepalived"``,
``reason="keepalived"``, ``old`` the last state this source saw for that name, or
``UNKNOWN``). The other states keepalived writes are not state changes and publish nothing:

- ``MASTER_RX_LOWER_PRI``: the master received an advert of lower priority (another master
  on the link, often a split brain that keepalived resolves itself). Counted, logged at
  WARNING because an operator wants to know about a second master.
- ``MASTER_PRIORITY`` / ``BACKUP_PRIORITY``: the instance's priority changed (track script,
  track interface) without a state change. Counted, logged at DEBUG; the new priority shows
  in :meth:`KeepalivedSource.status` and in the next transition.

A line that repeats the state already known (keepalived restarted into the same state)
publishes nothing either: it is counted as ``unchanged``. Lines of other types (``VS``/``RS``
from keepalived's checkers) are counted as ``ignored_type``. Anything unparseable is counted
by reason and logged at DEBUG; the source never stops because of what it reads.

FIFO handling: the FIFO is opened ``O_RDONLY | O_NONBLOCK`` and read from
``loop.add_reader`` (no polling). When keepalived (the last writer) exits, the read end sees
EOF; the source then closes the FIFO and opens it again *by path*, creating it when it is
missing. We reopen rather than keep a dummy writer fd open because keepalived unlinks a FIFO
it created itself when it stops and makes a new one when it starts: a dummy writer would keep
the old inode alive and we would wait on it forever. Reopening costs nothing while no writer
is connected: Linux reports HUP to a FIFO reader only after a writer that opened *after* the
reader has gone, so a freshly reopened FIFO does not wake the loop until keepalived writes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import stat
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..config import CORE_SECTIONS, Config
from ..engine import Engine
from ..errors import ConfigError, DecodeError
from ..events import VrrpTransition
from ..ratelimit import LogLimiter
from ..schema import validate_table

__all__ = ["KeepalivedSource", "KeepalivedConfig", "keepalived_settings", "NotifyLine",
           "parse_line", "STATE_CHANGES", "NON_STATE"]

log = logging.getLogger(__name__)

#: keepalived states that are state changes (map 1:1 to VrrpTransition states).
STATE_CHANGES = frozenset({"BACKUP", "MASTER", "FAULT", "STOP"})
#: keepalived "states" that are notifications without a state change.
NON_STATE = frozenset({"MASTER_RX_LOWER_PRI", "MASTER_PRIORITY", "BACKUP_PRIORITY"})

_LINE = re.compile(r'^(INSTANCE|GROUP) "([^"\s]{1,128})" ([A-Z_]+) (\d{1,3})$')
_OTHER_TYPES = ("VS ", "RS ", "MONITOR ")
#: A longer line than this is garbage (keepalived's lines are < 200 bytes).
MAX_LINE = 4096
_READ = 65536


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepalivedConfig:
    """The validated ``[keepalived]`` section (declared in
    :data:`clusterbus.config.CORE_SECTIONS`)."""

    enabled: bool
    notify_fifo: str
    present: bool  #: the file had a [keepalived] section (which turns the source on)


def keepalived_settings(config: Config) -> KeepalivedConfig:
    """The ``[keepalived]`` section, defaults when absent (``present`` tells which)."""
    section = config.core.get("keepalived")
    if section is None:
        schema = CORE_SECTIONS["keepalived"].schema
        assert schema is not None
        d = validate_table({}, schema, file=config.file, prefix="keepalived")
        return KeepalivedConfig(present=False, **d)
    return KeepalivedConfig(present=True, **section)


class NotifyLine:
    """One parsed FIFO line."""

    __slots__ = ("kind", "name", "state", "priority")

    def __init__(self, kind: str, name: str, state: str, priority: int) -> None:
        self.kind = kind  #: INSTANCE or GROUP
        self.name = name
        self.state = state
        self.priority = priority

    def __repr__(self) -> str:
        return f'NotifyLine({self.kind} "{self.name}" {self.state} {self.priority})'


def parse_line(raw: bytes) -> NotifyLine | None:
    """Parse one line (without the newline).

    :returns: the line, or ``None`` for a line of a type this source does not handle
        (checker ``VS``/``RS`` lines).
    :raises DecodeError: a malformed line; ``reason`` is a short counter name.
    """
    try:
        text = raw.decode("ascii").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise DecodeError("not_ascii", offset=exc.start) from None
    if text.startswith(_OTHER_TYPES):
        return None
    m = _LINE.match(text)
    if m is None:
        raise DecodeError("malformed")
    kind, name, state, prio = m.groups()
    if state not in STATE_CHANGES and state not in NON_STATE:
        raise DecodeError("unknown_state")
    priority = int(prio)
    if priority > 255:
        raise DecodeError("bad_priority")
    return NotifyLine(kind, name, state, priority)


class KeepalivedSource:
    """Turns keepalived's notify FIFO into ``vrrp.transition`` events.

    :param engine: the engine events are published to.
    :param config: the daemon configuration (``[keepalived]`` section).
    """

    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        settings = keepalived_settings(config)
        self.enabled = settings.enabled
        self.path = settings.notify_fifo
        self._file = config.file
        #: lines, events, reopened, unchanged, ignored_type, non-state notifications and
        #: dropped lines by reason (``dropped.malformed`` ...)
        self.counters: Counter[str] = Counter()
        #: (kind, name) -> {"state", "priority", "since"}
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self._fd: int | None = None
        self._buf = b""
        self._discarding = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: repeated WARNINGs (another master on the link) cost one line per minute
        self._limited = LogLimiter(log, interval=60.0)

    # -- FIFO -------------------------------------------------------------------------------

    def _ensure_fifo(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path) or "/", exist_ok=True)
            try:
                os.mkfifo(self.path, 0o600)
                log.info("created keepalived notify FIFO %s", self.path)
            except FileExistsError:
                pass  # keepalived made it between our stat and mkfifo
            return
        if not stat.S_ISFIFO(st.st_mode):
            raise ConfigError(f"{self.path} exists and is not a FIFO", file=self._file,
                              key="keepalived.notify_fifo")

    def _open(self) -> None:
        assert self._loop is not None
        self._ensure_fifo()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._buf = b""
        self._discarding = False
        self._loop.add_reader(self._fd, self._on_readable)

    def _close(self) -> None:
        if self._fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None

    def _on_readable(self) -> None:
        # The one supervisor boundary of this source: whatever a line does, the loop lives.
        try:
            self._read()
        except Exception:
            log.exception("keepalived FIFO reader failed; reopening %s", self.path)
            self.counters["errors.reader"] += 1
            self._reopen()

    def _reopen(self) -> None:
        self._close()
        self.counters["reopened"] += 1
        try:
            self._open()
        except OSError as exc:
            # Nothing to wait on: without the FIFO this source cannot work. Say so loudly;
            # run() notices the fd is gone and raises.
            log.error("cannot reopen keepalived notify FIFO %s: %s", self.path, exc)
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_exception(exc)

    def _read(self) -> None:
        assert self._fd is not None
        while True:
            try:
                chunk = os.read(self._fd, _READ)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                # EOF: every writer (keepalived) is gone. A partial line is lost with it.
                if self._buf:
                    self._drop("truncated", self._buf)
                log.info("keepalived closed the notify FIFO; reopening %s", self.path)
                self._reopen()
                return
            self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        data = self._buf + chunk
        *lines, rest = data.split(b"\n")
        for line in lines:
            if self._discarding:
                # The tail of an over-long line: already counted.
                self._discarding = False
                continue
            self._handle(line)
        if len(rest) > MAX_LINE:
            if not self._discarding:
                self._drop("too_long", rest[:80])
            self._discarding = True
            rest = b""
        self._buf = rest

    # -- lines ------------------------------------------------------------------------------

    def _drop(self, reason: str, raw: bytes) -> None:
        self.counters[f"dropped.{reason}"] += 1
        log.debug("keepalived FIFO: dropped line (%s): %r", reason, raw[:120])

    def _handle(self, raw: bytes) -> None:
        if not raw.strip():
            return
        self.counters["lines"] += 1
        if len(raw) > MAX_LINE:
            self._drop("too_long", raw)
            return
        try:
            line = parse_line(raw)
        except DecodeError as exc:
            self._drop(exc.reason, raw)
            return
        if line is None:
            self.counters["ignored_type"] += 1
            return
        key = (line.kind, line.name)
        known = self.instances.get(key)
        if line.state in NON_STATE:
            self.counters[line.state.lower()] += 1
            if known is not None:
                known["priority"] = line.priority
            if line.state == "MASTER_RX_LOWER_PRI":
                self._limited.warning(("rx_lower_pri", key), "keepalived %s %s: master "
                                      "received a lower-priority advert (another master on "
                                      "the link?)", line.kind.lower(), line.name)
            else:
                log.debug("keepalived %s %s: %s %d", line.kind.lower(), line.name, line.state,
                          line.priority)
            return
        old = known["state"] if known is not None else "UNKNOWN"
        if known is not None and old == line.state:
            known["priority"] = line.priority
            self.counters["unchanged"] += 1
            return
        self.instances[key] = {"state": line.state, "priority": line.priority,
                               "since": time.time(), "group": line.kind == "GROUP"}
        log.info("keepalived %s %s: %s -> %s (priority %d)", line.kind.lower(), line.name,
                 old, line.state, line.priority)
        self.engine.publish(VrrpTransition, instance=line.name, old=old, new=line.state,
                            priority=line.priority, reason="keepalived", source="keepalived",
                            group=line.kind == "GROUP")
        self.counters["events"] += 1

    # -- service ----------------------------------------------------------------------------

    _stopped: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Read the FIFO until cancelled.

        :raises ConfigError: the path exists and is not a FIFO.
        :raises OSError: the FIFO cannot be created or opened.
        """
        if not self.enabled:
            log.info("keepalived source disabled ([keepalived] enabled = false)")
            return
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._open()
        log.info("reading keepalived notify FIFO %s", self.path)
        try:
            await self._stopped
        finally:
            self._close()
            self._stopped = None

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        return {
            "enabled": self.enabled,
            "notify_fifo": self.path,
            "open": self._fd is not None,
            "instances": [
                {"type": kind, "name": name, **info}
                for (kind, name), info in sorted(self.instances.items())
            ],
            "counters": dict(self.counters),
        }
