"""The kernel side of conn-sync: capture, inject, knobs and the commit check (Linux I/O).

Every director runs the kernel's IPVS master and backup sync daemons at once, in its own
network namespace, on the sync interface (``[connsync] interface``; a dummy interface keeps
the kernel's own multicast off the wire). conn-sync sits between them:

- :class:`Capture` reads what the local *master* daemon sends: an ``AF_PACKET`` socket sees
  its datagrams as ``PACKET_OUTGOING``, byte for byte as a peer would receive them (a UDP
  socket joined to the group sees nothing: the kernel's send socket has multicast loop off).
- :class:`Injector` hands a peer's datagrams to the local *backup* daemon: a UDP socket
  sending to the sync group with ``IP_MULTICAST_IF`` = the interface, multicast loop on
  and TTL 0, so the looped-back copy reaches the backup socket and nothing goes on the wire.
- :func:`committed` says when the backup daemon has consumed everything injected so far.
- :func:`set_sync_knobs` / :func:`ensure_daemons` make the master send within tens of
  milliseconds instead of seconds (``sync_threshold`` and the master's ``sync_maxlen``).

The payloads are opaque here; :mod:`.codec` decodes them. Blocking calls are short system
calls; :func:`committed` is the only coroutine. Typed errors: :class:`SyncKernelError`
(and :class:`InterfaceError`) for the kernel and the host, ``ConfigError`` for knob values.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import functools
import ipaddress
import logging
import mmap
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterbus.errors import ClusterbusError, ConfigError
from clusterbus.ratelimit import LogLimiter

__all__ = [
    "SYNC_GROUP4", "SYNC_PORT", "SyncKernelError", "InterfaceError", "set_sync_knobs",
    "sync_knobs", "ensure_daemons", "backup_maxlen", "backup_maxlen_for", "Capture",
    "Injector", "BackupQueue", "backup_queue",
    "committed", "interface_address", "SyncDaemons",
]

log = logging.getLogger(__name__)
#: the commit check's warnings, at most one line per kind and port per 10 s: the
#: injection checks after every round, so a gone backup daemon would log each round
limited = LogLimiter(log, interval=10.0)

#: The kernel's default sync group and port (``IP_VS_SYNC_GROUP``/``IP_VS_SYNC_PORT``).
#: There is no default IPv6 group: an IPv6 daemon needs an explicit one.
SYNC_GROUP4 = "224.0.0.81"
SYNC_PORT = 8848

#: ``/proc/sys/net/ipv4/vs`` of the current network namespace (exists once ip_vs is loaded).
VS_SYSCTL = Path("/proc/sys/net/ipv4/vs")
#: The master clamps ``sync_maxlen`` to 1 .. 65535 - IP and UDP headers.
MAXLEN_MAX4 = 65535 - 28
#: The same limit over IPv6 (the kernel clamps the backup's receive size to it too).
MAXLEN_MAX6 = 65535 - 48
#: The backup daemon's receive size when it is not given one: the interface MTU minus
#: headers (at least 1500 - 28); a longer datagram is cut there and dropped as bogus.
BACKUP_MAXLEN_DEFAULT = 1500 - 28


def backup_maxlen_for(group: str) -> int:
    """The largest receive size the kernel lets a backup daemon on ``group`` have (the one
    :func:`ensure_daemons` gives it: then one injected datagram may carry 255 entries)."""
    return MAXLEN_MAX6 if ipaddress.ip_address(group).version == 6 else MAXLEN_MAX4

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
#: set by the kernel on a frame filled while it had dropped packets since the last
#: PACKET_STATISTICS read (Documentation/networking/packet_mmap.rst)
TP_STATUS_LOSING = 4
#: struct tpacket2_hdr: status, len, snaplen, mac, net (then time, vlan, padding: 32
#: bytes); struct sockaddr_ll follows at TPACKET_ALIGN(32), its sll_pkttype at +10.
_TP2_HDR = struct.Struct("=IIIHH")
_TP2_SLL_PKTTYPE = 32 + 10
#: where a SOCK_DGRAM packet starts in its frame: TPACKET_ALIGN(TPACKET2_HDRLEN) + 16
_TP2_DATA = 80
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SIOCGIFADDR = 0x8915
SIOCGIFMTU = 0x8921

# classic BPF (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LDX_B_MSH, _LD_H_IND = 0xB1, 0x48
_JEQ_K, _JSET_K, _RET_K = 0x15, 0x45, 0x06
_SKF_AD_OFF = -0x1000
_SKF_AD_PROTOCOL, _SKF_AD_PKTTYPE = 0, 4

#: Datagrams one :meth:`Capture.read` returns at most (the rest stay queued for the next).
READ_BATCH = 4096


class SyncKernelError(ClusterbusError, OSError):
    """The kernel or the host refused what conn-sync needs (one line, with the errno).

    :param msg: what failed and what would fix it.
    :param code: the errno, when there is one.
    """

    def __init__(self, msg: str, *, code: int = 0) -> None:
        super().__init__(code, msg)
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class InterfaceError(SyncKernelError):
    """The sync interface is missing, or has no address to send from."""


class NoAnswerError(SyncKernelError):
    """The kernel did not answer a sync-daemon command in time (``ETIMEDOUT``)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, code=errno.ETIMEDOUT)


# -- knobs and daemons ----------------------------------------------------------------


def _check_knobs(kernel_maxlen: int, sync_threshold: tuple[int, int]) -> None:
    if not 1 <= kernel_maxlen <= MAXLEN_MAX4:
        raise ConfigError(f"must be 1..{MAXLEN_MAX4} bytes (1: every entry is its own "
                          f"datagram, the lowest lag), got {kernel_maxlen}",
                          key="connsync.kernel_maxlen")
    threshold, period = sync_threshold
    # the kernel's rule (proc_do_sync_threshold): both >= 0, threshold < period unless period 0
    if threshold < 0 or period < 0 or (period and threshold >= period):
        raise ConfigError(f"needs [threshold, period] with 0 <= threshold < period (or period "
                          f"0), e.g. [2, 50]; got {list(sync_threshold)}",
                          key="connsync.sync_threshold")


