"""The IPVS table as plain values, and the diff between two tables. Standard library only.

A :class:`Table` maps a :class:`ServiceKey` to an :class:`Entry` (the service's settings and
its real servers). The desired table is built from configuration and the cluster's state
(:mod:`clusterbus.plugins.ipvs.model`); the kernel's table is read by a dump
(:mod:`clusterbus.plugins.ipvs.kernel`). :func:`diff` returns the smallest list of
operations that turns one into the other: it never flushes, and every ``set`` carries the
complete object (the kernel resets any field a partial set leaves out).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "AF_INET", "AF_INET6", "PROTOCOLS", "PROTOCOL_NAMES", "FORWARD", "FORWARD_NAMES",
    "SVC_F_PERSISTENT", "SVC_F_ONEPACKET", "SVC_F_SCHED1", "SVC_F_SCHED2", "SVC_F_SCHED3",
    "ServiceKey", "Service", "Dest", "Entry", "Table", "Op", "OpKind", "Plan", "diff",
    "apply_ops", "copy_table",
]

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

#: Protocol name -> IP protocol number.
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}

#: Forwarding method name -> IP_VS_CONN_F_* (linux/ip_vs.h); "local" and "bypass" are
#: kernel-internal and appear only in dumps of hand-made entries.
FORWARD = {"nat": 0, "local": 1, "tunnel": 2, "dr": 3, "bypass": 4}
FORWARD_NAMES = {v: k for k, v in FORWARD.items()}

# linux/ip_vs.h IP_VS_SVC_F_*
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002  #: kernel-internal, masked out of dumps
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008
SVC_F_SCHED2 = 0x0010
SVC_F_SCHED3 = 0x0020


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """What identifies a virtual service in the kernel.

    Protocol services use ``(af, protocol, addr, port)`` with ``fwmark == 0``; firewall-mark
    services use ``(af, fwmark)`` with ``protocol == 0``, ``addr == ""``, ``port == 0``.
    """

    af: int
    protocol: int = 0
    addr: str = ""
    port: int = 0
    fwmark: int = 0

    def __str__(self) -> str:
        fam = "" if self.af == AF_INET else " (IPv6)"
        if self.fwmark:
            return f"fwmark {self.fwmark}{fam}"
        host = f"[{self.addr}]" if self.af == AF_INET6 else self.addr
        return f"{PROTOCOL_NAMES.get(self.protocol, str(self.protocol))} {host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A virtual service's settings (everything a complete ``set`` carries).

    :param netmask: persistence granularity as a prefix length (32 or 128: per client).
    :param timeout: persistence timeout in seconds (0 when not persistent).
    """

    key: ServiceKey
    scheduler: str
    flags: int = 0
    timeout: int = 0
    netmask: int = 32
    pe_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dest:
    """A real server of one service."""

    af: int
    addr: str
    port: int
    forward: int = FORWARD["nat"]
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0

    @property
    def ident(self) -> tuple[str, int]:
        """What identifies it within its service."""
        return (self.addr, self.port)

    def __str__(self) -> str:
        host = f"[{self.addr}]" if self.af == AF_INET6 else self.addr
        return f"{host}:{self.port}"


@dataclass(slots=True)
class Entry:
    """A service and its real servers by ``(addr, port)``."""

    service: Service
    dests: dict[tuple[str, int], Dest] = field(default_factory=dict)


Table = dict[ServiceKey, Entry]


class OpKind(Enum):
    ADD_SERVICE = "add-service"    #: IPVS_CMD_NEW_SERVICE
    SET_SERVICE = "set-service"    #: IPVS_CMD_SET_SERVICE (complete object)
    DEL_SERVICE = "del-service"    #: IPVS_CMD_DEL_SERVICE (its real servers go with it)
    ADD_DEST = "add-dest"          #: IPVS_CMD_NEW_DEST
    SET_DEST = "set-dest"          #: IPVS_CMD_SET_DEST (complete object)
    DEL_DEST = "del-dest"          #: IPVS_CMD_DEL_DEST


