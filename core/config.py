"""Configuration: TOML files (tomllib), validated before anything starts.

A bad value stops start-up with a :class:`~clusterbus.errors.ConfigError` that names the
file, the key, what was wrong and what is expected: one line, never a traceback.

Sections. Every core section is declared once, in :data:`CORE_SECTIONS` below (name ->
:class:`Section`: a flat schema of :class:`Key` entries, or a parser for a structured
table such as ``[[vrrp.instance]]``). Nothing registers a section by being imported. Every
other top-level table belongs to the plugin of that name: it is handed, unvalidated, to the
plugin's ``clusterbus_configure`` hook, which validates it (with :func:`validate_table`);
a table that no loaded plugin claims is an error.

Two levels of checks, one path (:func:`load_config`):

1. The file alone (any machine): UTF-8, TOML, nesting at most :data:`MAX_DEPTH` deep
   (a file nested thousands deep is refused without a RecursionError escaping),
   printable keys, every key's type and range, ZeroMQ endpoints (:func:`parse_endpoint`),
   addresses canonical (:mod:`clusterbus.addresses`), no endpoint bound twice.
2. This host (``load_config(path, host_checks=True)``: ``clusterbus run`` and
   ``clusterbus check-config``, so the two cannot disagree), for the services the file
   enables: a tcp bind address is one this host can bind (the kernel is asked: a socket is
   bound to it with port 0 and closed; ``*`` and ``0.0.0.0`` always pass), an ``ipc://``
   path's directory exists and the path is not something other than a socket, the
   keepalived ``notify_fifo`` directory exists (it is never created: a typo must not make
   directories as root) and the path is a FIFO if it exists, and every VRRP instance's
   interface exists.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .addresses import canonical_address
from .errors import ConfigError
from .schema import REQUIRED, Check, Key, between, show, show_key, validate_table
from .vrrp.config import check_fast_takeover, check_vrrp_host, validate_vrrp

__all__ = [
    "Key",
    "REQUIRED",
    "Check",
    "Config",
    "Section",
    "Endpoint",
    "load_config",
    "parse_config",
    "check_host",
    "parse_endpoint",
    "parse_signal",
    "validate_table",
    "between",
    "CORE_SECTIONS",
    "DEFAULT_FILE",
    "DEFAULT_NOTIFY_FIFO",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
]

DEFAULT_FILE = "<embedded default>"
DEFAULT_NOTIFY_FIFO = "/run/keepalived/notify.fifo"
#: Arrays and tables nest at most this deep (tomllib would recurse until RecursionError).
MAX_DEPTH = 32
#: A configuration file larger than this is refused unread.
MAX_FILE_BYTES = 16 << 20


# -- checks -----------------------------------------------------------------------------

def uid_list(v: list[Any]) -> str | None:
    """Check: a list of uids."""
    if all(type(u) is int and 0 <= u < 2**32 for u in v):
        return None
    return "expected an array of numeric uids, e.g. [0]"


def str_list(v: list[Any]) -> str | None:
    """Check: a list of strings."""
    return None if all(isinstance(s, str) and s for s in v) else "expected an array of names"


def ip_address(v: str) -> str | None:
    """Check: an IPv4/IPv6 address (see :func:`clusterbus.addresses.canonical_address`)."""
    try:
        canonical_address(v)
    except ValueError as exc:
        return str(exc)
    return None


def parse_signal(value: str | int) -> int:
    """``"SIGRTMIN+2"``, ``"SIGUSR1"`` or a number -> a catchable signal number.

    :raises ValueError: not a signal, or SIGKILL/SIGSTOP.
    """
    import signal

    if isinstance(value, int) and not isinstance(value, bool):
        num = value
    elif isinstance(value, str):
        name = value.strip().upper()
        if name.startswith("SIGRTMIN"):
            off = name[len("SIGRTMIN"):] or "+0"
            if off[0] != "+" or not off[1:].isdigit():
                raise ValueError(f"{value!r}: expected SIGRTMIN+N")
            num = signal.SIGRTMIN + int(off[1:])
        elif hasattr(signal.Signals, name):
            num = int(signal.Signals[name])
        else:
            raise ValueError(f"{value!r} is not a signal name")
    else:
        raise ValueError(f"{value!r} is not a signal")
    if num in (signal.SIGKILL, signal.SIGSTOP) or not 1 <= num <= signal.SIGRTMAX:
        raise ValueError(f"signal {num} cannot be caught")
    return num


def _signal(v: str | int) -> str | None:
    try:
        parse_signal(v)
    except ValueError as exc:
        return f"expected a catchable signal such as SIGRTMIN+2 ({exc})"
    return None


def listen_address(v: str) -> str | None:
    """Check: ``HOST:PORT`` (``[V6ADDR]:PORT``) to listen on, or ``""`` (off)."""
    if v == "":
        return None
    host, sep, port = v.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (sep and port.isdigit() and int(port) < 65536 and ip_address(host) is None
            and bracketed == (":" in host)):
        return None
    return 'expected "ADDRESS:PORT" such as "127.0.0.1:9661" or "[::1]:9661", or "" (off)'


# -- endpoints --------------------------------------------------------------------------

#: ``sockaddr_un.sun_path`` holds 108 bytes, the terminating NUL included.
_SUN_PATH_MAX = 107
_ENDPOINT_EXAMPLE = "e.g. tcp://127.0.0.1:7661, tcp://*:7661 or ipc:///run/clusterbus/pub"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A validated ZeroMQ endpoint of the bus.

    :param transport: ``tcp``, ``ipc`` or ``inproc``.
    :param host: tcp: a canonical IPv4 address or ``*``.
    :param port: tcp: 1..65535, or ``None`` for ``*`` (an ephemeral port chosen at bind
        time: tests use it; clients cannot find such a port from the file).
    :param path: ipc: an absolute, normalised path or ``@name`` (Linux abstract
        namespace); inproc: the name.
    """

    transport: str
    host: str = ""
    port: int | None = None
    path: str = ""

    def __str__(self) -> str:
        if self.transport == "tcp":
            return f"tcp://{self.host}:{'*' if self.port is None else self.port}"
        return f"{self.transport}://{self.path}"

    @property
    def wildcard(self) -> bool:
        """A tcp endpoint bound to every IPv4 address of the host."""
        return self.host in ("*", "0.0.0.0")

    def overlaps(self, other: Endpoint) -> bool:
        """Whether binding both would fail (or one would take the other's traffic)."""
        if self.transport != other.transport:
            return False
        if self.transport == "tcp":
            if self.port is None or self.port != other.port:
                return False
            return self.host == other.host or self.wildcard or other.wildcard
        return self.path == other.path