def _write_sysctl(name: str, value: str) -> None:
    path = VS_SYSCTL / name
    try:
        path.write_text(value)
    except FileNotFoundError:
        raise SyncKernelError(f"no {path}: the kernel has no IPVS here (modprobe ip_vs)",
                              code=errno.ENOENT) from None
    except OSError as exc:
        raise SyncKernelError(f"the kernel refused {name} = {value!r}: {exc.strerror}",
                              code=exc.errno or 0) from None


def sync_knobs() -> dict[str, Any]:
    """The sync sysctls of the current network namespace (``sync_threshold`` as a tuple).

    :raises SyncKernelError: the kernel has no IPVS.
    """
    if not VS_SYSCTL.is_dir():
        raise SyncKernelError(f"no {VS_SYSCTL}: the kernel has no IPVS here (modprobe ip_vs)",
                              code=errno.ENOENT)
    out: dict[str, Any] = {}
    for path in sorted(VS_SYSCTL.glob("sync_*")):
        words = path.read_text().split()
        nums = tuple(int(w) for w in words if w.lstrip("-").isdigit())
        out[path.name] = nums if len(nums) > 1 else (nums[0] if nums else " ".join(words))
    return out


# -- the sync daemons over IPVS generic netlink (linux/ip_vs.h) -------------------------
# Only the three daemon commands; plugins never share modules (the ipvs plugin has its own).

_CMD_NEW_DAEMON, _CMD_DEL_DAEMON, _CMD_GET_DAEMON = 9, 10, 11
_ATTR_DAEMON = 3
_D_STATE, _D_IFN, _D_SYNCID, _D_MAXLEN = 1, 2, 3, 4
_D_GROUP, _D_GROUP6, _D_PORT, _D_TTL = 5, 6, 7, 8
_STATES = {"master": 1, "backup": 2}
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLA_F_NESTED = 0x8000


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes(-n % 4)


