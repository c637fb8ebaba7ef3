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
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Sequence
from types import TracebackType

from ..errors import LocalProtocolError
from ..view import NodeState
from .message import NETLINK_USERSOCK, encode

__all__ = ["NETLINK_USERSOCK", "DEFAULT_GROUP", "DATAGRAM_BYTES", "Sender", "send",
           "parse_state"]

DEFAULT_GROUP = 22
#: Default bound of a datagram :meth:`Sender.send_many` builds: one page, so the
#: kernel's buffer for it is a single order-0 allocation (NLMSG_GOODSIZE is below a page
#: for the same reason); 93 messages of the usual 44 bytes.
DATAGRAM_BYTES = 4096

#: One message for :meth:`Sender.send_many`: ``(state, node, addrs, incarnation)``.
Message = tuple["NodeState | str", int, Sequence[str], int]

_STATE_NAMES = {
    "up": NodeState.UP,
    "down": NodeState.DOWN,
    "comingup": NodeState.COMING_UP,
    "goingdown": NodeState.GOING_DOWN,
}


def parse_state(value: NodeState | str) -> NodeState:
    """Accept a :class:`NodeState` or a name: ``up``, ``down``, ``coming_up``/``comingup``,
    ``going_down``/``goingdown``, optionally prefixed ``node-``/``node_``/``node.``.

    :raises LocalProtocolError: not a state name.
    """
    if isinstance(value, NodeState):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        for prefix in ("node-", "node_", "node."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        key = key.replace("_", "").replace("-", "")
        if key in _STATE_NAMES:
            return _STATE_NAMES[key]
    raise LocalProtocolError(
        f"unknown node state {value!r}; expected up, down, comingup or goingdown"
    )


def _group_mask(group: int) -> int:
    if type(group) is not int or not 1 <= group <= 32:
        raise LocalProtocolError(f"netlink group {group!r} must be 1..32")
    return 1 << (group - 1)


class Sender:
    """A reusable sending socket: one syscall per :meth:`send`, or per datagram of
    several messages with :meth:`send_many`.

    :param group: multicast group 1..32.

    >>> with Sender(group=22) as s:
    ...     s.send("up", 3, ["10.0.0.3"], incarnation=1)
    """

    def __init__(self, group: int = DEFAULT_GROUP) -> None:
        self.group = group
        self._dest = (0, _group_mask(group))
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_USERSOCK)
        try:
            self._sock.bind((0, 0))  # autobind: the kernel picks our port id
            self.port_id: int = self._sock.getsockname()[0]
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        #: datagrams sent
        self.sent = 0

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
        data = encode(parse_state(state), node, tuple(addrs), incarnation,
                      seq=self._seq, pid=self.port_id)
        self.send_bytes(data)
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
        for state, node, addrs, incarnation in messages:  # all encoded before any is sent
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            encoded.append(encode(parse_state(state), node, tuple(addrs), incarnation,
                                  seq=self._seq, pid=self.port_id))
        return self.send_encoded(encoded, max_bytes=max_bytes)

    def send_encoded(self, messages: Iterable[bytes], *,
                     max_bytes: int = DATAGRAM_BYTES) -> int:
        """Multicast encoded messages back to back, as many per datagram as fit in
        ``max_bytes``; a message longer than that goes alone. Message order is kept.

        :param messages: whole messages as :func:`~clusterbus.netlink.message.encode`
            makes them (a length that is not a multiple of 4 is padded, NLMSG_ALIGN).
        :param max_bytes: bound of one datagram (at least 36, the smallest message).
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
                self.send_bytes(b"".join(chunk))
                datagrams += 1
                chunk, size = [], 0
            chunk.append(msg)
            size += len(msg)
        if chunk:
            self.send_bytes(b"".join(chunk))
            datagrams += 1
        return datagrams

    def send_bytes(self, data: bytes) -> None:
        """Multicast raw bytes to the group (tests use it to send malformed messages).

        :raises OSError: the kernel refused the message (other than ECONNREFUSED).
        """
        try:
            self._sock.sendto(data, self._dest)
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