def parse_endpoint(text: str) -> Endpoint:
    """Parse and canonicalise a bus endpoint.

    - ``tcp://HOST:PORT``: HOST a literal IPv4 address or ``*`` (names and interface names
      are not resolved; IPv6 is refused because the bus does not enable ``ZMQ_IPV6``),
      PORT 1..65535 or ``*``;
    - ``ipc://PATH``: an absolute path (at most 107 bytes) or ``@name`` (abstract);
    - ``inproc://NAME``.

    :raises ValueError: with the reason.
    """
    transport, sep, rest = text.partition("://")
    if not sep or transport not in ("tcp", "ipc", "inproc"):
        raise ValueError(f"expected a ZeroMQ endpoint ({_ENDPOINT_EXAMPLE})")
    if not rest or not rest.isprintable():
        raise ValueError(f"expected a ZeroMQ endpoint ({_ENDPOINT_EXAMPLE})")
    if transport == "inproc":
        return Endpoint(transport="inproc", path=rest)
    if transport == "ipc":
        if rest.startswith("@"):
            if len(rest.encode()) > _SUN_PATH_MAX:
                raise ValueError(f"the abstract socket name is longer than {_SUN_PATH_MAX} bytes")
            return Endpoint(transport="ipc", path=rest)
        if not rest.startswith("/"):
            raise ValueError("expected an absolute path after ipc:// (ipc:///run/clusterbus/pub)"
                             " or an abstract name (ipc://@clusterbus-pub)")
        path = os.path.normpath(rest)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if len(path.encode()) > _SUN_PATH_MAX:
            raise ValueError(f"the socket path is longer than {_SUN_PATH_MAX} bytes")
        return Endpoint(transport="ipc", path=path)
    host, colon, port_text = rest.rpartition(":")
    if not colon or not host:
        raise ValueError(f"expected tcp://HOST:PORT ({_ENDPOINT_EXAMPLE})")
    if port_text == "*":
        port = None
    elif port_text.isdigit() and port_text.isascii():
        port = int(port_text)
        if port == 0:
            raise ValueError("port 0: expected a port from 1 to 65535 (or * for an ephemeral port)")
        if port > 65535:
            raise ValueError(f"port {port}: expected a port from 1 to 65535")
    else:
        raise ValueError(f"port {port_text!r} is not a number: expected a port from 1 to 65535")
    if host == "*":
        return Endpoint(transport="tcp", host="*", port=port)
    if host.startswith("["):
        raise ValueError("IPv6 tcp endpoints are not supported (the bus does not enable "
                         "ZMQ_IPV6): use an IPv4 address, * or ipc://")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not a literal IPv4 address or * (names and interfaces "
                         "are not resolved)") from None
    if not isinstance(ip, ipaddress.IPv4Address):
        raise ValueError("IPv6 tcp endpoints are not supported (the bus does not enable "
                         "ZMQ_IPV6): use an IPv4 address, * or ipc://")
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{ip} is not a unicast address")
    return Endpoint(transport="tcp", host=str(ip), port=port)