def _nlmsgs(data: bytes, what: str) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload) of each netlink message in one received datagram.

    :raises SyncKernelError: a message that does not fit its datagram.
    """
    off = 0
    while off + 16 <= len(data):
        n, kind, _f, seq, _pid = struct.unpack_from("=IHHII", data, off)
        if n < 16 or off + n > len(data):
            raise SyncKernelError(f"{what}: malformed netlink answer")
        yield kind, seq, data[off + 16:off + n]
        off += (n + 3) & ~3


def _nla_walk(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        n, kind = struct.unpack_from("=HH", data, off)
        if n < 4 or off + n > len(data):
            raise SyncKernelError(f"malformed IPVS netlink attribute at byte {off}")
        out[kind & ~_NLA_F_NESTED] = data[off + 4:off + n]
        off += (n + 3) & ~3
    return out


#: Seconds to wait for the kernel's answer to one sync-daemon command.
ANSWER_TIMEOUT_S = 10.0
#: Seconds to wait for the answer to a stop before asking whether the daemon is gone:
#: Linux sends no answer when the daemon's thread was stopped before it ever ran (a stop
#: right after a start; seen on 6.1 under UML, where it left the caller blocked forever).
STOP_ANSWER_S = 1.0


class SyncDaemons:
    """The kernel's IPVS sync daemons in the current network namespace (generic netlink).

    :raises SyncKernelError: the kernel has no IPVS (``modprobe ip_vs``).
    """

    def __init__(self, *, timeout: float = ANSWER_TIMEOUT_S) -> None:
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.generic.ipvs import IPVSSocket

        try:
            probe = IPVSSocket()
        except NetlinkError as exc:
            raise SyncKernelError("the kernel has no IPVS generic-netlink family "
                                  "(modprobe ip_vs)", code=exc.code) from None
        try:
            self.family = int(probe.prid)
        finally:
            probe.close()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)  # NETLINK_GENERIC
        self.sock.bind((0, 0))
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self._seq = 0

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> SyncDaemons:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, cmd: int, flags: int, payload: bytes, what: str) -> list[dict[int, bytes]]:
        self._seq += 1
        body = struct.pack("=BBH", cmd, 1, 0) + payload
        self.sock.send(struct.pack("=IHHII", 16 + len(body), self.family,
                                   _NLM_F_REQUEST | flags, self._seq, 0) + body)
        out: list[dict[int, bytes]] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                raise NoAnswerError(f"{what}: no answer from the kernel within "
                                      f"{self.timeout:g} s") from None
            for kind, seq, msg in _nlmsgs(data, what):
                if seq != self._seq:
                    continue
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", msg)[0] if len(msg) >= 4 else 0
                    if code:
                        raise SyncKernelError(f"{what}: {os.strerror(code)}", code=code)
                    return out
                out.append(_nla_walk(msg[4:]))

    def daemons(self) -> list[dict[str, Any]]:
        """The running daemons: state, interface, syncid, maxlen, port, group, ttl."""
        out = []
        for top in self._call(_CMD_GET_DAEMON, _NLM_F_DUMP, b"", "list sync daemons"):
            if _ATTR_DAEMON not in top:
                continue
            a = _nla_walk(top[_ATTR_DAEMON])

            def num(kind: int, fmt: str, a: dict[int, bytes] = a) -> int:
                v = a.get(kind, b"")
                return int(struct.unpack_from(fmt, v)[0]) if len(v) >= struct.calcsize(fmt) else 0
            d: dict[str, Any] = {
                "state": {1: "master", 2: "backup"}.get(num(_D_STATE, "=I"), "?"),
                "interface": a.get(_D_IFN, b"").split(b"\0", 1)[0].decode(errors="replace"),
                "syncid": num(_D_SYNCID, "=I"), "maxlen": num(_D_MAXLEN, "=H"),
                "port": num(_D_PORT, "=H"), "ttl": num(_D_TTL, "=B"),
            }
            if len(a.get(_D_GROUP, b"")) >= 4:
                d["group"] = socket.inet_ntop(socket.AF_INET, a[_D_GROUP][:4])
            elif len(a.get(_D_GROUP6, b"")) >= 16:
                d["group"] = socket.inet_ntop(socket.AF_INET6, a[_D_GROUP6][:16])
            out.append(d)
        return out

    def start_daemon(self, state: str, *, interface: str, syncid: int = 0, maxlen: int = 0,
                     group: str = "", port: int = 0, ttl: int = 0) -> None:
        """Start the ``master`` or ``backup`` daemon (0 / "" = the kernel's default).

        :raises SyncKernelError: e.g. EEXIST (already running), ENODEV (no interface).
        """
        body = (_nla(_D_STATE, struct.pack("=I", _STATES[state]))
                + _nla(_D_IFN, interface.encode() + b"\0")
                + _nla(_D_SYNCID, struct.pack("=I", syncid)))
        if maxlen:
            body += _nla(_D_MAXLEN, struct.pack("=H", maxlen))
        if group:
            ip = ipaddress.ip_address(group)
            body += _nla(_D_GROUP6 if ip.version == 6 else _D_GROUP, ip.packed)
        if port:
            body += _nla(_D_PORT, struct.pack("=H", port))
        if ttl:
            body += _nla(_D_TTL, bytes([ttl]))
        self._call(_CMD_NEW_DAEMON, _NLM_F_ACK, _nla(_ATTR_DAEMON | _NLA_F_NESTED, body),
                   f"start the {state} sync daemon on {interface!r} syncid {syncid}")

    def stop_daemon(self, state: str) -> None:
        """Stop the ``master`` or ``backup`` daemon.

        :raises SyncKernelError: ESRCH when it is not running.
        """
        body = _nla(_D_STATE, struct.pack("=I", _STATES[state]))
        what = f"stop the {state} sync daemon"
        self.sock.settimeout(min(self.timeout, STOP_ANSWER_S))
        try:
            self._call(_CMD_DEL_DAEMON, _NLM_F_ACK, _nla(_ATTR_DAEMON | _NLA_F_NESTED, body),
                       what)
        except NoAnswerError:
            # No answer: the kernel stopped a thread that had not run yet (kthread_stop
            # returns -EINTR, and netlink sends no ack for -EINTR). The dump says whether
            # the daemon is gone; a late ack has an older sequence number and is skipped.
            if any(d["state"] == state for d in self.daemons()):
                raise
            log.debug("%s: the kernel did not answer, but the daemon is gone", what)
        finally:
            self.sock.settimeout(self.timeout)


def set_sync_knobs(*, kernel_maxlen: int, sync_threshold: tuple[int, int],
                   sock_size: int | None = None, kernel: SyncDaemons | None = None) -> None:
    """Make the local master daemon send soon after a connection is established.

    Writes ``net.ipv4.vs.sync_threshold`` in the current network namespace. The datagram
    size ``kernel_maxlen`` is not a sysctl but a parameter of the running master daemon
    (``ipvsadm --sync-maxlen``, genetlink ``IPVS_DAEMON_ATTR_SYNC_MAXLEN``): when a master
    runs with another maxlen it is restarted with the same interface, syncid, group, port
    and TTL (the at most one buffered datagram it held is lost; the connections are synced
    again at their next threshold packet). Without a running master nothing else changes:
    start the daemons with :func:`ensure_daemons`.

    :param kernel_maxlen: the master's ``sync_maxlen`` in bytes (1 = one entry per datagram).
    :param sync_threshold: ``(threshold, period)``: sync at the threshold-th packet of a
        connection, then every period packets.
    :param sock_size: ``net.ipv4.vs.sync_sock_size`` in bytes (None: leave it): the backup
        socket's receive buffer becomes twice this (capped by ``net.core.rmem_max``), so
        a burst of injected datagrams is not dropped; it applies to daemons started later.
    :param kernel: a :class:`SyncDaemons` to use (one is opened and closed otherwise).
    :raises ConfigError: a value the kernel would refuse.
    :raises SyncKernelError: no IPVS, or the kernel refused.
    """
    _check_knobs(kernel_maxlen, sync_threshold)
    _write_sysctl("sync_threshold", f"{sync_threshold[0]} {sync_threshold[1]}")
    if sock_size is not None:
        if sock_size < 0:
            raise ConfigError(f"must be >= 0 bytes (0: the system default), got {sock_size}",
                              key="connsync.sync_sock_size")
        _write_sysctl("sync_sock_size", str(sock_size))
    own = kernel is None
    k = kernel if kernel is not None else SyncDaemons()
    try:
        for d in k.daemons():
            if d["state"] == "master" and d["maxlen"] != kernel_maxlen:
                log.info("restarting the master sync daemon on %s: maxlen %s -> %d",
                         d["interface"], d["maxlen"], kernel_maxlen)
                k.stop_daemon("master")
                k.start_daemon("master", interface=d["interface"], syncid=d["syncid"],
                               maxlen=kernel_maxlen, group=str(d.get("group", "")),
                               port=int(d["port"]), ttl=int(d.get("ttl", 0)))
    finally:
        if own:
            k.close()


def ensure_daemons(interface: str, *, syncid: int, kernel_maxlen: int,
                   group: str = SYNC_GROUP4, port: int = SYNC_PORT, ttl: int = 1,
                   kernel: SyncDaemons | None = None) -> list[str]:
    """Run the master and the backup sync daemon together on ``interface``.

    A daemon already running with exactly these settings is left alone; one running with
    other settings is restarted; a missing one is started. The backup gets the largest
    receive size the kernel allows (:func:`backup_maxlen_for`; its default is the
    interface MTU minus headers): it still takes any datagram a master sends, and
    conn-sync can inject 255 entries per datagram instead of 40 (a sixth of the sends).

    :param interface: the sync interface (it must exist and hold an address).
    :param syncid: the sync id both daemons use (0..255; a backup with 0 accepts any).
    :param kernel_maxlen: the master's datagram size (see :func:`set_sync_knobs`).
    :param ttl: the master's multicast TTL.
    :returns: what was done, e.g. ``["started master", "kept backup"]``.
    :raises InterfaceError: no such interface.
    :raises SyncKernelError: the kernel refused (its message names the daemon).
    """
    if not 0 <= syncid <= 255:
        raise ConfigError(f"must be 0..255, got {syncid}", key="connsync.syncid")
    _check_knobs(kernel_maxlen, (0, 0))
    _ifindex(interface)
    own = kernel is None
    k = kernel if kernel is not None else SyncDaemons()
    done: list[str] = []
    try:
        running = {d["state"]: d for d in k.daemons()}
        for state, maxlen in (("backup", backup_maxlen_for(group)),
                              ("master", kernel_maxlen)):
            d = running.get(state)
            if d is not None:
                same = (d["interface"] == interface and d["syncid"] == syncid
                        and d["port"] == port and d.get("group", group) == group
                        and (maxlen == 0 or d["maxlen"] == maxlen))
                if same:
                    done.append(f"kept {state}")
                    continue
                k.stop_daemon(state)
            k.start_daemon(state, interface=interface, syncid=syncid, maxlen=maxlen,
                           group=group, port=port, ttl=ttl if state == "master" else 0)
            done.append(f"{'restarted' if d is not None else 'started'} {state}")
    except OSError as exc:
        raise SyncKernelError(f"sync daemons on {interface!r}: {exc}",
                              code=exc.errno or 0) from None
    finally:
        if own:
            k.close()
    log.info("sync daemons on %s syncid %d: %s", interface, syncid, ", ".join(done))
    return done


def backup_maxlen(kernel: SyncDaemons | None = None) -> int | None:
    """The running backup daemon's receive size in bytes (the longest datagram it takes),
    or None when no backup daemon runs in this network namespace."""
    own = kernel is None
    k = kernel if kernel is not None else SyncDaemons()
    try:
        for d in k.daemons():
            if d["state"] == "backup":
                return int(d["maxlen"]) or BACKUP_MAXLEN_DEFAULT
        return None
    finally:
        if own:
            k.close()


# -- interfaces -------------------------------------------------------------------------


def _ifindex(interface: str) -> int:
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        raise InterfaceError(f"no interface {interface!r} in this network namespace",
                             code=errno.ENODEV) from None


def interface_address(interface: str) -> str:
    """The (first) IPv4 address of ``interface``.

    :raises InterfaceError: no such interface, or it has no IPv4 address.
    """
    _ifindex(interface)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("256s", interface.encode()[:15])
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InterfaceError(f"interface {interface!r} has no IPv4 address (the sync "
                                     "daemons and the injector send from it)",
                                     code=exc.errno) from None
            raise InterfaceError(f"interface {interface!r}: {exc.strerror}",
                                 code=exc.errno or 0) from None
    return socket.inet_ntoa(res[20:24])


# -- capture ----------------------------------------------------------------------------


def _bpf(program: list[tuple[int, str | int, str | int, int]]) -> bytes:
    """Assemble ``(code, jt, jf, k)`` rows whose jumps name labels (str) or are 0."""
    labels = {"accept": len(program), "drop": len(program) + 1}
    rows = [*program, (_RET_K, 0, 0, 0x40000), (_RET_K, 0, 0, 0)]
    out = b""
    for i, (code, jt, jf, k) in enumerate(rows):
        jt_off = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf_off = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("=HBBI", code, jt_off, jf_off, k & 0xFFFFFFFF)
    return out


def sync_filter(group: str, port: int) -> bytes:
    """Classic BPF for a ``SOCK_DGRAM`` packet socket (data starts at the IP header).

    Keeps outgoing, unfragmented UDP to ``group``:``port``; everything else never reaches
    user space.
    """
    ip = ipaddress.ip_address(group)
    prog: list[tuple[int, str | int, str | int, int]] = [
        (_LD_W_ABS, 0, 0, _SKF_AD_OFF + _SKF_AD_PKTTYPE),
        (_JEQ_K, 0, "drop", PACKET_OUTGOING),
        (_LD_W_ABS, 0, 0, _SKF_AD_OFF + _SKF_AD_PROTOCOL),
    ]
    if ip.version == 4:
        prog += [
            (_JEQ_K, 0, "drop", ETH_P_IP),
            (_LD_B_ABS, 0, 0, 9), (_JEQ_K, 0, "drop", socket.IPPROTO_UDP),
            (_LD_H_ABS, 0, 0, 6), (_JSET_K, "drop", 0, 0x1FFF),   # a fragment: no UDP header
            (_LD_W_ABS, 0, 0, 16), (_JEQ_K, 0, "drop", int(ip)),
            (_LDX_B_MSH, 0, 0, 0), (_LD_H_IND, 0, 0, 2), (_JEQ_K, "accept", "drop", port),
        ]
    else:
        words = struct.unpack("!4I", ip.packed)
        prog += [(_JEQ_K, 0, "drop", ETH_P_IPV6),
                 (_LD_B_ABS, 0, 0, 6), (_JEQ_K, 0, "drop", socket.IPPROTO_UDP)]
        for i, w in enumerate(words):
            prog += [(_LD_W_ABS, 0, 0, 24 + 4 * i), (_JEQ_K, 0, "drop", w)]
        prog += [(_LD_H_ABS, 0, 0, 42), (_JEQ_K, "accept", "drop", port)]
    return _bpf(prog)


def udp_payload(packet: bytes, *, group: bytes, port: int) -> bytes | None:
    """The UDP payload of an IPv4/IPv6 packet to ``group``:``port``, else ``None``."""
    if len(packet) < 1:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20 and len(group) == 4:
        ihl = (packet[0] & 0x0F) * 4
        if (ihl < 20 or packet[9] != socket.IPPROTO_UDP or packet[16:20] != group
                or struct.unpack_from("!H", packet, 6)[0] & 0x3FFF):  # MF or an offset
            return None
        udp = ihl
    elif version == 6 and len(packet) >= 40 and len(group) == 16:
        if packet[6] != socket.IPPROTO_UDP or packet[24:40] != group:
            return None
        udp = 40
    else:
        return None
    if len(packet) < udp + 8:
        return None
    dport, length = struct.unpack_from("!2xHH", packet, udp)
    if dport != port or length < 8 or udp + length > len(packet):
        return None
    return packet[udp + 8:udp + length]


class Capture:
    """The datagrams the local master sync daemon sends on ``interface``.

    An ``AF_PACKET``/``SOCK_DGRAM`` socket (no link header, so any link type) bound to the
    interface with a classic BPF filter: only ``PACKET_OUTGOING`` UDP to ``group``:``port``
    reaches user space, and :meth:`read` checks each packet again before it strips the IP
    and UDP headers. Drive it with ``loop.add_reader(capture.fileno(), ...)``.

    The socket has a TPACKET_V2 receive ring (``ring``, default on): the kernel writes each
    packet into a frame of memory shared with this process and hands it over at once, so
    a burst costs no system call per datagram (with the master's ``sync_maxlen`` 1 every
    entry is its own datagram). TPACKET_V3 would pack frames tighter but hands a block
    over only when it is full or its timer expires (~1 ms more lag when quiet). Frames
    are sized for ``max_datagram`` bytes of UDP payload (the master's ``sync_maxlen``);
    a longer datagram is counted in ``capture.dropped.truncated`` and logged. The ring
    holds ``rcvbuf`` bytes. A kernel that refuses the ring gets one ``recvfrom`` per
    datagram, as with ``ring=False``.

    Injected datagrams are never captured: their looped-back copy is ``PACKET_LOOPBACK``
    and, with TTL 0, no copy is transmitted.

    Counters: ``capture.datagrams``, ``capture.bytes``, ``capture.dropped.kernel`` (the
    socket's receive queue or ring overflowed), ``capture.dropped.foreign`` (a packet that
    passed the filter but is not a sync datagram: never expected),
    ``capture.dropped.truncated`` (longer than a ring frame).
    """

    def __init__(self, interface: str, *, port: int = SYNC_PORT, group: str = SYNC_GROUP4,
                 rcvbuf: int = 8 << 20, ring: bool = True, max_datagram: int = 1500) -> None:
        self.interface = interface
        self.port = port
        self.group = group
        self._group = ipaddress.ip_address(group).packed
        self.rcvbuf = rcvbuf
        self.sock: socket.socket | None = None
        #: use a TPACKET_V2 ring (False: one recvfrom per datagram)
        self.ring = ring
        # a frame holds its header and one datagram with its IP and UDP headers
        self.frame_size = 1 << max(11, (_TP2_DATA + 48 + max_datagram - 1).bit_length())
        self.block_size = max(self.frame_size, 1 << 16)
        self._per_block = self.block_size // self.frame_size
        self.frame_nr = max(2, rcvbuf // self.block_size) * self._per_block
        self._ring: mmap.mmap | None = None
        self._frame = 0
        self.counters: dict[str, int] = {"capture.datagrams": 0, "capture.bytes": 0,
                                         "capture.dropped.kernel": 0,
                                         "capture.dropped.foreign": 0,
                                         "capture.dropped.truncated": 0}

    def open(self) -> None:
        """Open the socket; datagrams sent from now on are captured.

        :raises InterfaceError: no such interface.
        :raises SyncKernelError: the socket cannot be opened (e.g. not root).
        """
        ifindex = _ifindex(self.interface)
        try:
            # protocol 0: nothing is queued before the filter is attached and bound
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        except OSError as exc:
            raise SyncKernelError(f"capture on {self.interface!r}: AF_PACKET socket: "
                                  f"{exc.strerror} (needs CAP_NET_RAW)",
                                  code=exc.errno or 0) from None
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            prog = sync_filter(self.group, self.port)
            cbuf = ctypes.create_string_buffer(prog, len(prog))  # the kernel copies it
            fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(cbuf))
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            if self.ring:
                self._ring = self._map_ring(s)
            s.bind((self.interface, ETH_P_ALL, 0, 0, b""))
            s.setblocking(False)
            s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # reset the kernel's counters
        except OSError as exc:
            self._unmap()
            s.close()
            raise SyncKernelError(f"capture on {self.interface!r} (ifindex {ifindex}): "
                                  f"{exc.strerror}", code=exc.errno or 0) from None
        self.sock = s
        log.debug("capturing sync datagrams on %s to %s:%d", self.interface, self.group,
                  self.port)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._unmap()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @property
    def mode(self) -> str:
        """How datagrams are read: "ring" or "recvfrom" ("" until open)."""
        if self.sock is None:
            return ""
        return "ring" if self._ring is not None else "recvfrom"

    def _map_ring(self, s: socket.socket) -> mmap.mmap | None:
        """Give the socket a TPACKET_V2 receive ring and map it; None (one recvfrom per
        datagram) when this kernel refuses."""
        try:
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack(  # struct tpacket_req
                "=4I", self.block_size, self.frame_nr // self._per_block, self.frame_size,
                self.frame_nr))
            ring = mmap.mmap(s.fileno(), self.frame_nr * self.frame_size,
                             mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            log.info("capture on %s: no TPACKET_V2 ring (%s): one receive call per datagram",
                     self.interface, exc.strerror)
            return None
        self._frame = 0
        return ring

    def _unmap(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def __enter__(self) -> Capture:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The socket's descriptor, for ``loop.add_reader``."""
        if self.sock is None:
            raise SyncKernelError("capture is not open")
        return self.sock.fileno()

    def read(self) -> list[bytes]:
        """Drain what is queued (at most :data:`READ_BATCH`): the sync UDP payloads, in order.

        Never blocks; returns ``[]`` when nothing is queued.
        """
        if self.sock is None:
            raise SyncKernelError("capture is not open")
        out: list[bytes] = []
        if self._ring is not None:
            # the drop count (a system call: ~90 us in UML, at every wake-up) only when
            # drops are possible: a frame says the kernel lost packets since the last
            # read of it, or the ring was at least half full (drops happen only when it
            # is full, and may have no later frame to flag them yet)
            taken, losing = self._read_ring(out)
            if not losing and taken < min(self.frame_nr, READ_BATCH) // 2:
                return out
        else:
            for _ in range(READ_BATCH):
                try:
                    packet, addr = self.sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                self._keep(out, packet, addr[2])
        _packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET,
                                                                   PACKET_STATISTICS, 8))
        if drops:
            self.counters["capture.dropped.kernel"] += drops
            log.warning("capture on %s: the kernel dropped %d datagrams (receive queue full)",
                        self.interface, drops)
        return out

    def _keep(self, out: list[bytes], packet: bytes, pkttype: int) -> None:
        c = self.counters
        payload = (udp_payload(packet, group=self._group, port=self.port)
                   if pkttype == PACKET_OUTGOING else None)
        if payload is None:
            c["capture.dropped.foreign"] += 1
            log.debug("capture: dropped a foreign packet (%d bytes, type %d)",
                      len(packet), pkttype)
            return
        c["capture.datagrams"] += 1
        c["capture.bytes"] += len(payload)
        out.append(payload)

    def _read_ring(self, out: list[bytes]) -> tuple[int, bool]:
        """Take the frames the kernel has handed over, in ring order, giving each back;
        at most :data:`READ_BATCH` (the fd stays readable for the rest).

        :returns: how many frames were taken, and whether one was flagged
            ``TP_STATUS_LOSING``."""
        ring = self._ring
        assert ring is not None
        c = self.counters
        per_block, fsize, block, nr = (self._per_block, self.frame_size, self.block_size,
                                       self.frame_nr)
        i = self._frame
        taken = losing = 0
        for _ in range(READ_BATCH):
            off = (i // per_block) * block + (i % per_block) * fsize
            status, length, snaplen, _mac, net = _TP2_HDR.unpack_from(ring, off)
            if not status & TP_STATUS_USER:
                break
            taken += 1
            losing |= status & TP_STATUS_LOSING
            if snaplen < length:
                c["capture.dropped.truncated"] += 1
                log.warning("capture on %s: a %d-byte sync datagram did not fit the ring's "
                            "%d-byte frames and is lost (start the capture with max_datagram "
                            ">= the master's sync_maxlen)", self.interface, length, fsize)
            else:
                self._keep(out, ring[off + net:off + net + snaplen],
                           ring[off + _TP2_SLL_PKTTYPE])
            struct.pack_into("=I", ring, off, TP_STATUS_KERNEL)  # give the frame back
            i = (i + 1) % nr
        self._frame = i
        return taken, bool(losing)


# -- injection --------------------------------------------------------------------------


class Injector:
    """Hands datagrams to the local backup sync daemon, as if a peer's master sent them.

    A UDP socket sending to ``group``:``port`` out of ``interface`` with multicast loop on
    (the looped-back copy reaches the backup socket, which is bound to the group and that
    interface) and TTL 0 (no copy goes on the wire). The backup then applies each
    datagram exactly like one from the kernel sync protocol.

    Counters: ``inject.datagrams``, ``inject.bytes``, ``inject.dropped.send_failed``.
    """

    def __init__(self, interface: str, *, port: int = SYNC_PORT,
                 group: str = SYNC_GROUP4) -> None:
        self.interface = interface
        self.port = port
        self.group = group
        self.address: str | None = None
        self.sock: socket.socket | None = None
        self.counters: dict[str, int] = {"inject.datagrams": 0, "inject.bytes": 0,
                                         "inject.dropped.send_failed": 0}

    def open(self) -> None:
        """Open the socket.

        :raises InterfaceError: no such interface, or (IPv4) it has no address.
        """
        ifindex = _ifindex(self.interface)
        v6 = ipaddress.ip_address(self.group).version == 6
        if v6:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 0)
            self._dest: tuple[Any, ...] = (self.group, self.port, 0, ifindex)
        else:
            self.address = interface_address(self.interface)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                         socket.inet_aton(self.address))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            self._dest = (self.group, self.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock = s

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Injector:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, datagram: bytes) -> None:
        """Send one sync datagram to the local backup daemon.

        When this returns, the datagram is in the backup socket's receive queue (or counted
        in its drops): the loopback delivery runs inside the send on Linux >= 5.18.

        :raises SyncKernelError: the kernel refused the send (counted).
        """
        if self.sock is None:
            raise SyncKernelError("injector is not open")
        try:
            self.sock.sendto(datagram, self._dest)
        except OSError as exc:
            self.counters["inject.dropped.send_failed"] += 1
            raise SyncKernelError(f"inject on {self.interface!r}: {exc.strerror}",
                                  code=exc.errno or 0) from None
        self.counters["inject.datagrams"] += 1
        self.counters["inject.bytes"] += len(datagram)


