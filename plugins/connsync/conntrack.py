"""Netfilter connection tracking for conn-sync (``[connsync] conntrack = true``), over
ctnetlink: the I/O side. The messages and the entry that crosses the links are
:mod:`.ctcodec` (sans-IO); their names are re-exported here.

:class:`Conntrack`: :meth:`~Conntrack.dump` reads the table, :meth:`~Conntrack.apply_many`
creates a peer's entries or updates the kernel's (pipelined requests), and
:meth:`~Conntrack.subscribe` delivers new/update/destroy events from the event loop: a
netlink socket bound to the conntrack multicast groups, read with ``loop.add_reader`` (no
polling).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable

from clusterbus import errors

from .ctcodec import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    MSG_DELETE,
    MSG_NEW,
    NETLINK_NETFILTER,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_UPDATE,
    NLM_F_CREATE,
    NLMSG,
    NLMSG_DONE,
    NLMSG_ERROR,
    PORT_PROTOCOLS,
    CtEntry,
    CtEvent,
    DecodeError,
    decode_ct,
    encode_ct_delete,
    encode_ct_dump,
    encode_ct_new,
)

__all__ = ["DecodeError", "CtEntry", "CtEvent", "Conntrack", "PORT_PROTOCOLS", "decode_ct",
           "encode_ct_new", "encode_ct_dump", "encode_ct_delete", "IPS_SEEN_REPLY",
           "IPS_ASSURED", "IPS_CONFIRMED", "IPS_SRC_NAT", "IPS_DST_NAT"]

log = logging.getLogger(__name__)


# -- the I/O side ---------------------------------------------------------------------------------

_WINDOW = 256            # requests in flight before reading their acknowledgements
_ERR = struct.Struct("=i")


class Conntrack:
    """ctnetlink in the current network namespace: dump, create/update, delete, events.

    Requests go over one non-blocking ``NETLINK_NETFILTER`` socket driven by the event
    loop (``loop.sock_recv``), pipelined ``_WINDOW`` at a time; events over another one
    bound to the conntrack groups and read with ``loop.add_reader``.

    ``counters`` (dotted keys): ``dump.entries``, ``dump.skipped.unsupported``,
    ``dump.dropped.bad_message``, ``apply.created``, ``apply.updated``, ``apply.failed``,
    ``events.new``, ``events.update``, ``events.destroy``, ``events.skipped.unsupported``,
    ``events.dropped.bad_message``, ``events.overrun`` (the kernel dropped events: the
    caller should dump again), ``events.stopped`` (the events socket failed; logged).
    """

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self._events: socket.socket | None = None
        self._requests: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0
        self._lock: asyncio.Lock | None = None

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def _entry(self, what: str, data: bytes, start: int, end: int) -> CtEntry | None:
        """The entry of one conntrack message of a dump or an event; ``None`` when it
        cannot be decoded (``<what>.dropped.bad_message``, logged at DEBUG) or is of a
        kind not synced (``<what>.skipped.unsupported``)."""
        try:
            entry = decode_ct(data, start, end)
        except DecodeError as exc:
            self._count(f"{what}.dropped.bad_message")
            log.debug("conntrack %s: message dropped: %s", what, exc)
            return None
        if entry is None:
            self._count(f"{what}.skipped.unsupported")
        return entry

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _request_socket(self) -> socket.socket:
        if self._requests is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
            try:
                sock.bind((0, 0))
            except OSError:
                sock.close()
                raise
            self._requests = sock
        return self._requests

    async def _messages(self, sock: socket.socket) -> list[tuple[int, int, int, bytes, int, int]]:
        """Wait for one datagram; its netlink messages as (type, flags, seq, data, start, end)."""
        data = await asyncio.get_running_loop().sock_recv(sock, 1 << 20)
        out = []
        off = 0
        while off + NLMSG.size <= len(data):
            length, kind, flags, seq, _ = NLMSG.unpack_from(data, off)
            if length < NLMSG.size or off + length > len(data):
                break
            out.append((kind, flags, seq, data, off + NLMSG.size, off + length))
            off += (length + 3) & ~3
        return out

    async def _transact(self, requests: list[tuple[int, bytes]]) -> dict[int, int]:
        """Send ``(seq, request)`` pairs, ``_WINDOW`` at a time; seq -> errno (0: done)."""
        sock = self._request_socket()
        result: dict[int, int] = {}
        for i in range(0, len(requests), _WINDOW):
            window = requests[i:i + _WINDOW]
            pending = {seq for seq, _ in window}
            for _, msg in window:
                sock.send(msg)
            while pending:
                for kind, _, seq, data, start, end in await self._messages(sock):
                    if kind == NLMSG_ERROR and seq in pending and end - start >= 4:
                        result[seq] = -_ERR.unpack_from(data, start)[0]
                        pending.discard(seq)
        return result

    async def dump(self, *, timeout: float = 60.0) -> list[CtEntry]:
        """Every entry this module can carry, IPv4 and IPv6 (one ctnetlink dump).

        :raises OSError: the kernel refused the dump (e.g. it was interrupted: retry).
        """
        out: list[CtEntry] = []
        async with self._locked(), asyncio.timeout(timeout):
            sock = self._request_socket()
            seq = self._next_seq()
            sock.send(encode_ct_dump(seq=seq))
            done = False
            while not done:
                for kind, _, mseq, data, start, end in await self._messages(sock):
                    if mseq != seq:
                        continue
                    if kind == NLMSG_DONE:
                        done = True
                        break
                    if kind == NLMSG_ERROR:
                        code = -_ERR.unpack_from(data, start)[0] if end - start >= 4 else errno.EIO
                        raise OSError(code, f"conntrack dump: {os.strerror(code)}")
                    entry = self._entry("dump", data, start, end)
                    if entry is not None:
                        out.append(entry)
        self._count("dump.entries", len(out))
        return out

    def _locked(self) -> asyncio.Lock:
        # one request stream at a time on the request socket (replies are read by seq)
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def apply_many(self, entries: list[CtEntry], *,
                         timeout: int | None = None) -> dict[str, int]:
        """Create each entry (a peer's) in the kernel, or update the kernel's entry of the
        same original tuple (timeout, mark, TCP state, status bits that only ever get set).

        :param timeout: seconds to give every entry (default: each ``entry.timeout``, >= 1).
        :returns: how many were ``created``, ``updated`` and ``failed`` (also counted).
        """
        created = updated = 0
        failed: dict[int, int] = {}
        async with self._locked():
            seqs = {self._next_seq(): e for e in entries}
            codes = await self._transact([(q, encode_ct_new(e, seq=q, create=True, timeout=timeout))
                                          for q, e in seqs.items()])
            exist = []
            for q, e in seqs.items():
                code = codes.get(q, errno.EIO)
                if code == 0:
                    created += 1
                elif code == errno.EEXIST:
                    exist.append(e)
                else:
                    failed[code] = failed.get(code, 0) + 1
            for with_status in (True, False):
                if not exist:
                    break
                seqs = {self._next_seq(): e for e in exist}
                codes = await self._transact([
                    (q, encode_ct_new(e, seq=q, create=False, timeout=timeout, with_status=with_status))
                    for q, e in seqs.items()])
                exist = []
                for q, e in seqs.items():
                    code = codes.get(q, errno.EIO)
                    if code == 0:
                        updated += 1
                    elif code == errno.EBUSY and with_status:
                        exist.append(e)     # the kernel's entry has status bits ours lacks
                    else:
                        failed[code] = failed.get(code, 0) + 1
        self._count("apply.created", created)
        self._count("apply.updated", updated)
        if failed:
            self._count("apply.failed", sum(failed.values()))
            for c, n in failed.items():  # why, by errno: apply.failed.EINVAL, ...
                self._count(f"apply.failed.{errno.errorcode.get(c, str(c))}", n)
            log.debug("conntrack entries refused: %s",
                      ", ".join(f"{n} x {errno.errorcode.get(c, c)}" for c, n in failed.items()))
        return {"created": created, "updated": updated, "failed": sum(failed.values())}

    async def apply(self, entry: CtEntry, *, timeout: int | None = None) -> str:
        """:meth:`apply_many` for one entry.

        :returns: ``"created"`` or ``"updated"``.
        :raises OSError: the kernel refused it.
        """
        async with self._locked():
            q = self._next_seq()
            code = (await self._transact([(q, encode_ct_new(entry, seq=q, create=True, timeout=timeout))]))[q]
            if code == 0:
                self._count("apply.created")
                return "created"
            for with_status in (True, False):
                if code not in (errno.EEXIST, errno.EBUSY):
                    break
                q = self._next_seq()
                code = (await self._transact([(q, encode_ct_new(
                    entry, seq=q, create=False, timeout=timeout, with_status=with_status))]))[q]
                if code == 0:
                    self._count("apply.updated")
                    return "updated"
        self._count("apply.failed")
        raise OSError(code, f"conntrack entry refused: {os.strerror(code)}")

    async def delete(self, entry: CtEntry) -> bool:
        """Remove the kernel's entry with ``entry``'s original tuple. :returns: whether it was there."""
        async with self._locked():
            q = self._next_seq()
            code = (await self._transact([(q, encode_ct_delete(entry, seq=q))]))[q]
        if code in (0, errno.ENOENT):
            return code == 0
        raise OSError(code, f"conntrack delete refused: {os.strerror(code)}")
    # -- events --------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[CtEvent], None], *,
                  on_overrun: Callable[[], None] | None = None, rcvbuf: int = 8 << 20) -> None:
        """Deliver conntrack events to ``callback`` from the running event loop.

        :param on_overrun: called when the kernel dropped events (ENOBUFS): dump again.
        :param rcvbuf: socket receive buffer (``SO_RCVBUFFORCE`` when allowed).
        """
        if self._events is not None:
            raise errors.LocalProtocolError("Conntrack.subscribe called twice")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)   # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            groups = ((1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_UPDATE - 1))
                      | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
            sock.bind((0, groups))
        except OSError:
            sock.close()
            raise
        self._events, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable, callback, on_overrun)

    def _readable(self, callback: Callable[[CtEvent], None],
                  on_overrun: Callable[[], None] | None) -> None:
        sock = self._events
        if sock is None:
            return
        for _ in range(256):          # bounded: other readers get their turn
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._count("events.overrun")
                    log.warning("conntrack events overran the socket buffer: resync needed")
                    if on_overrun is not None:
                        on_overrun()
                    continue
                # anything else would repeat on every wake-up: stop, loudly, and count it
                self._count("events.stopped")
                log.error("conntrack events stopped: %s", exc)
                if self._loop is not None:
                    self._loop.remove_reader(sock.fileno())
                return
            for event in self.parse_events(data):
                callback(event)

    def parse_events(self, data: bytes) -> list[CtEvent]:
        """The events in one netlink datagram; bad messages are counted and skipped."""
        out: list[CtEvent] = []
        off, n = 0, len(data)
        while off + NLMSG.size <= n:
            length, kind, flags, _, _ = NLMSG.unpack_from(data, off)
            if length < NLMSG.size or off + length > n:
                self._count("events.dropped.bad_message")
                break
            start, end = off + NLMSG.size, off + length
            off += (length + 3) & ~3
            if kind not in (MSG_NEW, MSG_DELETE):
                continue
            entry = self._entry("events", data, start, end)
            if entry is None:
                continue
            what = "destroy" if kind == MSG_DELETE else ("new" if flags & NLM_F_CREATE else "update")
            self._count(f"events.{what}")
            out.append(CtEvent(kind=what, entry=entry))
        return out

    def close(self) -> None:
        """Stop the events (if subscribed) and close the sockets."""
        sock, self._events = self._events, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        req, self._requests = self._requests, None
        if req is not None:
            req.close()