def _endpoint(v: str) -> str:
    return str(parse_endpoint(v))


BUS_ENDPOINTS = ("publish", "ingest", "snapshot")


def _check_bus(table: dict[str, Any], file: str) -> None:
    seen: dict[str, Endpoint] = {}
    for name in BUS_ENDPOINTS:
        ep = parse_endpoint(table[name])
        for other, prev in seen.items():
            if ep.overlaps(prev):
                same = "is the same endpoint as" if str(ep) == str(prev) else "overlaps"
                raise ConfigError(f"{ep} {same} bus.{other} ({prev}); each endpoint is "
                                  "bound once", file=file, key=f"bus.{name}")
        seen[name] = ep


def _bindable(host: str) -> str | None:
    """None when this host can bind ``host`` (IPv4); else the reason."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return (f"{host} is not an address of this host; bind to 127.0.0.1, * or "
                        "an address assigned here")
            return f"cannot bind {host}: {exc.strerror}"
    return None


def _check_bus_host(table: dict[str, Any], file: str) -> None:
    if not table["enabled"]:
        return
    for name in BUS_ENDPOINTS:
        ep = parse_endpoint(table[name])
        problem = None
        if ep.transport == "tcp" and not ep.wildcard:
            problem = _bindable(ep.host)
        elif ep.transport == "ipc" and not ep.path.startswith("@"):
            parent = os.path.dirname(ep.path)
            # the daemon makes a missing socket directory itself (mode 0700, root only), one
            # level deep: a typo in a deeper path is still refused here
            if not os.path.isdir(parent) and not os.path.isdir(os.path.dirname(parent)):
                problem = (f"directory {os.path.dirname(parent)} does not exist (the daemon "
                           f"creates only the last level, {parent})")
            elif os.path.lexists(ep.path) and not stat.S_ISSOCK(os.lstat(ep.path).st_mode):
                problem = f"{ep.path} exists and is not a socket (binding would replace it)"
        if problem:
            raise ConfigError(problem, file=file, key=f"bus.{name}")


# -- keepalived -------------------------------------------------------------------------

def _absolute_path(v: str) -> str | None:
    if not v.startswith("/") or not v.isprintable() or v.endswith("/"):
        return "expected an absolute path of a file"
    return None


def _check_keepalived_host(table: dict[str, Any], file: str) -> None:
    if not table["enabled"]:
        return
    path = table["notify_fifo"]
    parent = os.path.dirname(path)
    key = "keepalived.notify_fifo"
    if not os.path.isdir(parent):
        hint = (" (keepalived creates it when it starts: start clusterbus after keepalived)"
                if parent == os.path.dirname(DEFAULT_NOTIFY_FIFO) else "")
        raise ConfigError(f"directory {parent} does not exist{hint}; it is not created for you",
                          file=file, key=key)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # made (mkfifo) when the source starts, or by keepalived
    except OSError as exc:
        raise ConfigError(f"cannot stat {path}: {exc.strerror}", file=file, key=key) from None
    if not stat.S_ISFIFO(st.st_mode):
        raise ConfigError(f"{path} exists and is not a FIFO", file=file, key=key)


# -- links between directors ([[cluster.peer]]) --------------------------------------------

def _connect_endpoint(v: str) -> str:
    """A peer's endpoint: one a client can connect to (no wildcard host, no ``*`` port)."""
    ep = parse_endpoint(v)
    if ep.transport == "tcp" and (ep.wildcard or str(ep).endswith(":*")):
        raise ValueError("expected an endpoint to connect to (tcp://ADDRESS:PORT), not a "
                         "wildcard address or port")
    return str(ep)