# -- commit check -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupQueue:
    """The backup daemon's UDP socket(s), as the kernel's socket diagnostics (or
    ``/proc/net/udp{,6}``) show them.

    :param sockets: UDP sockets bound to the sync port(s) in this network namespace.
    :param rx_queue: bytes waiting in their receive queues (each datagram's kernel size).
    :param drops: datagrams they dropped (receive buffer full), since they were opened.
    :param rcvbuf: their receive buffers in bytes, summed (0: unknown, read from /proc).
    """

    sockets: int
    rx_queue: int
    drops: int
    rcvbuf: int = 0


def _int_file(path: Path) -> int | None:
    """The first integer in a sysctl file, or None when it cannot be read."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def interface_mtu(name: str) -> int | None:
    """The MTU of interface ``name`` in this thread's network namespace (None: no such
    interface, or it cannot be asked)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            got = fcntl.ioctl(s, SIOCGIFMTU, struct.pack("16si", name.encode()[:15], 0))
    except (OSError, UnicodeError):
        return None
    return int(struct.unpack("16si", got)[1])


def sync_ports(port: int = SYNC_PORT) -> range:
    """The ports of the sync daemons' sockets: with ``net.ipv4.vs.sync_ports`` = n the
    daemons run n threads on ports ``port`` .. ``port + n - 1`` (read when they start, so
    a caller may read this once per daemon start and pass it on)."""
    return range(port, port + max(1, _int_file(VS_SYSCTL / "sync_ports") or 1))


