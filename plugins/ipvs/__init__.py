"""ipvs: program the kernel's IPVS table from cluster events (built-in plugin).

What keepalived's ``virtual_server`` blocks do, driven by node and VRRP events instead of
health-check scripts. Inert when the configuration has no ``[ipvs]`` section.
"""

from __future__ import annotations

from .model import IpvsConfig, parse
from .table import Dest, Entry, Op, OpKind, Plan, Service, ServiceKey, Table, diff

__all__ = ["IpvsConfig", "parse", "Dest", "Entry", "Op", "OpKind", "Plan", "Service",
           "ServiceKey", "Table", "diff"]
