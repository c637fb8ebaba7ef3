"""Send clusterbus netlink messages to a NETLINK_USERSOCK multicast group.

A user process sends to a group with ``sendto(msg, (0, 1 << (group - 1)))``. The kernel
delivers the message to every member of the group (``netlink_broadcast``) and then also
tries to unicast it to port id 0, the kernel side of the protocol; NETLINK_USERSOCK has no
kernel socket, so that part answers ECONNREFUSED after the multicast was delivered. The
sender ignores that error (docs/netlink.md).

Netlink multicast never blocks the sender: a member whose receive buffer is full loses the
message (and gets ENOBUFS on its next read), so :meth:`Sender.send` is safe to call from an
asyncio loop.

:meth:`Sender.send_many` puts several messages in one datagram (the format allows any
number back to back): one ``sendto``, one wake-up and one credentials check on the
receiving side for all of them. A datagram is all or nothing for the receiver.

``Sender(keep_state=True)`` remembers the last message it sent per node and answers the
daemon's dump requests (docs/netlink.md, "Overrun recovery") from :meth:`Sender.answer_dumps`:
with its full table, unicast to the requester, so a daemon that overran its receive
buffer can reconcile its view.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from types import TracebackType

from ..errors import LocalProtocolError
from ..events import NodeState
from .message import (
    NETLINK_USERSOCK,
    DumpRequest,
    MessageError,
    decode,
    encode,
    encode_dump_done,
)

__all__ = ["NETLINK_USERSOCK", "DEFAULT_GROUP", "DATAGRAM_BYTES", "Sender", "send",
           "parse_state"]

DEFAULT_GROUP = 22
#: Default bound of a datagram :meth:`Sender.send_many` builds: one page, so the
#: kernel's buffer for it is a single order-0 allocation (NLMSG_GOODSIZE is below a page
#: for the same reason); 93 messages of the usual 44 bytes.
DATAGRAM_BYTES = 4096

#: One message for :meth:`Sender.send_many`: ``(state, node, addrs, incarnation)``.
Message = tuple["NodeState | str", int, Sequence[str], int]

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
_UCRED = struct.Struct("=iII")
#: Seconds an answer to a dump request may block on a full receiver (SO_SNDTIMEO):
#: netlink unicast waits for room, which paces the answer to the daemon's speed.
ANSWER_TIMEOUT = 5.0


def parse_state(value: NodeState | str) -> NodeState:
    """Accept a :class:`NodeState` or a name (:meth:`NodeState.parse`): ``up``, ``down``,
    ``coming_up``/``comingup``, ``going_down``/``goingdown``, optionally prefixed
    ``node-``/``node_``/``node.``.

    :raises LocalProtocolError: not a state name.
    """
    try:
        return NodeState.parse(value)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None


def _group_mask(group: int) -> int:
    if type(group) is not int or not 1 <= group <= 32:
        raise LocalProtocolError(f"netlink group {group!r} must be 1..32")
    return 1 << (group - 1)


class Sender:
    """A reusable sending socket: one syscall per :meth:`send`, or per datagram of
    several messages with :meth:`send_many`.

    :param group: multicast group 1..32.
    :param keep_state: remember the last message sent per node (:attr:`table`) and join
        the group to hear dump requests; :meth:`answer_dumps` answers them.

    >>> with Sender(group=22) as s:
    ...     s.send("up", 3, ["10.0.0.3"], incarnation=1)
    """

    def __init__(self, group: int = DEFAULT_GROUP, *, keep_state: bool = False) -> None:
        self.group = group
        self._dest = (0, _group_mask(group))
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_USERSOCK)
        try:
            self._sock.bind((0, 0))  # autobind: the kernel picks our port id
            self.port_id: int = self._sock.getsockname()[0]
            if keep_state:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
                secs = int(ANSWER_TIMEOUT)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack(
                    "ll", secs, int((ANSWER_TIMEOUT - secs) * 1e6)))
        except BaseException:
            self._sock.close()
            raise
        self.keep_state = keep_state
        #: node -> (state, addrs, incarnation) last sent (with ``keep_state``)
        self.table: dict[int, tuple[NodeState, tuple[str, ...], int]] = {}
        self._seq = 0
        #: datagrams sent
        self.sent = 0
        #: dump requests answered
        self.answered = 0

    def send(
        self,
        state: NodeState | str,
        node: int,
        addrs: Sequence[str] = (),
        incarnation: int = 0,
    ) -> int:
        """Encode and multicast one message.

        :param state: the state to announce (see :func:`parse_state`).
        :param node: node number.
        :param addrs: the node's IPv4/IPv6 addresses.
        :param incarnation: the node's incarnation (0 = unknown).
        :returns: the ``nlmsg_seq`` used.
        :raises LocalProtocolError: bad arguments.
        :raises OSError: the kernel refused the message (other than ECONNREFUSED).
        """
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        st, addrs = parse_state(state), tuple(addrs)
        data = encode(st, node, addrs, incarnation, seq=self._seq, pid=self.port_id)
        self.send_bytes(data)
        if self.keep_state:
            self.table[node] = (st, addrs, incarnation)
        return self._seq

    def send_many(self, messages: Iterable[Message], *,
                  max_bytes: int = DATAGRAM_BYTES) -> int:
        """Encode several messages and multicast them, as many per datagram as fit in
        ``max_bytes`` (see :meth:`send_encoded`). Each gets its own ``nlmsg_seq``.

        :param messages: ``(state, node, addrs, incarnation)`` each, in order.
        :param max_bytes: bound of one datagram.
        :returns: the number of datagrams sent.
        :raises LocalProtocolError: a bad message; nothing was sent.
        :raises OSError: the kernel refused a datagram (the ones before it were sent).
        """
        encoded = []
        rows = []
        for state, node, addrs, incarnation in messages:  # all encoded before any is sent
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            st, addrs = parse_state(state), tuple(addrs)
            encoded.append(encode(st, node, addrs, incarnation, seq=self._seq,
                                  pid=self.port_id))
            rows.append((node, (st, addrs, incarnation)))
        sent = self.send_encoded(encoded, max_bytes=max_bytes)
        if self.keep_state:
            self.table.update(rows)
        return sent

    def answer_dumps(self, timeout: float = 0.0) -> int:
        """Answer the dump requests that arrived (waiting up to ``timeout`` seconds for
        the first): the whole :attr:`table`, each message carrying the request's cookie,
        then a DUMP_DONE with the count, unicast to the requester's port id. Requests
        from a uid other than 0 or ours are ignored. Everything else heard on the group
        is discarded.

        :returns: the number of requests answered.
        :raises LocalProtocolError: the sender was not made with ``keep_state``.
        :raises OSError: an answer could not be sent (e.g. the requester is gone).
        """
        if not self.keep_state:
            raise LocalProtocolError("answer_dumps() needs Sender(keep_state=True)")
        answered = 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                data, anc, _flags, addr = self._sock.recvmsg(
                    1 << 17, socket.CMSG_SPACE(_UCRED.size), socket.MSG_DONTWAIT)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if answered or left <= 0:
                    return answered
                select.select([self._sock], [], [], left)
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue  # we overran on others' traffic; requests are re-sent
                raise
            uid = next((_UCRED.unpack_from(c)[1] for lvl, typ, c in anc
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS
                        and len(c) >= _UCRED.size), None)
            if uid not in (0, os.getuid()):
                continue
            try:
                items = decode(data)
            except MessageError:
                continue
            for item in items:
                if type(item) is DumpRequest:
                    self._answer(item.cookie, addr[0])
                    answered += 1

    def _answer(self, cookie: int, port: int) -> None:
        msgs = []
        for node, (state, addrs, incarnation) in list(self.table.items()):
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            msgs.append(encode(state, node, addrs, incarnation, seq=self._seq,
                               pid=self.port_id, cookie=cookie))
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        msgs.append(encode_dump_done(cookie, len(msgs), seq=self._seq, pid=self.port_id))
        self.send_encoded(msgs, dest=(port, 0))
        self.answered += 1

    def send_encoded(self, messages: Iterable[bytes], *,
                     max_bytes: int = DATAGRAM_BYTES,
                     dest: tuple[int, int] | None = None) -> int:
        """Multicast encoded messages back to back, as many per datagram as fit in
        ``max_bytes``; a message longer than that goes alone. Message order is kept.

        :param messages: whole messages as :func:`~clusterbus.netlink.message.encode`
            makes them (a length that is not a multiple of 4 is padded, NLMSG_ALIGN).
        :param max_bytes: bound of one datagram (at least 36, the smallest message).
        :param dest: ``(port id, groups)``; default: the group.
        :returns: the number of datagrams sent.
        :raises LocalProtocolError: ``max_bytes`` is below 36.
        :raises OSError: the kernel refused a datagram (the ones before it were sent).
        """
        if type(max_bytes) is not int or max_bytes < 36:
            raise LocalProtocolError(f"max_bytes {max_bytes!r}: a datagram needs >= 36 bytes")
        datagrams = 0
        chunk: list[bytes] = []
        size = 0
        for msg in messages:
            if len(msg) & 3:
                msg += bytes(-len(msg) & 3)
            if chunk and size + len(msg) > max_bytes:
                self.send_bytes(b"".join(chunk), dest)
                datagrams += 1
                chunk, size = [], 0
            chunk.append(msg)
            size += len(msg)
        if chunk:
            self.send_bytes(b"".join(chunk), dest)
            datagrams += 1
        return datagrams

    def send_bytes(self, data: bytes, dest: tuple[int, int] | None = None) -> None:
        """Multicast raw bytes to the group (tests use it to send malformed messages), or
        send them to ``dest`` (``(port id, groups)``).

        :raises OSError: the kernel refused the message (other than ECONNREFUSED).
        """
        try:
            self._sock.sendto(data, dest or self._dest)
        except ConnectionRefusedError:
            pass  # the unicast to the (absent) kernel socket; the multicast went out
        except OSError as exc:
            if exc.errno != errno.ECONNREFUSED:
                raise
        self.sent += 1

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def send(
    state: NodeState | str,
    node: int,
    addrs: Sequence[str] = (),
    incarnation: int = 0,
    group: int = DEFAULT_GROUP,
) -> None:
    """Send one message on a throw-away socket (what ``clusterbus emit`` calls).

    :param state: ``up``/``down``/``comingup``/``goingdown`` or a :class:`NodeState`.
    :param node: node number.
    :param addrs: the node's IPv4/IPv6 addresses.
    :param incarnation: the node's incarnation (0 = unknown).
    :param group: multicast group 1..32.
    :raises LocalProtocolError: bad arguments.
    :raises OSError: the socket could not be created or the kernel refused the message.
    """
    with Sender(group) as sender:
        sender.send(state, node, addrs, incarnation)