def _proc_udp(lines: Iterable[str], ports: range) -> tuple[int, int, int]:
    sockets = rx = drops = 0
    for line in lines:
        f = line.split()
        if len(f) < 13 or ":" not in f[1] or ":" not in f[4]:
            continue
        try:
            local_port = int(f[1].rsplit(":", 1)[1], 16)
            if local_port not in ports:
                continue
            rx += int(f[4].split(":")[1], 16)
            drops += int(f[-1])
        except ValueError:
            continue
        sockets += 1
    return sockets, rx, drops


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
#: inet_diag_req_v2: family, protocol, extensions wanted, pad, states, inet_diag_sockid
_DIAG_REQ = struct.Struct("=BBBxI48x")
_INET_DIAG_SKMEMINFO = 7  # enum inet_diag_attrs (linux/inet_diag.h)
_SK_MEMINFO_RCVBUF, _SK_MEMINFO_DROPS = 1, 8
#: inet_diag_msg: 72 bytes; the source port at 4 (big-endian), the receive queue at 56
_DIAG_MSG_LEN = 72
_U16_BE = struct.Struct(">H")
_U32 = struct.Struct("=I")
#: whether this kernel answers UDP socket diagnostics (None: not asked yet); without the
#: ``udp_diag`` module (or in an old kernel) ``/proc/net/udp`` is read instead
_diag_works: bool | None = None


