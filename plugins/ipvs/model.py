"""The ``[ipvs]`` configuration: parsed and validated before anything touches the kernel.

Standard library only. :func:`parse` turns the raw TOML table into an :class:`IpvsConfig`
or raises :class:`~clusterbus.errors.ConfigError` naming the file and the key;
:func:`desired_table` turns the config plus the cluster's state (node addresses, which
nodes are down) into the :data:`~clusterbus.plugins.ipvs.table.Table` the kernel should
hold.

Example::

    [[ipvs.virtual_server]]
    address = "10.78.0.100:80"     # or: fwmark = 10 (family = "inet6" for IPv6 marks)
    protocol = "tcp"
    scheduler = "mh"
    scheduler_flags = ["mh-fallback", "mh-port"]
    persistence_timeout = 300
    on_node_down = "quiesce"

      [[ipvs.virtual_server.real_server]]
      address = "10.78.0.11:80"    # or: node = 3 and port = 80
      weight = 1
      forward = "nat"
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clusterbus import ConfigError, Key, between, validate_table

from .table import (
    AF_INET,
    AF_INET6,
    FORWARD,
    PROTOCOLS,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    SVC_F_SCHED3,
    Dest,
    Entry,
    Service,
    ServiceKey,
    Table,
)

__all__ = ["SCHEDULERS", "RealServer", "VirtualServer", "SyncDaemon", "Timeouts",
           "IpvsConfig", "parse", "desired_table", "desired_entry", "split_hostport"]

#: Schedulers of Linux 6.x (``twos`` since 5.x; a kernel without a module refuses at apply).
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo",
              "ovf", "mh", "twos")

#: scheduler flag name -> (flag bit, schedulers it applies to; empty = any).
SCHEDULER_FLAGS: dict[str, tuple[int, tuple[str, ...]]] = {
    "flag-1": (SVC_F_SCHED1, ()),
    "flag-2": (SVC_F_SCHED2, ()),
    "flag-3": (SVC_F_SCHED3, ()),
    "sh-fallback": (SVC_F_SCHED1, ("sh",)),
    "sh-port": (SVC_F_SCHED2, ("sh",)),
    "mh-fallback": (SVC_F_SCHED1, ("mh",)),
    "mh-port": (SVC_F_SCHED2, ("mh",)),
}

ON_NODE_DOWN = ("quiesce", "remove")
DRIFT = ("correct", "report")
_U32 = 2**32 - 1


def _one_of(values: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in values else f"expected one of {', '.join(values)}"


TOP_SCHEMA = {
    "virtual_server": Key(list, [], None, "array of [[ipvs.virtual_server]] tables"),
    "reconcile_interval": Key(float, 60.0, lambda v: None if v >= 0 else "expected >= 0",
                              "seconds between drift checks (0: only on demand)"),
    "drift": Key(str, "correct", _one_of(DRIFT), "what a drift check does with differences"),
    "prune": Key(bool, True, None, "remove kernel services that are not configured"),
    "sync_daemon": Key(dict, {}, None, "[ipvs.sync_daemon]: kernel connection sync daemon"),
    "timeouts": Key(dict, {}, None, "[ipvs.timeouts]: tcp, tcp_fin, udp seconds"),
}

VS_SCHEMA = {
    "address": Key(str, "", None, "VIP:port (\"[v6]:port\" for IPv6)"),
    "port": Key(int, 0, between(0, 65535), "port, when address has none"),
    "fwmark": Key(int, 0, between(0, _U32), "firewall mark instead of an address"),
    "family": Key(str, "", _one_of(("inet", "inet6")), "family of a fwmark service"),
    "protocol": Key(str, "tcp", _one_of(tuple(PROTOCOLS)), "tcp, udp or sctp"),
    "scheduler": Key(str, "wlc", _one_of(SCHEDULERS), "scheduling algorithm"),
    "scheduler_flags": Key(list, [], None, "e.g. [\"mh-fallback\", \"mh-port\"]"),
    "persistence_timeout": Key(int, 0, between(0, _U32 // 1000), "seconds; 0: not persistent"),
    "persistence_netmask": Key((str, int), "", None, "v4 mask or prefix length"),
    "persistence_engine": Key(str, "", _one_of(("", "sip")), "persistence engine (sip)"),
    "one_packet": Key(bool, False, None, "schedule each UDP datagram (ipvsadm -o)"),
    "on_node_down": Key(str, "quiesce", _one_of(ON_NODE_DOWN),
                        "quiesce (weight 0, persistent clients stay) or remove"),
    "real_server": Key(list, [], None, "array of [[ipvs.virtual_server.real_server]]"),
}

RS_SCHEMA = {
    "address": Key(str, "", None, "addr:port, or an address with port ="),
    "node": Key(int, -1, between(0, _U32), "node number (addresses come from the node map)"),
    "port": Key(int, -1, between(0, 65535), "port"),
    "weight": Key(int, 1, between(0, 65535), "weight"),
    "forward": Key(str, "nat", _one_of(("nat", "dr", "tunnel")), "forwarding method"),
    "upper_threshold": Key(int, 0, between(0, _U32), "max connections (0: none)"),
    "lower_threshold": Key(int, 0, between(0, _U32), "connections to resume at"),
}

SYNC_SCHEMA = {
    "interface": Key(str, "", None, "interface for the sync multicast"),
    "syncid": Key(int, 0, between(0, 255), "sync id"),
    "instance": Key(str, "", None, "VRRP instance whose MASTER/BACKUP drives it (any if empty)"),
    "port": Key(int, 0, between(0, 65535), "UDP port (0: kernel default 8848)"),
    "group": Key(str, "", None, "multicast group (default 224.0.0.81)"),
    "maxlen": Key(int, 0, between(0, 65507), "max sync message size (0: from MTU)"),
    "ttl": Key(int, 0, between(0, 255), "multicast TTL (0: kernel default)"),
}

TIMEOUT_SCHEMA = {
    "tcp": Key(int, 0, between(0, _U32), "established TCP timeout (0: unchanged)"),
    "tcp_fin": Key(int, 0, between(0, _U32), "TCP FIN_WAIT timeout (0: unchanged)"),
    "udp": Key(int, 0, between(0, _U32), "UDP timeout (0: unchanged)"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RealServer:
    """A configured real server: a literal address or a node resolved through the node map."""

    key: str       #: config path, for messages
    address: str   #: canonical address, "" when given by node
    node: int | None
    port: int
    weight: int
    forward: str
    upper_threshold: int
    lower_threshold: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualServer:
    """A configured virtual server."""

    key: str
    service: Service  #: the kernel object (scheduler, flags, timeout, netmask)
    on_node_down: str
    real_servers: tuple[RealServer, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncDaemon:
    """``[ipvs.sync_daemon]``: the kernel's connection sync daemon, driven by VRRP."""

    interface: str
    syncid: int
    instance: str
    port: int
    group: str
    maxlen: int
    ttl: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """``[ipvs.timeouts]`` (seconds, 0: leave as is)."""

    tcp: int
    tcp_fin: int
    udp: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IpvsConfig:
    """The validated ``[ipvs]`` section."""

    file: str
    virtual_servers: tuple[VirtualServer, ...]
    reconcile_interval: float
    drift: str
    prune: bool
    sync_daemon: SyncDaemon | None
    timeouts: Timeouts | None


