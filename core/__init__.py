"""clusterbus: a cluster-membership event framework for Linux load-balancer directors.

This package (the ``core/`` folder) holds the public API: the ``hookimpl`` marker, the
event classes, the membership view, hook specifications, the plugin host, configuration,
membership sources, the VRRP speaker, the daemon and the CLI. ZeroMQ lives in
:mod:`clusterbus.bus`, built-in plugins in :mod:`clusterbus.plugins`.

The names below (``__all__``) are what a plugin needs, the built-in ones included: they
import nothing else from clusterbus but names a module lists in its ``__all__``, and never
another plugin's module (tests/unit/test_public_api.py checks it). Plugin tests use
:mod:`clusterbus.testing`.
"""

from __future__ import annotations

from .config import Config, Key, between, load_config, validate_table
from .engine import Cluster, Engine
from .errors import (
    ClusterbusError,
    ConfigError,
    DecodeError,
    InvalidEvent,
    LocalProtocolError,
    PluginError,
    RemoteProtocolError,
)
from .events import (
    AddressConflict,
    Event,
    IpvsApplied,
    MembershipEvent,
    NodeComingUp,
    NodeDown,
    NodeGoingDown,
    NodemapChanged,
    NodeUp,
    VipAcquired,
    VipReleased,
    VrrpTransition,
    event_from_dict,
    register_event,
)
from .nodemap import Conflict, NodeMap
from .nodemapconfig import NodemapConfig
from .pluginhost import PluginHost, hookimpl
from .view import MembershipView, NodeInfo, NodeReport, NodeState

__version__ = "0.1.0"

__all__ = [
    "AddressConflict",
    "Cluster",
    "ClusterbusError",
    "Config",
    "ConfigError",
    "Conflict",
    "DecodeError",
    "Engine",
    "Event",
    "InvalidEvent",
    "IpvsApplied",
    "Key",
    "LocalProtocolError",
    "MembershipEvent",
    "MembershipView",
    "NodeComingUp",
    "NodeDown",
    "NodeGoingDown",
    "NodeInfo",
    "NodeMap",
    "NodeReport",
    "NodeState",
    "NodeUp",
    "NodemapChanged",
    "NodemapConfig",
    "PluginError",
    "PluginHost",
    "RemoteProtocolError",
    "VipAcquired",
    "VipReleased",
    "VrrpTransition",
    "between",
    "event_from_dict",
    "hookimpl",
    "load_config",
    "register_event",
    "validate_table",
]