#: per thread: (its network namespace's inode, its socket-diagnostics socket, last seq)
_diag_local = threading.local()


def _diag_socket() -> tuple[socket.socket, int]:
    """This thread's socket-diagnostics netlink socket and the next request's sequence
    number. Kept between calls (a look at the backup socket runs after every injection
    round: a socket made, set up and closed per look cost ~10 system calls more, ~90 us
    each in UML); made again when the thread has entered another network namespace."""
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    cached = getattr(_diag_local, "sock", None)
    if cached is not None and cached[0] == ino:
        seq = cached[2] % 0xFFFFFFFF + 1
        _diag_local.sock = (ino, cached[1], seq)
        return cached[1], seq
    if cached is not None:
        cached[1].close()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_SOCK_DIAG)
    # blocking, with a receive timeout in the kernel: no poll() before each recv
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
    _diag_local.sock = (ino, sock, 1)
    return sock, 1


def _diag_forget() -> None:
    """Drop this thread's diagnostics socket (after an error: no stale answer is read)."""
    cached = getattr(_diag_local, "sock", None)
    _diag_local.sock = None
    if cached is not None:
        cached[1].close()


def _diag_udp(family: int, ports: range) -> tuple[int, int, int, int]:
    """(sockets, rx_queue, drops, rcvbuf) of the UDP sockets bound to ``ports`` in this
    thread's namespace, from one socket-diagnostics dump (a send and a receive or two on
    the thread's kept socket, where reading ``/proc/net/udp`` takes a hundred system
    calls and formats every socket as text). pyroute2's ``DiagSocket`` can send the same
    request, but its ``get_sock_stats`` is marked work in progress, returns the memory
    counters as hex text, and builds a socket object per call: this runs after every
    injection round.

    :raises OSError: the kernel refused or did not answer within a second.
    """
    sock, seq = _diag_socket()
    try:
        body = _DIAG_REQ.pack(family, socket.IPPROTO_UDP, 1 << (_INET_DIAG_SKMEMINFO - 1),
                              0xFFFFFFFF)
        sock.send(struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY,
                              _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body)
        sockets = rx = drops = rcvbuf = 0
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:  # SO_RCVTIMEO ran out
                raise OSError(errno.ETIMEDOUT, "socket diagnostics: no answer") from None
            for kind, got_seq, msg in _nlmsgs(data, "socket diagnostics"):
                if got_seq != seq:
                    continue  # not this request's
                if kind == _NLMSG_DONE:
                    return sockets, rx, drops, rcvbuf
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", msg)[0] if len(msg) >= 4 else 0
                    raise OSError(code or errno.EIO, f"socket diagnostics: {os.strerror(code)}")
                if kind != SOCK_DIAG_BY_FAMILY or len(msg) < _DIAG_MSG_LEN \
                        or _U16_BE.unpack_from(msg, 4)[0] not in ports:
                    continue
                sockets += 1
                rx += _U32.unpack_from(msg, 56)[0]
                mem = _nla_walk(msg[_DIAG_MSG_LEN:]).get(_INET_DIAG_SKMEMINFO, b"")
                if len(mem) >= 36:
                    rcvbuf += _U32.unpack_from(mem, 4 * _SK_MEMINFO_RCVBUF)[0]
                    drops += _U32.unpack_from(mem, 4 * _SK_MEMINFO_DROPS)[0]
    except OSError:
        _diag_forget()
        raise


