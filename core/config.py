"""Configuration: TOML files (tomllib), validated before anything starts.

A bad value stops start-up with a :class:`~clusterbus.errors.ConfigError` that names the
file, the key, what was wrong and what is expected. Core sections are declared here as
schemas (:class:`Key`); a plugin's section (a top-level table named after the plugin) is
handed to the plugin's ``clusterbus_configure`` hook, which may use :func:`validate_table`.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "Key",
    "REQUIRED",
    "Config",
    "load_config",
    "parse_config",
    "validate_table",
    "CORE_SECTIONS",
    "DEFAULT_FILE",
]

DEFAULT_FILE = "<embedded default>"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Key:
    """One configuration key.

    :param types: accepted Python types after TOML parsing (``bool`` is never an ``int``).
    :param default: the default, or :data:`REQUIRED`.
    :param check: returns an error message ("expected ...") or ``None`` when the value is good.
    :param doc: one line for ``--help`` and docs.
    """

    types: type | tuple[type, ...]
    default: Any = REQUIRED
    check: Check | None = None
    doc: str = ""


def _typename(types: type | tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in ts)


def validate_table(
    table: Mapping[str, Any],
    schema: Mapping[str, Key],
    *,
    file: str,
    prefix: str,
) -> dict[str, Any]:
    """Check ``table`` against ``schema``; return it with defaults filled in.

    :param prefix: the dotted path of the table, used in error messages.
    :raises ConfigError: unknown key, missing required key, wrong type, failed check.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"expected a table, got {type(table).__name__}", file=file, key=prefix)
    out: dict[str, Any] = {}
    for name in table:
        if name not in schema:
            raise ConfigError(
                f"unknown key; known keys here: {', '.join(sorted(schema))}",
                file=file, key=f"{prefix}.{name}",
            )
    for name, key in schema.items():
        path = f"{prefix}.{name}"
        if name not in table:
            if key.default is REQUIRED:
                raise ConfigError(f"missing; expected {_typename(key.types)}. {key.doc}".strip(),
                                  file=file, key=path)
            out[name] = key.default
            continue
        value = table[name]
        types = key.types if isinstance(key.types, tuple) else (key.types,)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and float in types and type(value) is int:
            value, ok = float(value), True
        if not ok:
            raise ConfigError(
                f"expected {_typename(key.types)}, got {type(value).__name__} {value!r}",
                file=file, key=path,
            )
        if key.check is not None:
            problem = key.check(value)
            if problem:
                raise ConfigError(f"{problem}, got {value!r}", file=file, key=path)
        out[name] = value
    return out


# -- checks -----------------------------------------------------------------------------

def between(lo: float, hi: float) -> Check:
    """Check: a number within ``lo..hi``."""
    return lambda v: None if lo <= v <= hi else f"expected a value from {lo} to {hi}"


def endpoint(v: str) -> str | None:
    """Check: a ZeroMQ endpoint."""
    if v.startswith(("tcp://", "ipc://", "inproc://")):
        return None
    return "expected a ZeroMQ endpoint such as tcp://127.0.0.1:7661 or ipc:///run/clusterbus/pub"


def uid_list(v: list[Any]) -> str | None:
    """Check: a list of uids."""
    if all(type(u) is int and 0 <= u < 2**32 for u in v):
        return None
    return "expected an array of numeric uids, e.g. [0]"


def str_list(v: list[Any]) -> str | None:
    """Check: a list of strings."""
    return None if all(isinstance(s, str) and s for s in v) else "expected an array of names"