PEER_SCHEMA: dict[str, Key] = {
    "node": Key(int, REQUIRED, between(0, 2**32 - 1), "the peer director's node number"),
    "publish": Key(str, REQUIRED, None, "the peer's [bus] publish endpoint",
                   convert=_connect_endpoint),
    "snapshot": Key(str, REQUIRED, None, "the peer's [bus] snapshot endpoint",
                    convert=_connect_endpoint),
    "public_key": Key(str, REQUIRED, _absolute_path,
                      "the peer's public NAME.key file (from clusterbus keygen)"),
    "connsync": Key(str, "", None, "the peer's [connsync] listen endpoint (conn-sync; "
                    "optional)", convert=_connect_endpoint),
}


def validate_cluster(value: Any, file: str) -> dict[str, Any]:
    """Validate the ``[cluster]`` table (``[[cluster.peer]]`` entries).

    Each peer's ``public_key`` file is read here (a missing or unusable file stops
    start-up, like ``[bus] certificate``). That ``[bus] certificate`` is set and that no
    peer is this director itself is checked by :func:`parse_config` (it needs the other
    sections).

    :returns: ``{"peer": [dict, ...]}``.
    :raises ConfigError: naming the file and the key (``cluster.peer[0].node``).
    """
    if not isinstance(value, Mapping):
        raise ConfigError("expected a table ([[cluster.peer]])", file=file, key="cluster")
    for k in value:
        if k != "peer":
            raise ConfigError("unknown key; known keys here: peer", file=file,
                              key=f"cluster.{show_key(str(k))}")
    raw = value.get("peer", [])
    if not isinstance(raw, list):
        raise ConfigError("expected an array of tables ([[cluster.peer]])", file=file,
                          key="cluster.peer")
    from .bus.security import load_public_key

    out: list[dict[str, Any]] = []
    nodes: dict[int, int] = {}
    for i, table in enumerate(raw):
        prefix = f"cluster.peer[{i}]"
        peer = validate_table(table, PEER_SCHEMA, file=file, prefix=prefix)
        if peer["node"] in nodes:
            raise ConfigError(f"node {peer['node']} already used by cluster.peer"
                              f"[{nodes[peer['node']]}]", file=file, key=f"{prefix}.node")
        nodes[peer["node"]] = i
        if peer["publish"] == peer["snapshot"]:
            raise ConfigError("the same endpoint as publish; a daemon's publish and snapshot "
                              "endpoints differ", file=file, key=f"{prefix}.snapshot")
        if not peer["connsync"]:
            del peer["connsync"]  # optional: present only when given
        elif peer["connsync"] in (peer["publish"], peer["snapshot"]):
            raise ConfigError("the same endpoint as publish or snapshot; conn-sync has an "
                              "endpoint of its own ([connsync] listen on that peer)",
                              file=file, key=f"{prefix}.connsync")
        load_public_key(peer["public_key"], file=file, key=f"{prefix}.public_key")
        out.append(peer)
    return {"peer": out}


def _check_cluster(core: Mapping[str, dict[str, Any]], file: str) -> None:
    """Rules across sections: a peer link needs this daemon's CURVE certificate, and no
    peer is this director itself."""
    peers = core["cluster"]["peer"]
    if not peers:
        return
    from .bus.security import KEYGEN_HINT

    if not core["bus"]["certificate"]:
        raise ConfigError("a link to a peer director is CURVE-only and needs this daemon's "
                          f"key pair in [bus] certificate; {KEYGEN_HINT}", file=file,
                          key="cluster.peer")
    for i, peer in enumerate(peers):
        if peer["node"] == core["daemon"]["node"]:
            raise ConfigError(f"node {peer['node']} is this director ([daemon] node); list "
                              "only the other directors", file=file, key=f"cluster.peer[{i}].node")