def backup_queue(*, port: int = SYNC_PORT, group: str | None = None,
                 ports: range | None = None) -> BackupQueue:
    """Read the backup daemon's receive queue and drops (this thread's network namespace).

    Every UDP socket bound to the sync port counts: nothing but the backup daemon should
    bind it in a director's namespace. Asked through socket diagnostics (``udp_diag``),
    else read from ``/proc/net/udp{,6}``.

    :param group: the sync group; its family picks ``udp`` or ``udp6`` (None: both).
    :param ports: the ports to count (default: from ``net.ipv4.vs.sync_ports``).
    """
    global _diag_works
    ports = sync_ports(port) if ports is None else ports
    names: tuple[str, ...]
    if group is None:
        names = ("udp", "udp6")
    else:
        names = ("udp6",) if ipaddress.ip_address(group).version == 6 else ("udp",)
    if _diag_works is not False:
        try:
            diag = [_diag_udp(socket.AF_INET6 if n == "udp6" else socket.AF_INET, ports)
                    for n in names]
        except OSError as exc:
            if _diag_works is None:
                log.debug("socket diagnostics unavailable (%s): reading /proc/net/udp", exc)
                _diag_works = False
            else:  # it worked before: a passing failure, read /proc this time
                log.debug("socket diagnostics failed (%s): reading /proc/net/udp", exc)
        else:
            _diag_works = True
            return BackupQueue(sockets=sum(g[0] for g in diag),
                               rx_queue=sum(g[1] for g in diag),
                               drops=sum(g[2] for g in diag), rcvbuf=sum(g[3] for g in diag))
    total = [0, 0, 0]
    # /proc/net is the namespace of the process's main thread; thread-self/net is this
    # thread's (they differ when a thread entered another namespace with setns)
    for name in names:
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                next(f, None)
                got = _proc_udp(f, ports)
        except FileNotFoundError:
            continue
        total = [a + b for a, b in zip(total, got, strict=True)]
    return BackupQueue(sockets=total[0], rx_queue=total[1], drops=total[2])