def split_hostport(text: str) -> tuple[str, int | None]:
    """``"10.0.0.1:80"`` / ``"[fd00::1]:80"`` / ``"10.0.0.1"`` / ``"fd00::1"`` -> (addr, port).

    :raises ValueError: not an address, or a port that is not a number 0..65535.
    """
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected ':port' after ']'")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    addr = str(ipaddress.ip_address(host))
    if port is None:
        return addr, None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is out of range (expected 0 to 65535)")
    return addr, int(port)


def _family(addr: str) -> int:
    return AF_INET6 if ":" in addr else AF_INET


def _netmask(value: str | int, af: int, *, file: str, key: str) -> int:
    """Persistence netmask as a prefix length."""
    full = 128 if af == AF_INET6 else 32
    if value == "":
        return full
    if isinstance(value, int):
        if not 1 <= value <= full:
            raise ConfigError(f"expected a prefix length from 1 to {full}, got {value}",
                              file=file, key=key)
        return value
    if af == AF_INET6:
        raise ConfigError("an IPv6 persistence netmask is a prefix length, e.g. 64",
                          file=file, key=key)
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    except ValueError:
        raise ConfigError(f"expected a netmask such as 255.255.255.0, got {value!r}",
                          file=file, key=key) from None


def _parse_rs(raw: Any, vs: Service, *, file: str, key: str) -> RealServer:
    t = validate_table(raw, RS_SCHEMA, file=file, prefix=key)
    node = t["node"] if t["node"] >= 0 else None
    port = t["port"] if t["port"] >= 0 else None
    address = ""
    if t["address"]:
        if node is not None:
            raise ConfigError("give address or node, not both", file=file, key=f"{key}.node")
        try:
            address, aport = split_hostport(t["address"])
        except ValueError as exc:
            raise ConfigError(f"{exc}; expected addr:port such as 10.0.0.11:80 or [fd00::11]:80",
                              file=file, key=f"{key}.address") from None
        if aport is not None:
            if port is not None and port != aport:
                raise ConfigError(f"port {port} disagrees with the address's port {aport}",
                                  file=file, key=f"{key}.port")
            port = aport
        if _family(address) != vs.key.af:
            raise ConfigError("real server and virtual server address families differ",
                              file=file, key=f"{key}.address")
    elif node is None:
        raise ConfigError("missing; give address = \"addr:port\" or node = N with port = P",
                          file=file, key=f"{key}.address")
    if t["forward"] in ("dr", "tunnel"):
        # As ipvsadm: direct routing and tunnelling keep the virtual port.
        port = vs.key.port
    elif port is None:
        raise ConfigError("missing port for a nat real server", file=file, key=f"{key}.port")
    elif port == 0 and not vs.key.fwmark:
        raise ConfigError("port 0 is out of range for a nat real server (expected 1 to 65535)",
                          file=file, key=f"{key}.port")
    if t["lower_threshold"] and t["upper_threshold"] and t["lower_threshold"] > t["upper_threshold"]:
        raise ConfigError("lower_threshold is above upper_threshold", file=file,
                          key=f"{key}.lower_threshold")
    return RealServer(key=key, address=address, node=node, port=port or 0, weight=t["weight"],
                      forward=t["forward"], upper_threshold=t["upper_threshold"],
                      lower_threshold=t["lower_threshold"])