def ip_address(v: str) -> str | None:
    """Check: an IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return "expected an IPv4 or IPv6 address"
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


LOG_LEVELS = ("debug", "info", "warning", "error")

#: Schemas of the core sections. Plugins validate their own sections.
CORE_SECTIONS: dict[str, dict[str, Key]] = {
    "daemon": {
        "node": Key(int, 1, between(0, 2**32 - 1), "this director's node number (the event origin)"),
        "log_level": Key(str, "info", lambda v: None if v in LOG_LEVELS else
                         f"expected one of {', '.join(LOG_LEVELS)}"),
    },
    "plugins": {
        "enable": Key(list, [], str_list, "when non-empty, load only these plugins"),
        "disable": Key(list, [], str_list, "plugins not to load"),
    },
    "bus": {
        "enabled": Key(bool, True, None, "run the ZeroMQ endpoints"),
        "publish": Key(str, "tcp://127.0.0.1:7661", endpoint, "PUB endpoint for subscribers"),
        "ingest": Key(str, "tcp://127.0.0.1:7662", endpoint, "PULL endpoint for external emitters"),
        "snapshot": Key(str, "tcp://127.0.0.1:7663", endpoint, "ROUTER endpoint: snapshot/replay"),
        "heartbeat_interval": Key(float, 1.0, between(0.01, 3600), "seconds between heartbeats"),
        "replay_ring": Key(int, 100_000, between(16, 10_000_000), "events kept for replay"),
        "send_hwm": Key(int, 100_000, between(1, 10_000_000),
                        "frames queued per subscriber before the slow-subscriber policy drops"),
    },
    "netlink": {
        "enabled": Key(bool, True, None, "listen on NETLINK_USERSOCK multicast"),
        "group": Key(int, 22, between(1, 32), "multicast group number 1..32"),
        "allowed_uids": Key(list, [0], uid_list, "senders accepted (from SCM_CREDENTIALS)"),
        "rcvbuf": Key(int, 4 << 20, between(65536, 1 << 30),
                      "socket receive buffer in bytes (bursts beyond it are lost: ENOBUFS)"),
    },
    "sigcluster": {
        "enabled": Key(bool, False, None, "take membership from queued signals (signalfd)"),
        "signal": Key((str, int), "SIGRTMIN+2", lambda v: _signal(v),
                      "signal name or number, e.g. SIGRTMIN+2"),
        "allowed_uids": Key(list, [0], uid_list, "senders accepted (from signalfd_siginfo)"),
    },
    "metrics": {
        "listen": Key(str, "", listen_address,
                      'Prometheus endpoint "ADDRESS:PORT" (e.g. "127.0.0.1:9661"); "": off'),
    },
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


#: Extra core sections registered by core modules (vrrp, keepalived) at import time.
EXTRA_SECTIONS: dict[str, Callable[[Any, str], Any]] = {}


def parse_config(data: Mapping[str, Any], *, file: str) -> Config:
    """Validate a parsed TOML document.

    :raises ConfigError: on any bad key or value.
    """
    # Registers [vrrp] and [keepalived] in EXTRA_SECTIONS (imported here: it imports us).
    from .vrrp import config as _vrrp_config  # noqa: F401

    core: dict[str, dict[str, Any]] = {}
    plugin_sections: dict[str, Any] = {}
    for name, schema in CORE_SECTIONS.items():
        core[name] = validate_table(data.get(name, {}), schema, file=file, prefix=name)
    for name, value in data.items():
        if name in CORE_SECTIONS:
            continue
        if name in EXTRA_SECTIONS:
            core[name] = EXTRA_SECTIONS[name](value, file)
            continue
        if not isinstance(value, Mapping):
            raise ConfigError("top-level keys must be tables ([section])", file=file, key=name)
        plugin_sections[name] = value
    enable, disable = core["plugins"]["enable"], core["plugins"]["disable"]
    both = set(enable) & set(disable)
    if both:
        raise ConfigError(f"{sorted(both)} both enabled and disabled", file=file, key="plugins")
    return Config(file=file, core=core, plugin_sections=plugin_sections)


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file, or the embedded default when ``path`` is ``None``.

    :raises ConfigError: unreadable file, TOML syntax error, bad key or value.
    """
    if path is None:
        text = resources.files("clusterbus").joinpath("default.toml").read_text()
        file = DEFAULT_FILE
    else:
        file = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from None
    return parse_config(data, file=file)
