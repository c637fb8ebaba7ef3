"""Test a plugin the way clusterbus tests itself: a real engine and plugin host, driven
from your test, with no daemon and no sockets unless you ask for them.

:class:`PluginBus` builds what the daemon builds around plugins (the
:class:`~clusterbus.PluginHost`, the :class:`~clusterbus.Engine` and its live
:class:`~clusterbus.Cluster`), registers your plugins, runs their
``clusterbus_configure`` with the configuration you give, and lets you feed membership
reports and events. It records what came out: every event dispatched (``bus.events``, in
seq order, the ones your plugin emitted included) and every notification hook called
(``bus.calls``). Failures and slow calls are counted exactly as in the daemon
(``bus.failures``, ``bus.stats()``).

::

    from clusterbus.testing.bus import PluginBus

    def test_my_plugin_sees_node_down():
        mine = MyPlugin()
        bus = PluginBus({"mine": mine}, config={"mine": {"threshold": 3}})
        bus.node_up(3, "10.0.0.3")
        bus.node_down(3)
        assert bus.topics() == ["node.up", "node.down"]
        assert bus.failures["mine"] == 0

Plugins with services (``clusterbus_services``) run them inside ``async with
bus.running():``, in a task group as the daemon does; ``bus.running(zmq=True)`` also runs
a real :class:`~clusterbus.bus.service.BusService` on 127.0.0.1 (ephemeral ports), so
ZeroMQ clients can subscribe to what the engine publishes. Wrap the test's coroutine in
:func:`run`, which bounds every wait (:data:`LIMIT`), and wait for effects with
:func:`until` rather than sleeping a guessed time.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import Config, parse_config
from ..engine import Cluster, Engine
from ..events import Event, MembershipEvent, VrrpTransition
from ..pluginhost import SLOW_CALL_MS, PluginHost, hookimpl
from ..view import NodeReport, NodeState

if TYPE_CHECKING:
    from ..bus.service import BusService

__all__ = ["LIMIT", "LOOPBACK", "SPY", "HookCall", "PluginBus", "bus_service", "run", "until"]

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=Event)

#: Seconds: the most :func:`run` waits for a test's coroutine (a bound, not a speed check).
LIMIT = 20.0
#: ``[bus]`` endpoints on 127.0.0.1 with ports the kernel picks (ingest is an ``ipc://``
#: socket in a private directory: TCP ingest needs CURVE).
LOOPBACK = {"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"}
#: The name the recording plugin is registered under (left out of :meth:`PluginBus.stats`).
SPY = "testing.spy"


def run(coro: Coroutine[Any, Any, T], *, limit: float = LIMIT) -> T:
    """``asyncio.run(coro)``, failing with ``TimeoutError`` after ``limit`` seconds."""
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await coro
    return asyncio.run(bounded())


async def until(predicate: Callable[[], bool], *, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` is true, polling every ``interval`` seconds (bounded by
    the caller's :func:`run`)."""
    while not predicate():
        await asyncio.sleep(interval)