def _parse_vs(raw: Any, *, file: str, key: str) -> VirtualServer:
    t = validate_table(raw, VS_SCHEMA, file=file, prefix=key)
    if bool(t["address"]) == bool(t["fwmark"]):
        raise ConfigError("give exactly one of address = \"VIP:port\" or fwmark = N",
                          file=file, key=f"{key}.address")
    if t["address"]:
        if t["family"]:
            raise ConfigError("family is only for fwmark services (the address says it)",
                              file=file, key=f"{key}.family")
        try:
            addr, port = split_hostport(t["address"])
        except ValueError as exc:
            raise ConfigError(f"{exc}; expected VIP:port such as 10.0.0.100:80",
                              file=file, key=f"{key}.address") from None
        if port is None:
            port = t["port"]
        elif t["port"] and t["port"] != port:
            raise ConfigError(f"port {t['port']} disagrees with the address's port {port}",
                              file=file, key=f"{key}.port")
        if not 1 <= port <= 65535:
            raise ConfigError(f"port {port} is out of range (expected 1 to 65535)",
                              file=file, key=f"{key}.address")
        af = _family(addr)
        skey = ServiceKey(af, PROTOCOLS[t["protocol"]], addr, port)
    else:
        af = AF_INET6 if t["family"] == "inet6" else AF_INET
        skey = ServiceKey(af, fwmark=t["fwmark"])
    flags = 0
    sched = t["scheduler"]
    for i, name in enumerate(t["scheduler_flags"]):
        spec = SCHEDULER_FLAGS.get(name) if isinstance(name, str) else None
        if spec is None:
            raise ConfigError(f"unknown scheduler flag {name!r}; known: "
                              f"{', '.join(SCHEDULER_FLAGS)}", file=file,
                              key=f"{key}.scheduler_flags[{i}]")
        bit, only = spec
        if only and sched not in only:
            raise ConfigError(f"{name} needs scheduler {only[0]}, not {sched}", file=file,
                              key=f"{key}.scheduler_flags[{i}]")
        flags |= bit
    timeout = t["persistence_timeout"]
    if timeout:
        flags |= SVC_F_PERSISTENT
    if t["one_packet"]:
        if t["protocol"] != "udp" and not t["fwmark"]:
            raise ConfigError("one_packet is only for UDP services", file=file,
                              key=f"{key}.one_packet")
        flags |= SVC_F_ONEPACKET
    netmask = _netmask(t["persistence_netmask"], af, file=file, key=f"{key}.persistence_netmask")
    service = Service(key=skey, scheduler=sched, flags=flags, timeout=timeout, netmask=netmask,
                      pe_name=t["persistence_engine"])
    rss = t["real_server"]
    if not isinstance(rss, list):
        raise ConfigError("expected [[...real_server]] tables", file=file, key=f"{key}.real_server")
    real = tuple(_parse_rs(r, service, file=file, key=f"{key}.real_server[{j}]")
                 for j, r in enumerate(rss))
    seen: dict[tuple[Any, ...], str] = {}
    for rs in real:
        ident = (rs.address or f"node {rs.node}", rs.port)
        if ident in seen:
            raise ConfigError(f"same real server as {seen[ident]}", file=file, key=rs.key)
        seen[ident] = rs.key
    return VirtualServer(key=key, service=service, on_node_down=t["on_node_down"],
                         real_servers=real)