def backup_capacity() -> int:
    """Bytes the backup daemon's socket queues before it drops (its receive buffer, counted
    as ``/proc/net/udp`` counts ``rx_queue``: each datagram's kernel size), in this thread's
    network namespace.

    ``net.ipv4.vs.sync_sock_size`` > 0 sets it when the daemon starts (the kernel doubles
    it, capped at twice ``net.core.rmem_max``); else it is ``net.core.rmem_default``. Where
    a sysctl cannot be read, Linux's default (212,992 bytes) is assumed.
    """
    default = _int_file(Path("/proc/sys/net/core/rmem_default")) or 212_992
    size = _int_file(VS_SYSCTL / "sync_sock_size") or 0
    if size <= 0:
        return default
    rmem_max = _int_file(Path("/proc/sys/net/core/rmem_max")) or default
    return max(2 * min(size, rmem_max), 2304)  # SOCK_MIN_RCVBUF


def datagram_truesize(length: int) -> int:
    """What one sync datagram of ``length`` bytes (UDP payload) counts against the backup
    socket's receive buffer, estimated from above: the kernel's allocation for the packet
    (headers included) rounded up to a power of two, plus the socket buffer's own struct."""
    need = length + 28 + 14 + 320  # IP + UDP, Ethernet, skb_shared_info
    return (1 << (need - 1).bit_length()) + 768


#: How long after an empty reading the last datagram taken off the queue is surely
#: applied: the backup thread dequeues a datagram before it applies it (tens of
#: microseconds for 40 entries on hardware; the plugin injects up to 255 per datagram,
#: about 1.3 ms in UML).
SETTLE_S = 0.002
#: Poll interval while the queue is not empty.
POLL_S = 0.001


async def committed(*, port: int = SYNC_PORT, timeout: float,
                    drops_before: int | None = None, group: str = SYNC_GROUP4,
                    ports: range | None = None,
                    look: Callable[[], BackupQueue] | None = None,
                    interrupt: asyncio.Event | None = None) -> bool:
    """True once the local backup daemon has consumed everything injected so far.

    :meth:`Injector.send` returns with the datagram in the backup socket's receive queue
    (or in its drops), and the backup kernel thread empties that queue, applying each
    datagram right after taking it. So once the queue is seen empty, every datagram
    injected before was taken off it, and :data:`SETTLE_S` later the last of them is
    applied; the queue is then looked at once more (a loaded kernel may deliver the
    multicast copy in a softirq after the send returned), and if it is still empty every
    entry injected so far is in the connection table. Two looks when the daemon kept up;
    while the queue holds datagrams it is looked at every :data:`POLL_S`. Datagrams the
    socket dropped (its buffer was full) are lost: pass the :class:`BackupQueue` ``drops``
    read before injecting as ``drops_before``, and this returns False when it grew.

    :param port: the sync port.
    :param timeout: seconds to wait at most.
    :param drops_before: the backup socket's drops before the injection, to detect loss.
    :param group: the sync group (its family says where the backup socket is listed).
    :param ports: the daemons' ports (default: :func:`sync_ports` of ``port``, a sysctl
        read per call).
    :param look: reads the backup socket instead of :func:`backup_queue` with ``port``,
        ``group`` and ``ports`` (a caller that also counts what each look says).
    :param interrupt: the wait ends, with False, as soon as this event is set (the
        injection stops waiting when more entries arrive).
    :returns: True when committed; False on timeout, loss, no backup daemon (logged), or
        ``interrupt``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if look is None:
        ports = sync_ports(port) if ports is None else ports
        look = functools.partial(backup_queue, port=port, group=group, ports=ports)
    settled = False
    while True:
        if interrupt is not None and interrupt.is_set():
            return False
        q = look()
        if q.sockets == 0:
            limited.warning(("no_socket", port), "commit check: no UDP socket on port %d "
                            "(is the backup sync daemon running?)", port)
            return False
        if drops_before is not None and q.drops > drops_before:
            limited.warning(("drops", port), "commit check: the backup daemon dropped %d "
                            "datagrams (receive buffer full): resend them",
                            q.drops - drops_before)
            return False
        if q.rx_queue == 0:
            if settled:
                return True
            # the last datagram taken is being applied; then look once more, since a
            # datagram's delivery may still be pending in a softirq
            await _pause(SETTLE_S, interrupt)
            settled = True
            continue
        settled = False
        if loop.time() >= deadline:
            return False
        await _pause(POLL_S, interrupt)


async def _pause(seconds: float, interrupt: asyncio.Event | None) -> None:
    """Sleep ``seconds``, or less if ``interrupt`` gets set meanwhile."""
    if interrupt is None:
        await asyncio.sleep(seconds)
        return
    try:
        async with asyncio.timeout(seconds):
            await interrupt.wait()
    except TimeoutError:
        pass
