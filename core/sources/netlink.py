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
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from typing import Any

from ..config import Config
from ..engine import Engine
from ..netlink.message import NETLINK_USERSOCK, MessageError, decode_fields

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
    ``recv_error`` and ``internal_error``.
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
        }
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
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped datagrams for us; the view may now miss a change.
                    self._drop("overrun", "receive buffer overrun (ENOBUFS): messages lost; "
                               "consider a larger [netlink] rcvbuf")
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
            messages = decode_fields(data)
        except MessageError as exc:
            self.counters[f"malformed.{exc.kind}"] = (
                self.counters.get(f"malformed.{exc.kind}", 0) + 1)
            self._drop("malformed", f"malformed datagram from uid {uid} pid {pid}: {exc}",
                       key=f"malformed.{exc.kind}")
            return
        if log.isEnabledFor(logging.DEBUG):  # spares the joins below per message
            for state, node, addrs, incarnation, _seq, _pid, _flags in messages:
                log.debug("netlink: node %d %s addrs=%s incarnation=%d from pid %d uid %d",
                          node, state.value, ",".join(addrs), incarnation, pid, uid)
        counters = self.counters
        counters["messages"] += len(messages)
        counters["reported"] += len(messages)
        # decode_fields' fields hold what NodeReport would check (u32 node and
        # incarnation, distinct canonical addresses), so they go to the engine as they
        # are, without a NodeReport per message.
        report = self.engine._report
        for state, node, addrs, incarnation, _seq, _pid, _flags in messages:
            if report(state, node, addrs, incarnation, "netlink") is not None:
                counters["changes"] += 1

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