# -- the core sections ------------------------------------------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, kw_only=True)
class Section:
    """A core section.

    :param doc: what the section configures.
    :param schema: the keys of a flat table (validated with :func:`validate_table`).
    :param parse: instead of ``schema``, for a structured table: ``parse(value, file)``
        returns the validated section or raises :class:`ConfigError`.
    :param check: rules across the section's keys, after each key is valid.
    :param host: ``host(section, file)``: what only this host can tell (see the module
        docstring); run by :func:`check_host`.
    :param optional: the section is in :attr:`Config.core` only when the file has it
        (its presence switches a service on); otherwise it is always there, defaults filled in.
    """

    doc: str
    schema: Mapping[str, Key] | None = None
    parse: Callable[[Any, str], dict[str, Any]] | None = None
    check: Callable[[dict[str, Any], str], None] | None = None
    host: Callable[[dict[str, Any], str], None] | None = None
    optional: bool = False

    def validate(self, name: str, value: Any, file: str) -> dict[str, Any]:
        """The validated section (:class:`ConfigError` naming ``file`` and the key)."""
        if self.parse is not None:
            out = self.parse(value, file)
        else:
            assert self.schema is not None
            out = validate_table(value, self.schema, file=file, prefix=name)
        if self.check is not None:
            self.check(out, file)
        return out


#: Where the membership view is saved unless ``[daemon] state_dir`` says otherwise: the
#: first directory of ``$STATE_DIRECTORY`` (set by systemd for a unit with
#: ``StateDirectory=``), else /var/lib/clusterbus.
DEFAULT_STATE_DIR = (os.environ.get("STATE_DIRECTORY", "").split(":")[0]
                     or "/var/lib/clusterbus")


#: Every core section. Plugins' sections are theirs (``clusterbus_configure``).
CORE_SECTIONS: dict[str, Section] = {
    "daemon": Section(doc="this director", schema={
        "node": Key(int, 1, between(0, 2**32 - 1), "this director's node number (the event origin)"),
        "log_level": Key(str, "info", lambda v: None if v in LOG_LEVELS else
                         f"expected one of {', '.join(LOG_LEVELS)}"),
        "state_dir": Key(str, DEFAULT_STATE_DIR, None,
                         "directory of the membership state file (\"\": not persisted); "
                         "default $STATE_DIRECTORY (systemd's StateDirectory=), else "
                         "/var/lib/clusterbus"),
    }),
    "plugins": Section(doc="which plugins load, and how their hook calls are watched", schema={
        "enable": Key(list, [], str_list, "when non-empty, load only these plugins"),
        "disable": Key(list, [], str_list, "plugins not to load"),
        "slow_call_ms": Key(int, 50, between(1, 3_600_000),
                            "a hook call slower than this (milliseconds) is logged and counted"),
    }),
    "bus": Section(doc="the ZeroMQ endpoints", check=_check_bus, host=_check_bus_host, schema={
        "enabled": Key(bool, True, None, "run the ZeroMQ endpoints"),
        "publish": Key(str, "tcp://127.0.0.1:7661", None, "PUB endpoint for subscribers",
                       convert=_endpoint),
        "ingest": Key(str, "ipc:///run/clusterbus/ingest.sock", None,
                      "PULL endpoint for external emitters (TCP needs certificate)",
                      convert=_endpoint),
        "snapshot": Key(str, "tcp://127.0.0.1:7663", None, "ROUTER endpoint: snapshot/replay",
                        convert=_endpoint),
        "heartbeat_interval": Key(float, 1.0, between(0.01, 3600), "seconds between heartbeats"),
        "replay_ring": Key(int, 100_000, between(16, 10_000_000), "events kept for replay"),
        "send_hwm": Key(int, 100_000, between(1, 10_000_000),
                        "events queued per subscriber before the slow-subscriber policy drops"),
        "certificate": Key(str, "", None, "CURVE on: this daemon's NAME.key_secret file"),
        "authorized_keys": Key(str, "", None, "CURVE: directory of the public .key files let in"),
    }),
    "netlink": Section(doc="the NETLINK_USERSOCK membership source", schema={
        "enabled": Key(bool, True, None, "listen on NETLINK_USERSOCK multicast"),
        "group": Key(int, 22, between(1, 32), "multicast group number 1..32"),
        "allowed_uids": Key(list, [0], uid_list, "senders accepted (from SCM_CREDENTIALS)"),
        "rcvbuf": Key(int, 4 << 20, between(65536, 1 << 30),
                      "socket receive buffer in bytes (bursts beyond it are lost: ENOBUFS)"),
    }),
    "sigcluster": Section(doc="queued signals as a membership source", schema={
        "enabled": Key(bool, False, None, "take membership from queued signals (signalfd)"),
        "signal": Key((str, int), "SIGRTMIN+2", lambda v: _signal(v),
                      "signal name or number, e.g. SIGRTMIN+2"),
        "allowed_uids": Key(list, [0], uid_list, "senders accepted (from signalfd_siginfo)"),
    }),
    "keepalived": Section(doc="keepalived's notify FIFO as a source (on when present)",
                          optional=True, host=_check_keepalived_host, schema={
        "enabled": Key(bool, True, None, "read keepalived's notify FIFO"),
        "notify_fifo": Key(str, DEFAULT_NOTIFY_FIFO, _absolute_path,
                           "keepalived's global_defs notify_fifo; its directory must exist "
                           "(the FIFO is made when missing)", convert=os.path.normpath),
    }),
    "vrrp": Section(doc="the built-in VRRP speaker ([[vrrp.instance]])", optional=True,
                    parse=validate_vrrp, host=check_vrrp_host),
    "corosync": Section(doc="Corosync as the membership engine (CPG, quorum)", schema={
        "enabled": Key(bool, False, None, "take membership, directors and quorum from Corosync"),
        "group": Key(str, "clusterbus", lambda v: None if 0 < len(v.encode()) <= 128 else
                     "expected a CPG group name of 1..128 bytes", "CPG group the daemons join"),
        "quorum": Key(bool, True, None, "publish cluster.quorum from libquorum's quorate flag"),
    }),
    "cluster": Section(doc="links to the peer directors ([[cluster.peer]])",
                       parse=validate_cluster),
    "metrics": Section(doc="the Prometheus endpoint", schema={
        "listen": Key(str, "", listen_address,
                      'Prometheus endpoint "ADDRESS:PORT" (e.g. "127.0.0.1:9661"); "": off'),
    }),
}


