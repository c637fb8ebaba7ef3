"""The link between the daemon and the speaker's own process: msgpack messages on a
``socketpair`` (see docs/architecture.md, "Concurrency model").

Each message is one msgpack array, ``[kind, ...]``, written back to back on a
``SOCK_STREAM`` Unix socket (msgpack's streaming unpacker finds the boundaries). Both
ends are non-blocking: :meth:`Channel.send` never waits (what the socket does not take
now waits in a bounded queue, written when the socket is writable again), so a daemon
that is stuck for seconds never holds the speaker back, and the reverse.

Messages, daemon -> speaker: ``["init", settings]`` (first), ``["call", name, args]`` (a
crossing: ``_answered``, ``_reload``, ``_set_priority``, ``_master_daemon_gone``),
``["status", id]``, ``["stop"]``. Speaker -> daemon: ``["log", ...]`` (its log records),
``["event", class name, fields]``, ``["call", "_call_prepare", args]``, ``["ready",
info]``, ``["status", id, status]``, ``["failed", error]``, ``["stopped"]``.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgpack

from ..errors import ClusterbusError, ConfigError, DecodeError

__all__ = ["Channel", "SpeakerProcessError", "MAX_BUFFER", "MAX_QUEUED", "encode_error",
           "decode_error"]

log = logging.getLogger(__name__)

#: the largest message either side accepts (a status of many instances is a few KiB)
MAX_BUFFER = 16 << 20
#: messages queued while the socket is full; more are dropped and counted
#: (``ipc.dropped.queue_full``): only a peer that stopped reading fills it
MAX_QUEUED = 10_000
_SOCKBUF = 1 << 20


class SpeakerProcessError(ClusterbusError):
    """The speaker's process failed or died (one line: what it said, or how it died)."""


def encode_error(exc: BaseException) -> dict[str, Any]:
    """An exception as plain data for ``["failed", ...]``."""
    if isinstance(exc, ConfigError):
        return {"type": "ConfigError", "msg": exc.msg, "file": exc.file, "key": exc.key}
    if isinstance(exc, OSError) and exc.errno is not None:
        return {"type": "OSError", "errno": exc.errno, "msg": exc.strerror or str(exc),
                "filename": exc.filename if isinstance(exc.filename, str) else None}
    return {"type": type(exc).__name__, "msg": str(exc)}


def decode_error(data: Any) -> BaseException:
    """The exception :func:`encode_error` described: ``ConfigError`` and ``OSError`` keep
    their type (the daemon's exit code depends on it), anything else is a
    :class:`SpeakerProcessError`."""
    if not isinstance(data, dict):
        return SpeakerProcessError(f"VRRP speaker process failed: {data!r}")
    kind, msg = data.get("type"), str(data.get("msg", ""))
    if kind == "ConfigError":
        return ConfigError(msg, file=data.get("file"), key=data.get("key"))
    if kind == "OSError" and isinstance(data.get("errno"), int):
        if data.get("filename"):
            return OSError(data["errno"], msg, data["filename"])
        return OSError(data["errno"], msg)
    return SpeakerProcessError(f"VRRP speaker process failed: {kind}: {msg}")


class Channel:
    """One end of the socketpair.

    :param sock: a connected ``AF_UNIX`` ``SOCK_STREAM`` socket (made non-blocking here).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)
            except OSError:
                pass
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_BUFFER,
                                          strict_map_key=False)
        self._out: collections.deque[bytes] = collections.deque()
        self._pending = b""  #: the unsent rest of a message the socket took in part
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writing = False
        self.closed = False
        #: ipc.sent, ipc.received, ipc.dropped.queue_full, ...
        self.counters: collections.Counter[str] = collections.Counter()

    def fileno(self) -> int:
        return self.sock.fileno()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush queued messages from ``loop`` (``add_writer``) once the socket is full."""
        self._loop = loop
        if self._out or self._pending:
            self._want_write()

    # -- sending --------------------------------------------------------------------------

    def send(self, msg: list[Any]) -> None:
        """Send one message now, or queue it; never blocks.

        :raises TypeError: a value msgpack cannot encode (a bug of the caller).
        """
        if self.closed:
            self.counters["ipc.dropped.closed"] += 1
            return
        data = msgpack.packb(msg, use_bin_type=True)
        self.counters["ipc.sent"] += 1
        if self._out or self._pending:
            self._queue(data)
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._broken(exc)
            return
        if n < len(data):
            self._pending = data[n:]
            self._want_write()

    def _queue(self, data: bytes) -> None:
        if len(self._out) >= MAX_QUEUED:
            self.counters["ipc.dropped.queue_full"] += 1
            return
        self._out.append(data)

    def _want_write(self) -> None:
        if self._loop is not None and not self._writing and not self.closed:
            self._loop.add_writer(self.sock.fileno(), self._on_writable)
            self._writing = True

    def _on_writable(self) -> None:
        self.flush_some()
        if not (self._out or self._pending) and self._writing and self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())
            self._writing = False

    def flush_some(self) -> bool:
        """Write what the socket takes now. :returns: whether everything went out."""
        while not self.closed:
            if not self._pending:
                if not self._out:
                    return True
                self._pending = self._out.popleft()
            try:
                n = self.sock.send(self._pending)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                self._broken(exc)
                return False
            self._pending = self._pending[n:]
        return False

    def flush(self, timeout: float) -> bool:
        """Block until everything queued went out or ``timeout`` seconds passed (at exit).

        :returns: whether everything went out.
        """
        end = time.monotonic() + timeout
        while not self.flush_some():
            left = end - time.monotonic()
            if left <= 0 or self.closed:
                return False
            select.select([], [self.sock], [], left)
        return True

    def _broken(self, exc: OSError) -> None:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            log.warning("VRRP process link: send failed: %s", exc)
        self.counters["ipc.errors.send"] += 1
        self.close()

    # -- receiving ------------------------------------------------------------------------

    def receive(self, limit: int = 1 << 18) -> tuple[list[list[Any]], bool]:
        """Read what is there now (at most ``limit`` bytes) and decode it.

        :returns: the complete messages, and whether the other end closed.
        :raises DecodeError: the stream is not msgpack arrays, or a message is too large.
        """
        try:
            data = self.sock.recv(limit)
        except (BlockingIOError, InterruptedError):
            return [], False
        except OSError as exc:
            if exc.errno != errno.ECONNRESET:
                log.warning("VRRP process link: receive failed: %s", exc)
            return [], True
        if not data:
            return [], True
        return list(self._decode(data)), False

    def _decode(self, data: bytes) -> Iterator[list[Any]]:
        try:
            self._unpacker.feed(data)
            for msg in self._unpacker:
                if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
                    raise DecodeError(f"not a message: {str(msg)[:80]}")
                self.counters["ipc.received"] += 1
                yield msg
        except (msgpack.UnpackException, ValueError) as exc:
            raise DecodeError(f"bad message on the VRRP process link: {exc}") from None

    def receive_blocking(self, timeout: float) -> tuple[list[list[Any]], bool]:
        """Wait up to ``timeout`` seconds for data, then :meth:`receive`."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return [], False
        return self.receive()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._writing and self._loop is not None:
            try:
                self._loop.remove_writer(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self._writing = False
        self._out.clear()
        self._pending = b""
        self.sock.close()