@asynccontextmanager
async def bus_service(engine: Engine, *, status_provider: Callable[[], dict[str, Any]]
                      | None = None, **options: Any) -> AsyncIterator[BusService]:
    """A running :class:`~clusterbus.bus.service.BusService` around ``engine``: ``[bus]``
    ``options`` over :data:`LOOPBACK` and heartbeats every 0.05 s. Bound when this yields
    (``svc.endpoints`` holds the real ports); a bind failure is raised here."""
    from ..bus.service import BusService  # ZeroMQ only for the tests that ask for it

    tmp = tempfile.mkdtemp(prefix="clusterbus-test-")
    cfg = parse_config({"bus": {**LOOPBACK, "ingest": f"ipc://{tmp}/ingest",
                                "heartbeat_interval": 0.05, **options}}, file="<test>")
    svc = BusService(engine, cfg, status_provider=status_provider)
    task = asyncio.create_task(svc.run())
    try:
        ready = asyncio.create_task(svc.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # bind failed: raise it
        yield svc
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class HookCall:
    """One notification hook call the bus saw: the hook's name and its event."""

    hook: str
    event: Event


class _Spy:
    """Records every notification hook call, after every other plugin (``trylast``)."""

    def __init__(self, calls: list[HookCall]) -> None:
        self.calls = calls

    @hookimpl(trylast=True)
    def clusterbus_node_up(self, event: Event) -> None:
        self.calls.append(HookCall(hook="clusterbus_node_up", event=event))

    @hookimpl(trylast=True)
    def clusterbus_node_down(self, event: Event) -> None:
        self.calls.append(HookCall(hook="clusterbus_node_down", event=event))

    @hookimpl(trylast=True)
    def clusterbus_node_coming_up(self, event: Event) -> None:
        self.calls.append(HookCall(hook="clusterbus_node_coming_up", event=event))

    @hookimpl(trylast=True)
    def clusterbus_node_going_down(self, event: Event) -> None:
        self.calls.append(HookCall(hook="clusterbus_node_going_down", event=event))

    @hookimpl(trylast=True)
    def clusterbus_vrrp_transition(self, event: Event) -> None:
        self.calls.append(HookCall(hook="clusterbus_vrrp_transition", event=event))

    @hookimpl(trylast=True)
    def clusterbus_event(self, event: Event) -> None:
        self.calls.append(HookCall(hook="clusterbus_event", event=event))


class PluginBus:
    """An engine and plugin host with the given plugins, configured and ready for events.

    :param plugins: plugin name -> plugin object (a module or an instance), registered in
        this order (so, as in pluggy, the last one's hooks run first unless
        ``tryfirst``/``trylast`` say otherwise).
    :param config: the configuration: a :class:`~clusterbus.Config`, or a mapping as TOML
        would give it (``{"mine": {"key": 1}}``); each plugin's ``clusterbus_configure``
        gets its section. ``None``: an empty file.
    :param node: this director's node number (``[daemon] node`` of a mapping config that
        does not set it).
    :param clock: UNIX time for the events' ``time`` (default :func:`time.time`).
    :param slow_call_ms: as ``[plugins] slow_call_ms``.
    :raises ConfigError: the configuration or a plugin's section is invalid.
    :raises PluginError: a plugin failed to register or to configure.
    """

    def __init__(self, plugins: Mapping[str, object] | None = None, *,
                 config: Config | Mapping[str, Any] | None = None, node: int = 1,
                 clock: Callable[[], float] = time.time,
                 slow_call_ms: float = SLOW_CALL_MS) -> None:
        if not isinstance(config, Config):
            data = dict(config or {})
            data["daemon"] = {"node": node, **data.get("daemon", {})}
            config = parse_config(data, file="<test>")
        self.config = config
        self.host = PluginHost(slow_call_ms=slow_call_ms)
        self.engine = Engine(origin=config.node, plugins=self.host, clock=clock)
        #: every event dispatched, in seq order (what the daemon would publish)
        self.events: list[Event] = []
        self.engine.sinks.append(self.events.append)
        #: every notification hook called, in order
        self.calls: list[HookCall] = []
        self.host.register(_Spy(self.calls), SPY)
        for name, plugin in (plugins or {}).items():
            self.host.register(plugin, name)
        self.host.configure(config, self.cluster)
        self.started = False

    @property
    def cluster(self) -> Cluster:
        """The live cluster the plugins see."""
        return self.engine.cluster

    @property
    def failures(self) -> Counter[str]:
        """Hook (and service) exceptions per plugin name."""
        return self.host.failures

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per plugin: calls, slow calls, failures, worst time (see
        :meth:`clusterbus.PluginHost.hook_stats`)."""
        return {k: v for k, v in self.host.hook_stats().items() if k != SPY}

    # -- feeding ------------------------------------------------------------------------

    def start(self) -> None:
        """Call ``clusterbus_startup`` (once), as the daemon does when it is up."""
        if not self.started:
            self.started = True
            self.host.call_historic("clusterbus_startup", cluster=self.cluster)

    def report(self, state: NodeState, node: int, addrs: tuple[str, ...] = (), *,
               incarnation: int = 0, reason: str = "test") -> MembershipEvent | None:
        """A membership source's report, through the engine (the view judges it).

        :returns: the event, or ``None`` when the view did not change (no hook called).
        """
        return self.engine.report(NodeReport(state=state, node=node, addrs=addrs,
                                             incarnation=incarnation, reason=reason))

    def node_up(self, node: int, *addrs: str, incarnation: int = 0,
                reason: str = "test") -> MembershipEvent | None:
        """Report ``node`` UP with these addresses."""
        return self.report(NodeState.UP, node, addrs, incarnation=incarnation, reason=reason)

    def node_down(self, node: int, *, reason: str = "test") -> MembershipEvent | None:
        """Report ``node`` DOWN."""
        return self.report(NodeState.DOWN, node, reason=reason)

    def node_coming_up(self, node: int, *addrs: str, reason: str = "test") -> MembershipEvent | None:
        """Report ``node`` COMING_UP (joining, not a member yet)."""
        return self.report(NodeState.COMING_UP, node, addrs, reason=reason)

    def node_going_down(self, node: int, *, reason: str = "test") -> MembershipEvent | None:
        """Report ``node`` GOING_DOWN (announced it is leaving)."""
        return self.report(NodeState.GOING_DOWN, node, reason=reason)

    def vrrp(self, instance: str, new: str, *, old: str = "BACKUP", vrid: int = 1,
             priority: int = 100, reason: str = "test", source: str = "speaker") -> VrrpTransition:
        """A VRRP transition of ``instance`` to ``new`` (``MASTER``, ``BACKUP``, ``FAULT``)."""
        return self.engine.publish(VrrpTransition, instance=instance, vrid=vrid, old=old,
                                   new=new, priority=priority, reason=reason, source=source)

    def emit(self, event_class: type[E], **fields: Any) -> E:
        """Produce any non-membership event (stamped like the daemon's)."""
        return self.engine.publish(event_class, **fields)

    def reload(self, config: Config | Mapping[str, Any]) -> dict[str, str | None]:
        """``clusterbus_reload`` with a new configuration.

        :returns: plugin name -> ``None`` (reloaded) or why it refused or failed.
        """
        if not isinstance(config, Config):
            data = dict(config)
            data["daemon"] = {"node": self.engine.origin, **data.get("daemon", {})}
            config = parse_config(data, file="<test>")
        self.config = config
        return {k: v for k, v in self.host.reload(config, self.cluster).items() if k != SPY}

    def status(self) -> dict[str, Any]:
        """What ``clusterbus_status`` returns per plugin (plugins returning ``None`` left out)."""
        return {name: data for name, data in
                self.host.call_each("clusterbus_status", cluster=self.cluster)
                if data is not None}

    # -- observing ----------------------------------------------------------------------

    def topics(self) -> list[str]:
        """The topics of :attr:`events`, in order."""
        return [e.topic for e in self.events]

    def hooks(self) -> list[str]:
        """The notification hooks called, in order (``clusterbus_event`` included)."""
        return [c.hook for c in self.calls]

    def clear(self) -> None:
        """Forget the recorded events and hook calls (counters stay)."""
        self.events.clear()
        self.calls.clear()

    # -- running services -----------------------------------------------------------------

    @asynccontextmanager
    async def running(self, *, zmq: bool = False,
                      **bus_options: Any) -> AsyncIterator[BusService | None]:
        """Start the plugins (``clusterbus_startup``) and run their services, as the
        daemon does, until the block ends; then cancel them and call
        ``clusterbus_shutdown``. A service that raises is logged and counted in
        :attr:`failures`.

        :param zmq: also run a loopback :func:`bus_service` (yielded; else ``None``).
        :param bus_options: ``[bus]`` options for it.
        """
        self.start()
        tasks = [asyncio.create_task(self._service(name, fn), name=f"{name}:{fn}")
                 for name, fns in self.host.call_each("clusterbus_services", cluster=self.cluster)
                 for fn in fns or ()]
        try:
            if zmq:
                async with bus_service(self.engine, **bus_options) as svc:
                    yield svc
            else:
                yield None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.host.call_each("clusterbus_shutdown", cluster=self.cluster)

    async def _service(self, plugin: str, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.host.failures[plugin] += 1
            log.exception("plugin %s: service %s failed", plugin, getattr(fn, "__name__", fn))