@dataclass
class Config:
    """A validated configuration.

    :param file: where it came from (:data:`DEFAULT_FILE` for the embedded default).
    :param core: validated core sections by name.
    :param plugin_sections: raw top-level tables not owned by the core, by name; each goes to
        the plugin of that name (unknown ones are reported once plugins are loaded).
    """

    file: str
    core: dict[str, dict[str, Any]]
    plugin_sections: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.core[section]

    @property
    def node(self) -> int:
        """This director's node number."""
        return int(self.core["daemon"]["node"])


def _walk(value: Any, path: str, depth: int, file: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and keys that do not print on a line.

    An error names the key at most 3 levels down (``nodemap.nodes.1``), not the whole
    path to the innermost level.
    """
    if depth > MAX_DEPTH:
        raise ConfigError(f"arrays or tables nested more than {MAX_DEPTH} deep", file=file,
                          key=path)
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str) or not k.isprintable() or not k:
                raise ConfigError(f"key {show(k)}: expected a non-empty key of printable "
                                  "characters", file=file, key=path or None)
            _walk(v, (f"{path}.{k}" if path else k) if depth < 3 else path, depth + 1, file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, f"{path}[{i}]" if depth < 3 else path, depth + 1, file)


def parse_config(data: Mapping[str, Any], *, file: str) -> Config:
    """Validate a parsed TOML document (the file alone: see :func:`check_host`).

    :raises ConfigError: on any bad key or value.
    """
    _walk(data, "", 0, file)
    core: dict[str, dict[str, Any]] = {}
    plugin_sections: dict[str, Any] = {}
    for name, section in CORE_SECTIONS.items():
        if name in data or not section.optional:
            core[name] = section.validate(name, data.get(name, {}), file)
    for name, value in data.items():
        if name in CORE_SECTIONS:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError("top-level keys must be tables ([section])", file=file,
                              key=show_key(name))
        plugin_sections[name] = value
    from .bus.security import check_bus_security

    check_bus_security(core["bus"], file)
    _check_cluster(core, file)
    enable, disable = core["plugins"]["enable"], core["plugins"]["disable"]
    both = set(enable) & set(disable)
    if both:
        raise ConfigError(f"{sorted(both)} both enabled and disabled", file=file, key="plugins")
    config = Config(file=file, core=core, plugin_sections=plugin_sections)
    check_fast_takeover(config)  # across [vrrp] and [corosync]
    return config


def check_host(config: Config) -> None:
    """Check what only this host can tell (bind addresses, directories, interfaces) for every
    core section of ``config`` that has such checks.

    :raises ConfigError: naming ``config.file`` and the key.
    """
    for name, section in CORE_SECTIONS.items():
        if section.host is not None and name in config.core:
            section.host(config.core[name], config.file)


# -- reading ----------------------------------------------------------------------------

_TOKEN = re.compile(r'''
    (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')
  | (?P<open>[\[{])
  | (?P<close>[\]}])
  | (?P<eq>=)
  | (?P<other>[^\n#"'\[\]{}=]+)
''', re.VERBOSE | re.DOTALL)
_HEADER = re.compile(r"\[\[?([^\]\n]*)\]")


def _key_text(raw: str) -> str:
    return re.sub(r"\s*\.\s*", ".", raw.strip())


def _scan(text: str, *, until: int | None = None) -> tuple[str, int | None]:
    """Read ``text`` as TOML's shape only (tables, keys, bracket depth; no values).

    :returns: the dotted key being defined at offset ``until`` (or at the end), and the
        offset where arrays/inline tables first nest deeper than :data:`MAX_DEPTH`
        (``None`` if they never do); when they do, the key is the one at that offset.
        Only for error messages: a best effort, never a second parser.
    """
    table, key, in_value, depth, pos = "", "", False, 0, 0
    while pos < len(text) and (until is None or pos < until):
        m = _TOKEN.match(text, pos)
        if m is None:  # an unterminated string: the rest of the line is its
            nl = text.find("\n", pos)
            pos = len(text) if nl < 0 else nl
            continue
        kind = m.lastgroup
        if kind == "nl" and depth == 0:
            in_value, key = False, ""
        elif kind == "open":
            if depth == 0 and not in_value and not key.strip():
                h = _HEADER.match(text, pos)
                if h is not None:
                    table, pos = _key_text(h.group(1)), h.end()
                    continue
            depth += 1
            if depth > MAX_DEPTH:
                return _join(table, key), pos
        elif kind == "close":
            depth = max(0, depth - 1)
        elif kind == "eq" and depth == 0 and not in_value:
            in_value = True
        elif depth == 0 and not in_value and kind in ("other", "string"):
            key += m.group()
        pos = m.end()
    return _join(table, key), None


def _join(table: str, key: str) -> str:
    key = _key_text(key)
    return ".".join(p for p in (table, key) if p)


def _read(path: str | Path, file: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"larger than {MAX_FILE_BYTES >> 20} MiB", file=file)
    return data


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        key, _ = _scan(data[: exc.start].decode("utf-8"))
        raise ConfigError(f"not UTF-8: byte 0x{data[exc.start]:02x} on line {line}; TOML "
                          "files are UTF-8", file=file, key=key or None) from None


def _toml(text: str, file: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        at = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        offset = len(text) if "(at end of document)" in msg else None
        if at:
            lines = text.split("\n")
            n = int(at.group(1))
            offset = sum(len(x) + 1 for x in lines[: n - 1]) + int(at.group(2)) - 1
        where = None if offset is None else _scan(text, until=offset)[0]
        raise ConfigError(f"not valid TOML: {msg}", file=file, key=where or None) from None
    except RecursionError:
        # tomllib recurses once per level: thousands of "[" end here. Shallower nesting
        # parses and _walk refuses it with the exact key.
        key, deep_at = _scan(text)
        line = "" if deep_at is None else f" (line {text.count(chr(10), 0, deep_at) + 1})"
        raise ConfigError(f"arrays or inline tables nested more than {MAX_DEPTH} deep{line}",
                          file=file, key=key or None) from None


def load_config(path: str | Path | None, *, host_checks: bool = False) -> Config:
    """Read and validate a TOML file, or the embedded default when ``path`` is ``None``.

    :param host_checks: also run :func:`check_host`: what the daemon (``run``) and
        ``check-config`` need; clients that only read the endpoints leave it off.
    :raises ConfigError: unreadable file, not UTF-8, TOML syntax error, bad key or value,
        and (with ``host_checks``) what this host cannot do; one line, naming the file and,
        where there is one, the key.
    """
    if path is None:
        text = resources.files("clusterbus").joinpath("default.toml").read_text("utf-8")
        file = DEFAULT_FILE
    else:
        file = str(path)
        text = _decode(_read(path, file), file)
    config = parse_config(_toml(text, file), file=file)
    if host_checks:
        check_host(config)
    return config