@dataclass(frozen=True, slots=True)
class Op:
    """One kernel operation."""

    kind: OpKind
    service: Service
    dest: Dest | None = None

    def describe(self) -> str:
        """Human text: ``set-dest tcp 10.0.0.1:80 -> 10.0.0.11:80 weight 0``."""
        text = f"{self.kind.value} {self.service.key}"
        if self.dest is not None:
            d = self.dest
            text += (f" -> {d} {FORWARD_NAMES.get(d.forward, d.forward)} weight {d.weight}")
        else:
            text += f" {self.service.scheduler}"
        return text


@dataclass(slots=True)
class Plan:
    """The operations that turn the kernel's table into the desired one, in a safe order."""

    ops: list[Op] = field(default_factory=list)

    @property
    def added(self) -> int:
        return sum(op.kind in (OpKind.ADD_SERVICE, OpKind.ADD_DEST) for op in self.ops)

    @property
    def removed(self) -> int:
        return sum(op.kind in (OpKind.DEL_SERVICE, OpKind.DEL_DEST) for op in self.ops)

    @property
    def changed(self) -> int:
        return sum(op.kind in (OpKind.SET_SERVICE, OpKind.SET_DEST) for op in self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return len(self.ops)


def diff(current: Table, desired: Table, *, prune: bool = True) -> Plan:
    """The operations that make ``current`` equal to ``desired``.

    Order: real servers are removed first, then services; new and changed services come
    before their real servers. A removed service takes its real servers with it, so those
    are not removed one by one. Nothing is ever flushed.

    :param prune: remove services that are in ``current`` but not in ``desired``.
    :returns: the plan (empty when the tables are equal).
    """
    del_dests: list[Op] = []
    del_svcs: list[Op] = []
    svc_ops: list[Op] = []
    dest_ops: list[Op] = []
    if prune:
        for key, entry in current.items():
            if key not in desired:
                del_svcs.append(Op(OpKind.DEL_SERVICE, entry.service))
    for key, want in desired.items():
        have = current.get(key)
        if have is None:
            svc_ops.append(Op(OpKind.ADD_SERVICE, want.service))
            dest_ops.extend(Op(OpKind.ADD_DEST, want.service, d) for d in want.dests.values())
            continue
        if have.service != want.service:
            svc_ops.append(Op(OpKind.SET_SERVICE, want.service))
        for ident, d in have.dests.items():
            if ident not in want.dests:
                del_dests.append(Op(OpKind.DEL_DEST, want.service, d))
        for ident, d in want.dests.items():
            old = have.dests.get(ident)
            if old is None:
                dest_ops.append(Op(OpKind.ADD_DEST, want.service, d))
            elif old != d:
                dest_ops.append(Op(OpKind.SET_DEST, want.service, d))
    return Plan(del_dests + del_svcs + svc_ops + dest_ops)


def apply_ops(table: Table, ops: Iterable[Op]) -> set[ServiceKey]:
    """Change ``table`` in place as the kernel changed when it accepted ``ops``.

    The applier's cache of the kernel's table follows what the kernel acknowledged this
    way, so an event-driven reconcile can diff against it without a dump. Entries are
    created here, never shared with the caller's desired table (which is rebuilt and
    would otherwise alias the cache).

    :param ops: operations the kernel accepted, in the order they were sent.
    :returns: keys whose entry could not be followed (a real server op on a service the
        table does not hold): the caller must not trust them any more.
    """
    lost: set[ServiceKey] = set()
    for op in ops:
        key = op.service.key
        kind = op.kind
        if kind is OpKind.ADD_SERVICE:
            table[key] = Entry(op.service)
        elif kind is OpKind.DEL_SERVICE:
            table.pop(key, None)
            continue
        entry = table.get(key)
        if entry is None:
            lost.add(key)
        elif kind is OpKind.SET_SERVICE:
            entry.service = op.service
        elif op.dest is not None:
            if kind is OpKind.DEL_DEST:
                entry.dests.pop(op.dest.ident, None)
            elif kind in (OpKind.ADD_DEST, OpKind.SET_DEST):
                entry.dests[op.dest.ident] = op.dest
    return lost


def copy_table(table: Table) -> Table:
    """A copy whose entries can be changed without touching ``table``'s."""
    return {k: Entry(e.service, dict(e.dests)) for k, e in table.items()}
