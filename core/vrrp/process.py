"""The daemon's side of the speaker's own process (``[vrrp] isolation = "process"``; see
docs/architecture.md, "Concurrency model").

:class:`SpeakerProcess` starts ``python -m clusterbus.vrrp.worker`` with one end of a
``socketpair``, reads its messages on the daemon's loop (``loop.add_reader``) and hands
them, in order, to the speaker (:meth:`VrrpSpeaker._from_process
<clusterbus.vrrp.speaker.VrrpSpeaker._from_process>`); the process's log records are
logged here, by the daemon's handlers, under their own logger names. ``status()`` is a
blocking round trip with a deadline (the daemon's status is synchronous).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import DecodeError
from ..ratelimit import LogLimiter
from .ipc import Channel, SpeakerProcessError, decode_error
from .timing import RT_START_PRIORITY

__all__ = ["SpeakerProcess", "config_to_wire", "config_from_wire", "WORKER"]

log = logging.getLogger(__name__)

#: the module the speaker's process runs
WORKER = "clusterbus.vrrp.worker"
#: seconds to wait for the process to exit once its link closed, before killing it
_REAP_TIMEOUT = 5.0


def config_to_wire(config: Config) -> dict[str, Any]:
    """What the speaker's process needs of a configuration: its file name, the validated
    ``[vrrp]`` section and the ``[daemon]`` section (``state_dir``: the VIPs a run was
    configured with are recorded there), as plain data."""
    return {"file": config.file, "vrrp": config.core.get("vrrp") or {},
            "daemon": config.core.get("daemon") or {}}


def config_from_wire(data: Any) -> Config:
    """The :class:`Config` :func:`config_to_wire` described (``[vrrp]`` and ``[daemon]``).

    :raises DecodeError: not such a description.
    """
    if not isinstance(data, dict) or not isinstance(data.get("file"), str) or \
            not isinstance(data.get("vrrp"), dict) or \
            not isinstance(data.get("daemon", {}), dict):
        raise DecodeError("not a configuration for the speaker's process")
    return Config(file=data["file"], core={"vrrp": data["vrrp"], "daemon": data.get("daemon", {})})


def _how(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class SpeakerProcess:
    """The speaker's child process, from the daemon's side.

    :param handler: called on the daemon's loop with each message other than log
        records, status answers and the end (``event``, ``call``, ``ready``), in order.
    """

    def __init__(self, handler: Callable[[list[Any]], None]) -> None:
        self.handler = handler
        self.proc: subprocess.Popen[bytes] | None = None
        self.link: Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: collections.deque[list[Any]] = collections.deque()
        self._draining = False
        self._blocking = False  #: inside :meth:`status`: messages wait in the backlog
        self._eof = False
        self._gone: asyncio.Future[None] | None = None
        self._failed: Any = None  #: the ``["failed", error]`` the process sent
        self._stopped = False  #: it said ``["stopped"]``
        self._stopping = False  #: we asked it to stop
        self._ids = itertools.count(1)
        self._waiting_for: int | None = None
        self._answer: Any = None
        self.last_status: dict[str, Any] | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self._limited = LogLimiter(log, interval=10.0)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- life -----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, init: dict[str, Any]) -> None:
        """Start the process and send it ``["init", init]``.

        :raises OSError: it cannot be started.
        """
        self._loop = loop
        self._gone = loop.create_future()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # No preexec_fn (the daemon has threads): the worker sets PR_SET_PDEATHSIG,
            # its session and its scheduling itself, first thing.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", WORKER, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        # Real-time from its first instruction: its interpreter's start and imports (about
        # 0.6 s of CPU) took 4..15 s at normal priority on a loaded host. At the start
        # priority, below a running speaker's; the worker sets it again (and falls back to
        # nice) itself, and raises it once its routers run.
        try:
            os.sched_setscheduler(self.proc.pid, os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                                  os.sched_param(RT_START_PRIORITY))
        except (OSError, AttributeError):
            pass
        self.link = Channel(ours)
        self.link.attach(loop)
        loop.add_reader(ours.fileno(), self._on_readable)
        self.link.send(["init", init])
        log.debug("VRRP speaker process started: pid %d", self.proc.pid)

    async def wait(self) -> None:
        """Until the process exited.

        :raises ConfigError: it reported one at start-up (``OSError`` likewise).
        :raises SpeakerProcessError: it died, or exited without being asked to.
        """
        assert self._gone is not None
        await asyncio.shield(self._gone)
        await self._reap()
        self._raise_unless_asked()

    async def stop(self, timeout: float) -> None:
        """Ask the process to stop (it steps down and removes its VIPs); wait for it up to
        ``timeout`` seconds, then kill it. Its messages are still handled meanwhile."""
        self._stopping = True
        if self.link is not None:
            self.link.send(["stop"])
        assert self._gone is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._gone), timeout)
        except TimeoutError:
            log.error("VRRP speaker process %s did not stop within %.0f s: killing it",
                      self.pid, timeout)
            self._kill()
        await self._reap()

    def _raise_unless_asked(self) -> None:
        code = self.proc.returncode if self.proc is not None else None
        if self._failed is not None:
            raise decode_error(self._failed)
        if self._stopping and (self._stopped or code == 0):
            return
        raise SpeakerProcessError(f"VRRP speaker process {self.pid} ended unasked "
                                  f"({_how(code)})")

    async def _reap(self) -> None:
        if self.proc is None:
            return
        end = time.monotonic() + _REAP_TIMEOUT
        while self.proc.poll() is None:
            if time.monotonic() > end:
                self._kill()
                end = time.monotonic() + _REAP_TIMEOUT
            await asyncio.sleep(0.01)
        # unasked, the error raised by wait() is the one line the daemon logs about it
        (log.info if self._stopping else log.debug)(
            "VRRP speaker process %d ended (%s)", self.proc.pid, _how(self.proc.returncode))

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.counters["process.killed"] += 1
            self.proc.kill()

    def close(self) -> None:
        """Drop the link; kill the process if it still runs (it would die with us anyway:
        ``PR_SET_PDEATHSIG``)."""
        if self.link is not None and not self.link.closed:
            if self._loop is not None:
                self._loop.remove_reader(self.link.fileno())
            self.link.close()
        self._kill()
        if self.proc is not None:
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                pass

    # -- messages -------------------------------------------------------------------------

    def call(self, name: str, args: list[Any]) -> None:
        """``["call", name, args]``: run a crossing on the speaker's loop."""
        if self.link is None:
            return
        try:
            self.link.send(["call", name, args])
        except TypeError:
            self.counters["ipc.errors.encode"] += 1
            log.error("VRRP: cannot send %s to the speaker's process: %r", name, args)

    def _on_readable(self) -> None:
        assert self.link is not None
        try:
            msgs, closed = self.link.receive()
        except DecodeError as exc:
            self.counters["ipc.dropped.bad_message"] += 1
            log.error("VRRP speaker process %s: %s; stopping it", self.pid, exc)
            msgs, closed = [], True
            self._kill()
        self._take(msgs, closed)
        self._drain()

    def _take(self, msgs: list[list[Any]], closed: bool) -> None:
        for msg in msgs:
            if msg[0] == "status" and len(msg) == 3 and isinstance(msg[2], dict):
                self.last_status = msg[2]
                if msg[1] == self._waiting_for:
                    self._answer = msg[2]
            else:
                self._backlog.append(msg)
        if closed and not self._eof:
            self._eof = True
            if self.link is not None and not self.link.closed:
                if self._loop is not None:
                    self._loop.remove_reader(self.link.fileno())
                self.link.close()

    def _drain(self) -> None:
        """Handle the backlog in order (not from inside :meth:`status`, which may be called
        from anywhere on the daemon's loop, e.g. inside a hook)."""
        if self._blocking or self._draining:
            return
        self._draining = True
        try:
            while self._backlog:
                self._handle(self._backlog.popleft())
        finally:
            self._draining = False
        if self._eof and self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def _handle(self, msg: list[Any]) -> None:
        kind = msg[0]
        if kind == "log" and len(msg) == 6:
            self._log(*msg[1:])
        elif kind == "failed" and len(msg) == 2:
            self._failed = msg[1]
        elif kind == "stopped":
            self._stopped = True
        else:
            try:
                self.handler(msg)
            except Exception:  # the supervisor boundary of the process's messages
                self.counters["ipc.errors.handler"] += 1
                self._limited.error(("handler", kind), "VRRP: handling %s from the "
                                    "speaker's process failed", kind, exc_info=True)

    def _log(self, name: Any, levelno: Any, text: Any, exc_text: Any, created: Any) -> None:
        """A log record of the process, handled by the daemon's logging as its own."""
        if not isinstance(name, str) or not isinstance(levelno, int):
            self.counters["ipc.dropped.bad_log"] += 1
            return
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(levelno):
            return
        created = float(created) if isinstance(created, (int, float)) else time.time()
        record = logging.makeLogRecord({
            "name": name, "levelno": levelno, "levelname": logging.getLevelName(levelno),
            "msg": str(text), "args": None, "exc_text": exc_text or None,
            "created": created, "msecs": (created - int(created)) * 1000,
            "process": self.pid, "processName": "clusterbus-vrrp",
        })
        logger.handle(record)

    def status(self, timeout: float) -> dict[str, Any] | None:
        """The process's ``status()``: asked now and waited for up to ``timeout`` seconds
        (on the daemon's loop; the process answers within a millisecond or so). Before it
        runs, after it ended or on a timeout (``status.timeouts``): the last answer."""
        link = self.link
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # another thread: only the daemon's loop reads the link
            running = None
        if link is None or link.closed or self._blocking or running is not self._loop:
            return self.last_status
        qid = next(self._ids)
        self._waiting_for, self._answer = qid, None
        self._blocking = True
        try:
            link.send(["status", qid])
            end = time.monotonic() + timeout
            while self._answer is None and not self._eof:
                left = end - time.monotonic()
                if left <= 0:
                    self.counters["status.timeouts"] += 1
                    self._limited.warning(("status",), "VRRP speaker process %s did not "
                                          "answer a status request within %.1f s",
                                          self.pid, timeout)
                    break
                try:
                    msgs, closed = link.receive_blocking(left)
                except DecodeError as exc:
                    log.error("VRRP speaker process %s: %s", self.pid, exc)
                    msgs, closed = [], True
                self._take(msgs, closed)
            return self._answer if self._answer is not None else self.last_status
        finally:
            self._blocking = False
            self._waiting_for = None
            if (self._backlog or self._eof) and self._loop is not None:
                self._loop.call_soon(self._drain)
