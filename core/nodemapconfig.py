"""The node map's configuration: the ``[nodemap]`` section, read in one place.

The built-in ``nodemap`` plugin loads these addresses into the live node map
(:attr:`clusterbus.Cluster.nodemap`) at start-up; readers that cannot wait for it (the
IPVS plugin validating its section, ``clusterbus nodemap lookup --local``, ``clusterbus
ipvs``) read them from the file with :meth:`NodemapConfig.from_config`. Standard library
only::

    [nodemap]
    learn = true                 # take addresses from node-up events (default true)
    forget_after = 3600          # seconds a DOWN node keeps its learned addresses

    [nodemap.nodes]
    1 = ["10.0.0.1", "fd00::1"]
    2 = ["10.0.0.2"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import Key, between, validate_table
from .errors import ConfigError, InvalidEvent
from .events import MAX_NODE_ADDRS, node_addr
from .nodemap import FORGET_AFTER

if TYPE_CHECKING:
    from .config import Config

__all__ = ["NodemapConfig", "SECTION", "SCHEMA"]

#: The section's name (the built-in plugin's entry-point name).
SECTION = "nodemap"

SCHEMA = {
    "learn": Key(bool, True, None, "learn node addresses from node-up events"),
    "nodes": Key(dict, {}, None, "table: node number -> array of addresses"),
    "forget_after": Key(float, FORGET_AFTER, between(1, 10 * 365 * 86400),
                        "seconds a DOWN node keeps its learned addresses"),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class NodemapConfig:
    """A validated ``[nodemap]`` section.

    :param learn: take addresses from node-up events.
    :param nodes: node number -> its configured canonical addresses (no address is given
        to two nodes; at most :data:`~clusterbus.events.MAX_NODE_ADDRS` each).
    :param forget_after: seconds a DOWN node keeps its learned addresses (configured ones
        are never forgotten).
    """

    learn: bool = True
    nodes: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    forget_after: float = FORGET_AFTER

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, *, file: str) -> NodemapConfig:
        """Validate the ``[nodemap]`` table (``None``: the file has none, defaults apply).

        :raises ConfigError: naming ``file`` and the key (``nodemap.nodes.2[0]``).
        """
        table = validate_table(section or {}, SCHEMA, file=file, prefix=SECTION)
        return cls(learn=table["learn"], nodes=_parse_nodes(table["nodes"], file=file),
                   forget_after=float(table["forget_after"]))

    @classmethod
    def from_config(cls, config: Config) -> NodemapConfig:
        """The ``[nodemap]`` section of a configuration.

        :raises ConfigError: the section is malformed (naming ``config.file`` and the key).
        """
        return cls.from_section(config.plugin_sections.get(SECTION), file=config.file)


def _parse_nodes(nodes: Mapping[str, Any], *, file: str) -> dict[int, tuple[str, ...]]:
    """Validate ``[nodemap.nodes]``: keys are node numbers, values arrays of addresses.

    :raises ConfigError: a key that is not a node number, a value that is not an array of
        IP addresses, or one address given to two nodes.
    """
    out: dict[int, tuple[str, ...]] = {}
    owner: dict[str, int] = {}
    for key, addrs in nodes.items():
        path = f"{SECTION}.nodes.{key}"
        if not key.isdigit() or not 0 < int(key) < 2**32:
            raise ConfigError("expected a node number (1 .. 4294967295) as the key",
                              file=file, key=path)
        node = int(key)
        if isinstance(addrs, str) or not isinstance(addrs, list):
            raise ConfigError(f"expected an array of IP addresses, got {addrs!r}", file=file, key=path)
        if len(addrs) > MAX_NODE_ADDRS:
            raise ConfigError(f"{len(addrs)} addresses, at most {MAX_NODE_ADDRS} per node",
                              file=file, key=path)
        canon = []
        for i, addr in enumerate(addrs):
            try:
                a = node_addr(addr, "address")  # the membership boundary's one rule
            except InvalidEvent as exc:
                raise ConfigError(str(exc), file=file, key=f"{path}[{i}]") from None
            if a in owner and owner[a] != node:
                raise ConfigError(f"address {a} is already given to node {owner[a]}",
                                  file=file, key=f"{path}[{i}]")
            owner[a] = node
            canon.append(a)
        out[node] = tuple(dict.fromkeys(canon))
    return out