def parse(
    section: Mapping[str, Any],
    *,
    file: str,
    node_addrs: Callable[[int], tuple[str, ...]] | None = None,
) -> IpvsConfig:
    """Validate the ``[ipvs]`` table.

    :param section: the raw table.
    :param file: the configuration file, for messages.
    :param node_addrs: the node map's addresses of a node; when given, every real server
        given by ``node`` must have an address of its service's family.
    :raises ConfigError: naming ``file`` and the key, on the first problem found.
    """
    t = validate_table(section, TOP_SCHEMA, file=file, prefix="ipvs")
    vss = tuple(_parse_vs(v, file=file, key=f"ipvs.virtual_server[{i}]")
                for i, v in enumerate(t["virtual_server"]))
    seen: dict[ServiceKey, str] = {}
    for vs in vss:
        if vs.service.key in seen:
            raise ConfigError(f"{vs.service.key} is already defined by {seen[vs.service.key]}",
                              file=file, key=vs.key)
        seen[vs.service.key] = vs.key
        if node_addrs is not None:
            for rs in vs.real_servers:
                if rs.node is not None and _node_addr(rs.node, vs.service.key.af, node_addrs) is None:
                    fam = "IPv6" if vs.service.key.af == AF_INET6 else "IPv4"
                    raise ConfigError(f"node {rs.node} has no {fam} address in the node map; "
                                      f"add it under [nodemap.nodes] or use address =",
                                      file=file, key=f"{rs.key}.node")
    sync = None
    if t["sync_daemon"]:
        s = validate_table(t["sync_daemon"], SYNC_SCHEMA, file=file, prefix="ipvs.sync_daemon")
        if not s["interface"]:
            raise ConfigError("missing; the interface the sync daemon uses", file=file,
                              key="ipvs.sync_daemon.interface")
        if s["group"]:
            try:
                s["group"] = str(ipaddress.ip_address(s["group"]))
            except ValueError:
                raise ConfigError("expected a multicast address", file=file,
                                  key="ipvs.sync_daemon.group") from None
        sync = SyncDaemon(**s)
    timeouts = None
    if t["timeouts"]:
        timeouts = Timeouts(**validate_table(t["timeouts"], TIMEOUT_SCHEMA, file=file,
                                             prefix="ipvs.timeouts"))
    return IpvsConfig(file=file, virtual_servers=vss, reconcile_interval=t["reconcile_interval"],
                      drift=t["drift"], prune=t["prune"], sync_daemon=sync, timeouts=timeouts)


def _node_addr(node: int, af: int, node_addrs: Callable[[int], tuple[str, ...]]) -> str | None:
    for a in node_addrs(node):
        if _family(a) == af:
            return a
    return None


def desired_table(
    config: IpvsConfig,
    *,
    node_addrs: Callable[[int], tuple[str, ...]],
    node_of: Callable[[str], int | None],
    is_down: Callable[[int], bool],
) -> tuple[Table, list[str]]:
    """The table the kernel should hold now.

    A real server belongs to a node when it is given by ``node`` or its address resolves
    to one. When that node is down the virtual server's ``on_node_down`` applies:
    ``quiesce`` keeps it with weight 0 (persistent clients stay, new ones go elsewhere),
    ``remove`` leaves it out.

    :param node_addrs: the node map's addresses of a node.
    :param node_of: address -> node number (``None``: not a cluster node, always up).
    :param is_down: whether a node is down now.
    :returns: the table, and problems (real servers skipped: a node without an address).
    """
    table: Table = {}
    problems: list[str] = []
    for vs in config.virtual_servers:
        table[vs.service.key] = desired_entry(vs, node_addrs=node_addrs, node_of=node_of,
                                              is_down=is_down, problems=problems)
    return table, problems


def desired_entry(
    vs: VirtualServer,
    *,
    node_addrs: Callable[[int], tuple[str, ...]],
    node_of: Callable[[str], int | None],
    is_down: Callable[[int], bool],
    problems: list[str],
) -> Entry:
    """One virtual server's entry of :func:`desired_table` (same rules, same arguments).

    Event-driven reconciles rebuild only the entries of the services a node event touches.

    :param problems: real servers skipped are appended here.
    :returns: a new entry (the caller may keep it).
    """
    svc = vs.service
    entry = Entry(svc)
    for rs in vs.real_servers:
        node = rs.node
        addr = rs.address
        if node is not None:
            found = _node_addr(node, svc.key.af, node_addrs)
            if found is None:
                problems.append(f"{rs.key}: node {node} has no address of the service's "
                                "family; skipped")
                continue
            addr = found
        else:
            node = node_of(addr)
        weight = rs.weight
        if node is not None and is_down(node):
            if vs.on_node_down == "remove":
                continue
            weight = 0
        dest = Dest(af=svc.key.af, addr=addr, port=rs.port, forward=FORWARD[rs.forward],
                    weight=weight, u_threshold=rs.upper_threshold,
                    l_threshold=rs.lower_threshold)
        entry.dests.setdefault(dest.ident, dest)
    return entry
