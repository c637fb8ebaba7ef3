"""The netlink membership source: node status pushed through the kernel, no polling.

A raw ``AF_NETLINK`` socket of protocol NETLINK_USERSOCK (2) joins one multicast group.
Any process (or a kernel module, with ``netlink_broadcast``) that sends a clusterbus
message to that group reaches every listening daemon in the network namespace. The socket
is an fd on the asyncio loop (``loop.add_reader``); nothing polls.

Trust comes from the kernel, not from the message: ``SO_PASSCRED`` makes every datagram
carry the sender's ``struct ucred`` (SCM_CREDENTIALS), and only uids listed in
``[netlink] allowed_uids`` are believed. NETLINK_USERSOCK lets unprivileged processes send
to its groups, so this check is what keeps an ordinary user from declaring nodes dead.

Every datagram that is not believed is dropped, counted by reason and logged; the source
never stops on input.

Overrun recovery (docs/netlink.md): after ENOBUFS the source cannot know what it missed,
so it multicasts a dump request; emitters that keep state answer with their full table,
unicast to this socket, and the view is reconciled with each complete answer
(:meth:`~clusterbus.engine.Engine.resync`, a ``membership.resync`` event).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..engine import Engine
from ..netlink.message import (
    NETLINK_USERSOCK,
    DumpDone,
    DumpEntry,
    DumpRequest,
    MessageError,
    decode_reports,
    encode_dump_request,
)
from ..view import NodeInfo, NodeReport

__all__ = ["NetlinkSource", "NETLINK_USERSOCK", "SOL_NETLINK", "NETLINK_ADD_MEMBERSHIP"]

log = logging.getLogger(__name__)

SOL_NETLINK = 270  # include/linux/socket.h
NETLINK_ADD_MEMBERSHIP = 1  # include/uapi/linux/netlink.h
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # root may exceed rmem_max

_UCRED = struct.Struct("=iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
#: Larger than any single netlink datagram a sender can build with default socket
#: buffers; a bigger one arrives with MSG_TRUNC and is dropped as ``oversize``.
RECV_SIZE = 1 << 17
#: Datagrams, and messages (whole datagrams: at least one), handled per wake-up before
#: yielding to the loop (the fd is level-triggered, so the rest is read on the next
#: turn). Messages count too because the publisher flushes once per loop turn: a
#: wake-up that took in a few dozen batched datagrams would hold thousands of events
#: back from subscribers until the last was handled.
BATCH = 256
_CMSG_SPACE = socket.CMSG_SPACE(_UCRED.size)
# Plain ints: the socket module's constants are enum members, whose ``&`` and ``==``
# run Python code, once per datagram.
_MSG_TRUNC, _MSG_CTRUNC = int(socket.MSG_TRUNC), int(socket.MSG_CTRUNC)
_SOL_SOCKET, _SCM_CREDENTIALS = int(socket.SOL_SOCKET), int(socket.SCM_CREDENTIALS)
#: Seconds between two dump requests (an overrun during a resync asks again, no sooner).
RESYNC_INTERVAL = 1.0
#: Seconds a dump request waits for answers before it is counted ``resync.unanswered``.
RESYNC_WAIT = 5.0
#: Most node messages one answer may hold (the answers are held until their DUMP_DONE).
MAX_ANSWER = 1 << 20


class NetlinkSource:
    """Listens on NETLINK_USERSOCK multicast and reports nodes to the engine.

    :param engine: where reports go (:meth:`~clusterbus.engine.Engine.report`).
    :param config: uses ``[netlink]`` ``enabled``, ``group``, ``allowed_uids`` and
        ``rcvbuf`` (bytes), as :mod:`clusterbus.config` validated them.

    ``counters`` keys: ``datagrams`` (read), ``messages`` (decoded), ``reported`` (handed to
    the engine), ``changes`` (that changed the view), and the drops:
    ``unauthorised_sender``, ``no_credentials``, ``oversize``, ``malformed`` (plus
    ``malformed.<kind>``, see :class:`~clusterbus.netlink.message.MessageError`),
    ``overrun`` (ENOBUFS: the kernel dropped messages because our buffer was full),
    ``recv_error`` and ``internal_error``; the overrun recovery: ``resync.requests``,
    ``resync.done``, ``resync.incomplete``, ``resync.unanswered``, ``resync.stale``
    (answers to an older request), ``resync.too_large``, ``dump_requests_seen`` (another
    daemon's requests).
    """

    def __init__(self, engine: Engine, config: Config) -> None:
        # validated, defaults filled in: clusterbus.config's schema is the one place
        section: dict[str, Any] = config["netlink"]
        self.engine = engine
        self.enabled: bool = section["enabled"]
        self.group: int = section["group"]
        self.allowed_uids = frozenset(section["allowed_uids"])
        self.rcvbuf: int = section["rcvbuf"]
        self.counters: dict[str, int] = {
            "datagrams": 0,
            "messages": 0,
            "reported": 0,
            "changes": 0,
            "unauthorised_sender": 0,
            "no_credentials": 0,
            "oversize": 0,
            "malformed": 0,
            "overrun": 0,
            "recv_error": 0,
            "internal_error": 0,
            "resync.requests": 0,
            "resync.done": 0,
            "resync.incomplete": 0,
            "resync.unanswered": 0,
            "resync.stale": 0,
            "resync.too_large": 0,
            "dump_requests_seen": 0,
        }
        #: node -> pid of the process that last reported it (whose answer is authoritative
        #: for it in a resync); one entry per node the source ever reported
        self._reporter: dict[int, int] = {}
        #: the cookie of the outstanding dump request (0: none), its answers by pid
        self._cookie = 0
        self._answers: dict[int, list[NodeReport]] = {}
        self._answered: set[int] = set()
        #: the newest dump request has no complete answer yet (and RESYNC_WAIT has not
        #: passed)
        self._awaiting = False
        self._resync_needed = False
        self._last_request = -RESYNC_INTERVAL
        self._timer: asyncio.TimerHandle | None = None
        #: the throttled dump request's retry (its own slot: _timer may hold the answer
        #: check of the request before, which must not swallow it)
        self._retry_timer: asyncio.TimerHandle | None = None
        #: set once the socket has joined the group (tests and the daemon may wait on it)
        self.ready = asyncio.Event()
        self.last_error: str | None = None
        self._sock: socket.socket | None = None
        self._port_id = 0
        self._rcvbuf_actual = 0
        self._warned: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> socket.socket:
        """Create the socket, size its buffer, turn on credentials and join the group.

        :raises OSError: the kernel refused (e.g. no netlink in this kernel).
        """
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_USERSOCK)
        try:
            sock.setblocking(False)
            self._set_rcvbuf(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind((0, 0))  # autobind a port id; membership comes from the setsockopt
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, self.group)
            self._port_id = sock.getsockname()[0]
        except BaseException:
            sock.close()
            raise
        return sock

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        # A burst of node reports (a whole rack going down) must fit in the queue until
        # the loop gets to us; SO_RCVBUF is capped by net.core.rmem_max, so try the
        # privileged variant first.
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self._rcvbuf_actual = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    async def run(self) -> None:
        """Listen until cancelled (returns at once when ``[netlink] enabled`` is false)."""
        if not self.enabled:
            log.info("netlink source disabled")
            return
        loop = asyncio.get_running_loop()
        sock = self.open()
        self._sock = sock
        fd = sock.fileno()
        loop.add_reader(fd, self._on_readable)
        log.info("netlink: listening on NETLINK_USERSOCK group %d (port id %d, rcvbuf %d, "
                 "allowed uids %s)", self.group, self._port_id, self._rcvbuf_actual,
                 sorted(self.allowed_uids))
        self.ready.set()
        try:
            await asyncio.Future()  # everything happens in _on_readable
        finally:
            loop.remove_reader(fd)
            for handle in (self._timer, self._retry_timer):
                if handle is not None:
                    handle.cancel()
            sock.close()
            self._sock = None
            self.ready.clear()

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        return {
            "enabled": self.enabled,
            "listening": self._sock is not None,
            "protocol": NETLINK_USERSOCK,
            "group": self.group,
            "port_id": self._port_id,
            "rcvbuf": self._rcvbuf_actual,
            "allowed_uids": sorted(self.allowed_uids),
            "counters": dict(self.counters),
            "last_error": self.last_error,
            # a dump request to send (now or once RESYNC_INTERVAL has passed), or the
            # newest one not answered yet
            "resync_pending": self._resync_needed or self._retry_timer is not None
            or self._awaiting,
        }

    # -- input ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        counters = self.counters
        budget = counters["messages"] + BATCH
        for _ in range(BATCH):
            if counters["messages"] >= budget:
                return
            try:
                data, ancdata, msg_flags, _addr = sock.recvmsg(RECV_SIZE, _CMSG_SPACE)
            except BlockingIOError:
                if self._resync_needed:  # drained: now ask for the full tables
                    self._request_dump()
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped datagrams for us; the view may now miss a change:
                    # once the queue is drained, ask the emitters for their tables.
                    self._resync_needed = True
                    self._drop("overrun", "receive buffer overrun (ENOBUFS): messages lost; "
                               "asking emitters for their tables (consider a larger "
                               "[netlink] rcvbuf)")
                    continue
                self._drop("recv_error", f"recvmsg failed: {os.strerror(exc.errno or 0)}")
                return
            try:
                self.handle_datagram(data, ancdata, msg_flags)
            except Exception:  # the supervisor boundary of this source: never die on input
                self.counters["internal_error"] += 1
                log.exception("netlink: failed to handle a datagram")

    def handle_datagram(self, data: bytes, ancdata: list[tuple[int, int, bytes]],
                        msg_flags: int) -> None:
        """Judge one datagram as returned by ``recvmsg`` and report what it says.

        :param data: the payload.
        :param ancdata: the ancillary data (must hold SCM_CREDENTIALS).
        :param msg_flags: ``recvmsg``'s flags (MSG_TRUNC, MSG_CTRUNC).
        """
        self.counters["datagrams"] += 1
        if msg_flags & _MSG_TRUNC:
            self._drop("oversize", f"datagram larger than {RECV_SIZE} bytes")
            return
        cred = _credentials(ancdata)
        if cred is None or msg_flags & _MSG_CTRUNC:
            self._drop("no_credentials", "datagram without SCM_CREDENTIALS")
            return
        pid, uid, gid = cred
        if uid not in self.allowed_uids:
            self._drop("unauthorised_sender",
                       f"sender uid {uid} (pid {pid}, gid {gid}) is not in allowed_uids",
                       key=f"uid{uid}")
            return
        try:
            items = decode_reports(data)
        except MessageError as exc:
            self.counters[f"malformed.{exc.kind}"] = (
                self.counters.get(f"malformed.{exc.kind}", 0) + 1)
            self._drop("malformed", f"malformed datagram from uid {uid} pid {pid}: {exc}",
                       key=f"malformed.{exc.kind}")
            return
        counters = self.counters
        counters["messages"] += len(items)
        report = self.engine.report
        reporter = self._reporter
        debug = log.isEnabledFor(logging.DEBUG)
        for item in items:
            if isinstance(item, NodeReport):
                if debug:
                    log.debug("netlink: node %d %s addrs=%s incarnation=%d from pid %d uid %d",
                              item.node, item.state.label, ",".join(item.addrs),
                              item.incarnation, pid, uid)
                counters["reported"] += 1
                reporter[item.node] = pid
                if report(item) is not None:
                    counters["changes"] += 1
            else:
                self._dump_item(item, pid)

    # -- overrun recovery -------------------------------------------------------------------

    def _dump_item(self, item: DumpRequest | DumpEntry | DumpDone, pid: int) -> None:
        if type(item) is DumpRequest:
            self.counters["dump_requests_seen"] += 1
            return
        if item.cookie != self._cookie:
            self.counters["resync.stale"] += 1
            return
        if type(item) is DumpEntry:
            answer = self._answers.setdefault(pid, [])
            if len(answer) >= MAX_ANSWER:
                self.counters["resync.too_large"] += 1
                return
            answer.append(item.report)
            return
        assert type(item) is DumpDone
        answer = self._answers.pop(pid, [])
        if len(answer) != item.total:
            # part of the answer was lost too: apply what came, and ask again
            self.counters["resync.incomplete"] += 1
            log.warning("netlink: incomplete answer from pid %d (%d of %d nodes): asking again",
                        pid, len(answer), item.total)
            for rep in answer:
                self._reporter[rep.node] = pid
                if self.engine.report(rep) is not None:
                    self.counters["changes"] += 1
            self._resync_needed = True
            self._request_dump()
            return
        self._answered.add(pid)
        self._awaiting = False
        owned = self._owned_by(pid)
        for rep in answer:
            self._reporter[rep.node] = pid
        event = self.engine.resync(answer, source="netlink", owned=owned)
        self.counters["resync.done"] += 1
        self.counters["changes"] += event.changed
        log.warning("netlink: resynchronised from pid %d: %d node(s) listed, %d change(s), "
                    "%d reported down as missing", pid, event.reported, event.changed,
                    event.down)

    def _owned_by(self, pid: int) -> Callable[[NodeInfo], bool]:
        reporter = self._reporter
        return lambda info: reporter.get(info.node) == pid

    def _request_dump(self) -> None:
        """Multicast a dump request now, or when RESYNC_INTERVAL has passed since the last."""
        sock = self._sock
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_request + RESYNC_INTERVAL - loop.time()
        if wait > 0:
            if self._retry_timer is None:
                self._retry_timer = loop.call_later(wait, self._retry_request)
            return
        self._resync_needed = False
        self._last_request = loop.time()
        self._cookie = (self._cookie % 0xFFFFFFFF) + 1 if self._cookie else \
            int.from_bytes(os.urandom(4), "little") or 1
        self._answers.clear()
        self._answered.clear()
        data = encode_dump_request(self._cookie, pid=self._port_id)
        try:
            sock.sendto(data, (0, 1 << (self.group - 1)))
        except ConnectionRefusedError:
            pass  # the unicast leg to the absent kernel socket; the multicast went out
        except OSError as exc:
            self._drop("recv_error", f"cannot send the dump request: {exc}")
            return
        self.counters["resync.requests"] += 1
        self._awaiting = True
        log.warning("netlink: dump request %#010x sent: emitters that keep state answer "
                    "with their tables", self._cookie)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(RESYNC_WAIT, self._check_answered, self._cookie)

    def _retry_request(self) -> None:
        self._retry_timer = None
        if self._resync_needed:
            self._request_dump()

    def _check_answered(self, cookie: int) -> None:
        self._timer = None
        if cookie == self._cookie:
            self._awaiting = False
        if cookie == self._cookie and not self._answered:
            self._drop("resync.unanswered", "no emitter answered the dump request: the view "
                       "may miss what the overrun dropped")

    def _drop(self, reason: str, detail: str, *, key: str | None = None) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        self.last_error = detail
        # Warn once per kind (someone misconfigured a sender), then stay at DEBUG so a
        # flood of garbage cannot flood the log too; the counters keep the total.
        key = key or reason
        if key in self._warned:
            log.debug("netlink: dropped (%s): %s", reason, detail)
        else:
            self._warned.add(key)
            log.warning("netlink: dropped (%s): %s (further ones of this kind are logged at "
                        "DEBUG and counted)", reason, detail)


def _credentials(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """The ``(pid, uid, gid)`` of SCM_CREDENTIALS, or ``None`` when absent or short."""
    for level, ctype, cdata in ancdata:
        if level == _SOL_SOCKET and ctype == _SCM_CREDENTIALS:
            if len(cdata) < _UCRED.size:
                return None
            cred: tuple[int, int, int] = _UCRED.unpack_from(cdata)
            return cred
    return None
