"""Configuration of the VRRP speaker (``[[vrrp.instance]]``).

Key names follow keepalived's (``virtual_ipaddress``, ``unicast_peer``, ``advert_int`` is
``advert_interval`` here because the value is in seconds with a fraction) so its users
feel at home. :data:`clusterbus.config.CORE_SECTIONS` declares the ``[vrrp]`` section with
:func:`validate_vrrp` (the file alone) and :func:`check_vrrp_host` (the interfaces exist on
this host: ``clusterbus run`` and ``clusterbus check-config``).

Addresses follow :mod:`clusterbus.addresses`: virtual addresses, peers and the source are
node addresses (unicast, not loopback or unspecified; an IPv4-mapped one is the IPv4 address), canonical.

Standard library only: no pyroute2 here, the interface check uses
:func:`socket.if_nametoindex`. This module imports :mod:`clusterbus.schema`, never
:mod:`clusterbus.config` (which imports it).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..addresses import canonical_node_address, canonical_node_interface
from ..errors import ConfigError
from ..schema import REQUIRED, Key, between, validate_table
from .machine import advert_interval_problem

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "InstanceConfig",
    "INSTANCE_SCHEMA",
    "validate_vrrp",
    "check_vrrp_host",
    "instances",
    "check_interfaces",
    "check_fast_takeover",
    "FAST_TAKEOVER",
    "ISOLATION",
    "isolation",
]


def _name(v: str) -> str | None:
    if 0 < len(v) <= 128 and v.isprintable() and '"' not in v and not any(c.isspace() for c in v):
        return None
    return "expected 1..128 printable characters without spaces or quotes"


def _ifname(v: str) -> str | None:
    # IFNAMSIZ is 16 including the NUL.
    if 0 < len(v) <= 15 and "/" not in v and not any(c.isspace() for c in v):
        return None
    return "expected an interface name of 1..15 characters"


def _addr_list(v: list[Any]) -> str | None:
    if all(isinstance(a, str) for a in v):
        return None
    return "expected an array of strings"


#: the values of ``fast_takeover`` ("" is off)
FAST_TAKEOVER = ("", "corosync")


def _fast_takeover(v: str) -> str | None:
    if v in FAST_TAKEOVER:
        return None
    return 'expected "corosync" (or leave the key out: off)'


INSTANCE_SCHEMA: dict[str, Key] = {
    "name": Key(str, REQUIRED, _name, "instance name, e.g. VI_1"),
    "interface": Key(str, REQUIRED, _ifname, "interface the adverts use"),
    "vrid": Key(int, REQUIRED, between(1, 255), "virtual router id 1..255"),
    "priority": Key(int, 100, between(1, 255), "1..255; 255 means address owner"),
    "advert_interval": Key(float, 1.0, between(0.01, 255),
                           "seconds; v3: multiples of 0.01 up to 40.95, v2: whole seconds"),
    "version": Key(int, 3, lambda v: None if v in (2, 3) else "expected 2 or 3",
                   "VRRP version: 3 (RFC 5798) or 2 (RFC 3768, IPv4 only)"),
    "virtual_ipaddress": Key(list, REQUIRED, _addr_list,
                             'virtual addresses, e.g. ["10.77.0.100/24"]'),
    "preempt": Key(bool, True, None, "a higher priority backup takes over from the master"),
    "preempt_delay": Key(float, 0.0, between(0, 1000), "seconds to wait before preempting"),
    "accept": Key(bool, False, None, "RFC 5798 Accept_Mode (carried, not enforced: a master "
                                      "always accepts packets for its VIPs)"),
    "unicast_peer": Key(list, [], _addr_list, "send adverts to these peers instead of multicast"),
    "unicast_src_ip": Key(str, "", None, "source address of the adverts (default: the "
                                         "interface's first address of the family)"),
    "garp_count": Key(int, 5, between(0, 100),
                      "gratuitous ARPs / unsolicited NAs per burst on takeover"),
    "garp_delay": Key(float, 5.0, between(0, 3600),
                      "seconds between the first and the second burst (0: one burst only)"),
    "prepare_timeout": Key(float, 0.0, between(0, 60),
                           "seconds a takeover waits for the plugins' prepare_master answer "
                           "(a conn-sync barrier); 0: one advert_interval"),
    "fast_takeover": Key(str, "", _fast_takeover,
                         '"corosync": take over after Skew_Time when the master\'s daemon '
                         "left the Corosync group (off by default; docs/vrrp.md)"),
}

@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceConfig:
    """One validated ``[[vrrp.instance]]``.

    :param family: ``inet`` or ``inet6``, derived from ``virtual_ipaddress``.
    :param index: position in the file (for error messages: ``vrrp.instance[index]``).
    """

    name: str
    interface: str
    vrid: int
    priority: int
    advert_interval: float
    version: int
    virtual_ipaddress: tuple[str, ...]
    preempt: bool
    preempt_delay: float
    accept: bool
    unicast_peer: tuple[str, ...]
    unicast_src_ip: str
    garp_count: int
    garp_delay: float
    family: str
    index: int
    fast_takeover: str = ""
    prepare_timeout: float = 0.0

    @property
    def key(self) -> str:
        """The dotted key of this instance in the file."""
        return f"vrrp.instance[{self.index}]"


def _check_instance(raw: Mapping[str, Any], index: int, file: str) -> dict[str, Any]:
    prefix = f"vrrp.instance[{index}]"
    v = validate_table(raw, INSTANCE_SCHEMA, file=file, prefix=prefix)

    def err(msg: str, key: str) -> ConfigError:
        return ConfigError(msg, file=file, key=f"{prefix}.{key}")

    interval = v["advert_interval"]
    problem = advert_interval_problem(v["version"], interval)
    if problem:
        raise err(problem, "advert_interval")
    if v["version"] == 3:
        interval = round(interval * 100) / 100

    vips = v["virtual_ipaddress"]
    if not vips:
        raise err("expected at least one address", "virtual_ipaddress")
    parsed = []
    for i, a in enumerate(vips):
        try:
            parsed.append(ipaddress.ip_interface(canonical_node_interface(a)))
        except ValueError as exc:
            raise err(str(exc), f"virtual_ipaddress[{i}]") from None
    versions = {p.version for p in parsed}
    if len(versions) > 1:
        raise err("mixes IPv4 and IPv6; use one instance per family (RFC 5798 §7.1)",
                  "virtual_ipaddress")
    family = "inet6" if versions == {6} else "inet"
    if family == "inet6" and v["version"] == 2:
        raise err("VRRPv2 (RFC 3768) is IPv4 only; use version = 3 for IPv6", "version")
    if len({p.ip for p in parsed}) != len(parsed):
        raise err("lists an address twice", "virtual_ipaddress")
    # A bare address gets a host prefix; keep what the user wrote otherwise.
    v["virtual_ipaddress"] = tuple(str(p) for p in parsed)

    def node_address(a: Any, key: str) -> str:
        try:
            canon = canonical_node_address(a)
        except ValueError as exc:
            raise err(str(exc), key) from None
        if (ipaddress.ip_address(canon).version == 6) != (family == "inet6"):
            raise err(f"{canon} is not of the instance's family ({family})", key)
        return canon

    v["unicast_peer"] = tuple(node_address(a, f"unicast_peer[{i}]")
                              for i, a in enumerate(v["unicast_peer"]))
    if len(set(v["unicast_peer"])) != len(v["unicast_peer"]):
        raise err("lists a peer twice", "unicast_peer")
    if v["unicast_src_ip"]:
        v["unicast_src_ip"] = node_address(v["unicast_src_ip"], "unicast_src_ip")
    v["advert_interval"] = float(interval)
    v["family"] = family
    v["index"] = index
    return v


#: the values of ``[vrrp] isolation``, the default first: where the speaker runs (its own
#: child process, or a thread of the daemon; docs/architecture.md, "Concurrency model")
ISOLATION = ("process", "thread")


def validate_vrrp(value: Any, file: str) -> dict[str, Any]:
    """Validate the ``[vrrp]`` table (``isolation`` and the ``[[vrrp.instance]]`` entries).

    :param value: the parsed ``vrrp`` table.
    :param file: the config file, for errors.
    :returns: ``{"instance": [dict, ...], "isolation": str}`` with defaults filled in,
        ``family`` and ``index`` added and addresses normalised.
    :raises ConfigError: naming the file and the key (``vrrp.instance[0].vrid``).
    """
    if not isinstance(value, Mapping):
        raise ConfigError("expected [[vrrp.instance]] tables", file=file, key="vrrp")
    for k in value:
        if k not in ("instance", "isolation"):
            raise ConfigError("unknown key; known keys here: instance, isolation", file=file,
                              key=f"vrrp.{k}")
    mode = value.get("isolation", ISOLATION[0])
    if mode not in ISOLATION:
        raise ConfigError(f'expected "process" (the default) or "thread", got {mode!r}',
                          file=file, key="vrrp.isolation")
    raw = value.get("instance", [])
    if not isinstance(raw, list):
        raise ConfigError("expected an array of tables ([[vrrp.instance]])", file=file,
                          key="vrrp.instance")
    out = [_check_instance(r, i, file) for i, r in enumerate(raw)]
    names: dict[str, int] = {}
    routers: dict[tuple[str, int, str], int] = {}
    for i, inst in enumerate(out):
        if inst["name"] in names:
            raise ConfigError(f"name {inst['name']!r} already used by vrrp.instance"
                              f"[{names[inst['name']]}]", file=file, key=f"vrrp.instance[{i}].name")
        names[inst["name"]] = i
        rk = (inst["interface"], inst["vrid"], inst["family"])
        if rk in routers:
            raise ConfigError(
                f"vrid {inst['vrid']} on {inst['interface']} ({inst['family']}) already used by "
                f"vrrp.instance[{routers[rk]}]; a virtual router is unique per interface, "
                "VRID and family (RFC 5798 §7.3)",
                file=file, key=f"vrrp.instance[{i}].vrid")
        routers[rk] = i
    return {"instance": out, "isolation": mode}


def instances(config: Config) -> list[InstanceConfig]:
    """The configured VRRP instances (empty when there is no ``[[vrrp.instance]]``)."""
    section = config.core.get("vrrp")
    if not section:
        return []
    return [InstanceConfig(**{**d, "virtual_ipaddress": tuple(d["virtual_ipaddress"]),
                              "unicast_peer": tuple(d["unicast_peer"])})
            for d in section["instance"]]


def isolation(config: Config) -> str:
    """``[vrrp] isolation``: ``"process"`` (the default) or ``"thread"``."""
    section = config.core.get("vrrp") or {}
    return str(section.get("isolation", ISOLATION[0]))


def check_vrrp_host(section: Mapping[str, Any], file: str) -> None:
    """Check, on the machine that runs the daemon, that every instance's interface exists
    (the ``[vrrp]`` section's host check, see :data:`clusterbus.config.CORE_SECTIONS`).

    :param section: the section :func:`validate_vrrp` returned.
    :raises ConfigError: naming ``vrrp.instance[N].interface``.
    """
    for inst in section.get("instance", ()):
        try:
            socket.if_nametoindex(inst["interface"])
        except OSError:
            raise ConfigError(f"no interface named {inst['interface']!r} on this host",
                              file=file,
                              key=f"vrrp.instance[{inst['index']}].interface") from None


def check_interfaces(config: Config) -> None:
    """:func:`check_vrrp_host` for a whole configuration (the speaker calls it at start).

    :raises ConfigError: naming ``vrrp.instance[N].interface``.
    """
    check_vrrp_host(config.core.get("vrrp") or {}, config.file)


def check_fast_takeover(config: Config) -> None:
    """``fast_takeover = "corosync"`` needs ``[corosync] enabled = true`` (the speaker
    calls it at start; the hint comes from the Corosync source's ``director.down``).

    :raises ConfigError: naming ``vrrp.instance[N].fast_takeover``.
    """
    for inst in instances(config):
        if inst.fast_takeover == "corosync" and not config["corosync"]["enabled"]:
            raise ConfigError('fast_takeover = "corosync" needs [corosync] enabled = true',
                              file=config.file, key=f"{inst.key}.fast_takeover")
