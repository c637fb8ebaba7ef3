"""clusterbus.testing: fakes for testing plugins the way clusterbus tests itself.

- :mod:`clusterbus.testing.bus`: an engine and plugin host driven from a loop, without
  sockets, so a plugin's hooks can be exercised with real events.
- :mod:`clusterbus.testing.vrrp`: a fake link and a fake clock that connect VRRP routers
  (the sans-IO :class:`clusterbus.vrrp.Router`) with no sockets and no sleeps.

Nothing here is used by the daemon itself.
"""

from .bus import HookCall, PluginBus  # clusterbus.testing.bus

__all__ = ["HookCall", "PluginBus"]
