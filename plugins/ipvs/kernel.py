"""The kernel backend: IPVS over generic netlink, in the caller's network namespace.

pyroute2 resolves the ``IPVS`` generic-netlink family (and supplies the error type); the
messages themselves are built by :mod:`.codec` and written to a plain netlink socket in
batches: many requests go out in one ``send`` without asking for acks, and only the last
request of a batch asks for one. The kernel handles the messages of one ``send`` in order
and answers a failed request with an error even without an ack request, so once the last
request's ack has arrived every error of the batch has arrived too.

Blocking: every method makes system calls and waits for the kernel; the daemon calls them
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from . import codec
from .table import Dest, Entry, Op, OpKind, Plan, Service, ServiceKey, Table

__all__ = ["Kernel", "IpvsKernelError", "ApplyResult"]

log = logging.getLogger(__name__)

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

#: messages per send (each batch ends with one acked message)
BATCH_MESSAGES = 512
BATCH_BYTES = 96 * 1024
#: Seconds a sync-daemon stop waits for the kernel's answer before it asks whether the
#: daemon is gone (see :meth:`Kernel.stop_daemon`), and how long that question may take.
STOP_ANSWER_S = 1.0
ANSWER_TIMEOUT_S = 10.0

_CMD = {
    OpKind.ADD_SERVICE: codec.CMD_NEW_SERVICE,
    OpKind.SET_SERVICE: codec.CMD_SET_SERVICE,
    OpKind.DEL_SERVICE: codec.CMD_DEL_SERVICE,
    OpKind.ADD_DEST: codec.CMD_NEW_DEST,
    OpKind.SET_DEST: codec.CMD_SET_DEST,
    OpKind.DEL_DEST: codec.CMD_DEL_DEST,
}


class IpvsKernelError(OSError):
    """The kernel refused an IPVS request; the message names the service and the field.

    An :class:`OSError` with the kernel's errno (pyroute2's ``NetlinkError`` is untyped, so
    it is not the base; ``code`` keeps its attribute name for callers used to it).

    :param code: the errno.
    :param msg: human text (operation, service, likely field).
    :param op: the refused operation, when it was one of a plan's.
    """

    def __init__(self, code: int, msg: str, op: Op | None = None) -> None:
        super().__init__(code, msg)
        self.op = op

    @property
    def code(self) -> int:
        """The errno the kernel answered."""
        return self.errno if self.errno is not None else 0

    def __str__(self) -> str:
        return str(self.strerror)


def explain(op: Op, code: int) -> str:
    """Turn an errno for ``op`` into a message naming the virtual server and the field."""
    svc = op.service
    what = op.describe()
    text = os.strerror(code)
    if code == errno.EEXIST:
        hint = ("the real server already exists" if op.dest else "the service already exists")
    elif code == errno.ENOENT and op.kind in (OpKind.ADD_SERVICE, OpKind.SET_SERVICE):
        hint = (f"field scheduler: the kernel has no scheduler {svc.scheduler!r} "
                f"(module ip_vs_{svc.scheduler} not loaded?)")
        if svc.pe_name:
            hint += f" or no persistence engine {svc.pe_name!r}"
    elif code == errno.ESRCH:
        hint = "the service does not exist"
    elif code == errno.ENOENT:
        hint = "the real server does not exist"
    elif code == errno.EINVAL:
        if op.dest is not None:
            hint = ("a real server field is invalid (weight, thresholds, forward method, "
                    "or port for this forwarding method)")
        else:
            hint = ("a service field is invalid (persistence_netmask, scheduler_flags, "
                    "persistence_timeout or port)")
    elif code == errno.EAFNOSUPPORT:
        hint = "address family not supported here (forward method needs the same family)"
    else:
        hint = ""
    return f"{what}: {text}" + (f"; {hint}" if hint else "")


@dataclass(slots=True)
class ApplyResult:
    """What :meth:`Kernel.apply` did."""

    sent: int = 0
    errors: list[IpvsKernelError] = field(default_factory=list)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


class Kernel:
    """A connection to the kernel's IPVS, in the current network namespace.

    :raises IpvsKernelError: the kernel has no IPVS (``ip_vs`` not loaded) or the socket
        cannot be opened.
    """

    def __init__(self) -> None:
        self.family = self._resolve_family()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, 16 << 20),
                                       (SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20)):
                try:  # *BUFFORCE passes net.core.rmem_max, for root
                    self.sock.setsockopt(socket.SOL_SOCKET, force, size)
                except PermissionError:
                    self.sock.setsockopt(socket.SOL_SOCKET, plain, size)
            # Errors echo only the header, not the whole request (linux/netlink.h).
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))
            self.pid = self.sock.getsockname()[0]
        except OSError:
            self.sock.close()
            raise
        self._seq = int(time.time()) & 0x3FFFFFFF
        self._buf = bytearray(1 << 18)
        self._lock = threading.Lock()

    @staticmethod
    def _resolve_family() -> int:
        from pyroute2.netlink.generic.ipvs import IPVSSocket

        try:
            s = IPVSSocket()
        except NetlinkError as exc:
            raise IpvsKernelError(exc.code, "the kernel has no IPVS generic-netlink family "
                                  "(modprobe ip_vs)") from None
        try:
            return int(s.prid)
        finally:
            s.close()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _recv(self) -> bytes:
        n = self.sock.recv_into(self._buf)
        return bytes(self._buf[:n])

    def _dump(self, cmd: int, payload: bytes = b"") -> list[dict[int, memoryview]]:
        """One dump request; the top-level attributes of every answer."""
        seq = self._next_seq()
        self.sock.send(codec.message(self.family, cmd, codec.NLM_F_REQUEST | codec.NLM_F_DUMP,
                                     seq, payload, self.pid))
        out: list[dict[int, memoryview]] = []
        while True:
            for kind, _flags, rseq, body in codec.messages(self._recv()):
                if rseq != seq:
                    continue  # a stale answer of an earlier, abandoned request
                if kind == codec.NLMSG_DONE:
                    return out
                if kind == codec.NLMSG_ERROR:
                    code = codec.error_code(body)
                    if code:
                        raise IpvsKernelError(code, f"dump command {cmd}: {os.strerror(code)}")
                    return out
                out.append(codec.genl_attrs(body))

    def _request(self, cmd: int, payload: bytes = b"", *, what: str) -> list[dict[int, memoryview]]:
        """One acked request; the answers before the ack (GET_CONFIG/GET_INFO give one)."""
        seq = self._next_seq()
        self.sock.send(codec.message(self.family, cmd, codec.NLM_F_REQUEST | codec.NLM_F_ACK,
                                     seq, payload, self.pid))
        out: list[dict[int, memoryview]] = []
        while True:
            for kind, _flags, rseq, body in codec.messages(self._recv()):
                if rseq != seq:
                    continue
                if kind == codec.NLMSG_ERROR:
                    code = codec.error_code(body)
                    if code:
                        raise IpvsKernelError(code, f"{what}: {os.strerror(code)}")
                    return out
                out.append(codec.genl_attrs(body))

    # -- reading ------------------------------------------------------------------------

    def services(self) -> list[Service]:
        """Every virtual service (without real servers)."""
        return [codec.decode_service(a[codec.ATTR_SERVICE])
                for a in self._dump(codec.CMD_GET_SERVICE) if codec.ATTR_SERVICE in a]

    def dests(self, key: ServiceKey) -> list[tuple[Dest, dict[str, int]]]:
        """The real servers of one service, with their connection counters."""
        payload = codec.nested(codec.ATTR_SERVICE, codec.service_id(key))
        return [codec.decode_dest(a[codec.ATTR_DEST], key.af)
                for a in self._dump(codec.CMD_GET_DEST, payload) if codec.ATTR_DEST in a]

    def entry(self, key: ServiceKey) -> Entry | None:
        """One service and its real servers as the kernel holds them now.

        :returns: ``None`` when the kernel has no such service.
        :raises IpvsKernelError: any other refusal.
        """
        with self._lock:
            try:
                answers = self._request(codec.CMD_GET_SERVICE,
                                        codec.nested(codec.ATTR_SERVICE, codec.service_id(key)),
                                        what=f"get service {key}")
                svc = next((codec.decode_service(a[codec.ATTR_SERVICE]) for a in answers
                            if codec.ATTR_SERVICE in a), None)
                if svc is None:
                    return None
                out = Entry(svc)
                for d, _conns in self.dests(key):
                    out.dests[d.ident] = d
                return out
            except IpvsKernelError as exc:
                if exc.code == errno.ESRCH:  # no such service (or removed meanwhile)
                    return None
                raise

    def dump(self, *,
             counters: dict[tuple[ServiceKey, tuple[str, int]], dict[str, int]] | None = None,
             ) -> Table:
        """The kernel's whole table, from raw attributes (no defaults filled in).

        :param counters: when given, filled with each real server's connection counters.
        """
        with self._lock:
            table: Table = {}
            for svc in self.services():
                entry = Entry(svc)
                try:
                    found = self.dests(svc.key)
                except IpvsKernelError as exc:
                    if exc.code == errno.ESRCH:  # removed between the two dumps
                        continue
                    raise
                for d, conns in found:
                    entry.dests[d.ident] = d
                    if counters is not None:
                        counters[(svc.key, d.ident)] = conns
                table[svc.key] = entry
            return table

    # -- writing ------------------------------------------------------------------------

    def encode(self, op: Op, seq: int, flags: int) -> bytes:
        """One plan operation as a message."""
        cmd = _CMD[op.kind]
        if op.dest is None:
            body = (codec.service_id(op.service.key) if op.kind is OpKind.DEL_SERVICE
                    else codec.service_full(op.service))
            payload = codec.nested(codec.ATTR_SERVICE, body)
        else:
            dbody = (codec.dest_id(op.dest) if op.kind is OpKind.DEL_DEST
                     else codec.dest_full(op.dest))
            payload = (codec.nested(codec.ATTR_SERVICE, codec.service_id(op.service.key))
                       + codec.nested(codec.ATTR_DEST, dbody))
        return codec.message(self.family, cmd, flags, seq, payload, self.pid)

    def apply(self, plan: Plan | Sequence[Op]) -> ApplyResult:
        """Send every operation, pipelined; collect the kernel's refusals.

        A refused operation does not stop the others (the kernel handles each message of a
        batch on its own).

        :returns: how many were sent, the errors (each names the service and the field),
            and how long it took.
        """
        ops = plan.ops if isinstance(plan, Plan) else list(plan)
        result = ApplyResult()
        start = time.monotonic()
        with self._lock:
            i = 0
            while i < len(ops):
                chunk: list[bytes] = []
                by_seq: dict[int, Op] = {}
                size = 0
                j = i
                while j < len(ops) and len(chunk) < BATCH_MESSAGES and size < BATCH_BYTES:
                    seq = self._next_seq()
                    msg = self.encode(ops[j], seq, codec.NLM_F_REQUEST)
                    chunk.append(msg)
                    by_seq[seq] = ops[j]
                    size += len(msg)
                    j += 1
                # Only the batch's last message asks for an ack: its ack is the barrier.
                chunk[-1] = self.encode(ops[j - 1], seq, codec.NLM_F_REQUEST | codec.NLM_F_ACK)
                self.sock.send(b"".join(chunk))
                result.sent += len(chunk)
                self._collect(seq, by_seq, result)
                i = j
        result.duration = time.monotonic() - start
        for err in result.errors:
            log.warning("ipvs: %s", err)
        return result

    def _collect(self, last_seq: int, by_seq: dict[int, Op], result: ApplyResult) -> None:
        while True:
            for kind, _flags, seq, body in codec.messages(self._recv()):
                if kind != codec.NLMSG_ERROR or seq not in by_seq:
                    continue
                code = codec.error_code(body)
                if code:
                    op = by_seq[seq]
                    result.errors.append(IpvsKernelError(code, explain(op, code), op))
                if seq == last_seq:
                    return

    # -- sync daemon and timeouts (not in pyroute2) ---------------------------------------

    def daemons(self) -> list[dict[str, Any]]:
        """The running sync daemons (``ipvsadm -L --daemon``)."""
        with self._lock:
            return self._daemons()

    def _daemons(self) -> list[dict[str, Any]]:
        return [codec.decode_daemon(a[codec.ATTR_DAEMON])
                for a in self._dump(codec.CMD_GET_DAEMON) if codec.ATTR_DAEMON in a]

    def start_daemon(self, state: str, *, interface: str, syncid: int = 0, maxlen: int = 0,
                     group: str = "", port: int = 0, ttl: int = 0) -> None:
        """Start the sync daemon as ``master`` or ``backup``.

        :raises IpvsKernelError: e.g. EEXIST when that daemon already runs, ENODEV for an
            unknown interface.
        """
        st = codec.STATE_MASTER if state == "master" else codec.STATE_BACKUP
        payload = codec.daemon_attrs(state=st, interface=interface, syncid=syncid, maxlen=maxlen,
                                     group=group, port=port, ttl=ttl)
        with self._lock:
            self._request(codec.CMD_NEW_DAEMON, payload,
                          what=f"start sync daemon {state} on {interface!r} syncid {syncid}")

    def stop_daemon(self, state: str) -> None:
        """Stop the ``master`` or ``backup`` sync daemon.

        :raises IpvsKernelError: ESRCH when it is not running.
        """
        st = codec.STATE_MASTER if state == "master" else codec.STATE_BACKUP
        what = f"stop sync daemon {state}"
        with self._lock:
            timeout = self.sock.gettimeout()
            self.sock.settimeout(STOP_ANSWER_S)
            try:
                self._request(codec.CMD_DEL_DAEMON, codec.daemon_attrs(state=st), what=what)
            except TimeoutError:
                # Linux sends no answer when it stopped a daemon thread that had not run
                # yet (kthread_stop gives -EINTR; netlink acks nothing for -EINTR): a stop
                # right after a start. The dump says whether it is gone; a late ack has an
                # older sequence number and is skipped.
                self.sock.settimeout(ANSWER_TIMEOUT_S)
                try:
                    gone = all(d["state"] != state for d in self._daemons())
                except TimeoutError:
                    gone = False
                if not gone:
                    raise IpvsKernelError(errno.ETIMEDOUT,
                                          f"{what}: no answer from the kernel") from None
                log.debug("ipvs: %s: the kernel did not answer, but the daemon is gone", what)
            finally:
                self.sock.settimeout(timeout)

    def timeouts(self) -> dict[str, int]:
        """The connection timeouts in seconds (``ipvsadm -L --timeout``)."""
        with self._lock:
            answers = self._request(codec.CMD_GET_CONFIG, what="get timeouts")
        a = answers[0] if answers else {}
        get = codec._get_u32
        return {"tcp": get(a, codec.ATTR_TIMEOUT_TCP), "tcp_fin": get(a, codec.ATTR_TIMEOUT_TCP_FIN),
                "udp": get(a, codec.ATTR_TIMEOUT_UDP)}

    def set_timeouts(self, *, tcp: int = 0, tcp_fin: int = 0, udp: int = 0) -> None:
        """Set connection timeouts in seconds; 0 leaves one unchanged."""
        with self._lock:
            self._request(codec.CMD_SET_CONFIG, codec.timeout_attrs(tcp, tcp_fin, udp),
                          what="set timeouts")

    def info(self) -> dict[str, Any]:
        """IPVS version and connection table size."""
        with self._lock:
            answers = self._request(codec.CMD_GET_INFO, what="get info")
        a = answers[0] if answers else {}
        v = codec._get_u32(a, codec.INFO_VERSION)
        return {"version": f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}",
                "conn_tab_size": codec._get_u32(a, codec.INFO_CONN_TAB_SIZE)}
