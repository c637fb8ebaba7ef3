"""The plugin manager: loads plugins from the ``clusterbus`` entry-point group and calls
hooks one implementation at a time, so one raising plugin cannot stop the others.

Built-in plugins come through the same entry-point group as third-party ones.

Every hook call is timed: a call longer than ``[plugins] slow_call_ms`` is logged with the
plugin's name and counted, since hooks run on the daemon's event loop and a slow one
delays everything else on it. Per plugin, :meth:`PluginHost.hook_stats` counts calls, slow
calls and failures and keeps the worst time (``clusterbus plugins``, ``clusterbus
status``). Log lines about slow and failing calls are rate-limited per plugin and hook
(:class:`~clusterbus.ratelimit.LogLimiter`): one line, with its traceback, per interval;
the rest are counted.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib.metadata
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError, LocalProtocolError, PluginError
from .ratelimit import LogLimiter

__all__ = ["PluginHost", "PluginInfo", "HookStats", "ENTRY_POINT_GROUP", "SLOW_CALL_MS",
           "hookimpl"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "clusterbus"

#: Marker for hook implementations: ``@clusterbus.hookimpl``.
hookimpl = pluggy.HookimplMarker("clusterbus")

#: Default of ``[plugins] slow_call_ms``: a hook call longer than this is logged and counted.
SLOW_CALL_MS = 50.0


class HookStats:
    """Running counters of one plugin's hook calls (updated on every call, so mutable)."""

    __slots__ = ("calls", "slow", "worst_ns", "worst_hook", "floor_ns")

    def __init__(self) -> None:
        #: hook calls made (those of the event call tables are added when a table is
        #: dropped; :meth:`PluginHost.hook_stats` adds the live tables')
        self.calls = 0
        self.slow = 0  #: calls longer than ``slow_call_ms``
        self.worst_ns = 0  #: the longest call, in nanoseconds
        self.worst_hook = ""  #: the hook of that call
        #: a call longer than this needs a look: min(worst_ns, the slow threshold)
        self.floor_ns = 0


#: One entry of an event call table: (plugin name, hook name, ``f(event, cluster)``).
EventCall = tuple[str, str, Callable[[Any, Any], Any]]
#: An entry of the table notify_event() runs: an :data:`EventCall` and its plugin's stats.
TimedCall = tuple[str, str, Callable[[Any, Any], Any], HookStats]


class _EventTable:
    """What notify_event() calls for one topic, and how many events it was run for (each
    run calls every entry once: the calls are counted per table, not per call)."""

    __slots__ = ("calls", "runs")

    def __init__(self, calls: tuple[TimedCall, ...]) -> None:
        self.calls = calls
        self.runs = 0


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What ``clusterbus plugins`` shows for one plugin."""

    name: str
    hooks: tuple[str, ...]
    failures: int
    distribution: str  #: the installed distribution that provides it ("" when registered by code)
    calls: int = 0  #: hook calls made
    slow: int = 0  #: hook calls longer than ``[plugins] slow_call_ms``
    worst_ms: float = 0.0  #: the longest hook call, in milliseconds
    worst_hook: str = ""  #: the hook of that call
    late: int = 0  #: awaited answers past their deadline (a takeover barrier's)


class PluginHost:
    """Owns the pluggy manager; the only place hooks are called from.

    :param enable: when non-empty, only these entry-point plugins are loaded.
    :param disable: entry-point plugins that are not loaded.
    :param slow_call_ms: a hook call longer than this is logged (rate-limited) and counted.
    :param log_interval: seconds between two log lines about one plugin's hook (slow or
        failing); the calls in between are counted, not logged.
    """

    def __init__(self, *, enable: Sequence[str] = (), disable: Sequence[str] = (),
                 slow_call_ms: float = SLOW_CALL_MS, log_interval: float = 10.0) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.enable = tuple(enable)
        self.disable = tuple(disable)
        self.slow_call_ms = float(slow_call_ms)
        self._slow_ns = int(self.slow_call_ms * 1_000_000)
        #: slow and failing calls: one line per plugin and hook per ``log_interval``
        self.limited = LogLimiter(log, interval=log_interval)
        #: hook exceptions per plugin name (service failures too)
        self.failures: Counter[str] = Counter()
        #: awaited answers not done within their deadline, per plugin name (a takeover
        #: barrier that took the answer as "no veto")
        self.late: Counter[str] = Counter()
        self._stats: dict[str, HookStats] = {}
        self._dists: dict[str, str] = {}
        self._historic: dict[str, dict[str, Any]] = {}
        # hook name -> implementations in call order; rebuilt when a plugin registers
        self._order: dict[str, list[pluggy.HookImpl]] = {}
        # event topic -> what notify_event() calls for it, in call order: the topic's own
        # hook's implementations, then clusterbus_event's. Cleared with _order.
        self._event_calls: dict[str, _EventTable] = {}
        #: ``observer(plugin, hook, seconds)`` after every hook call (:meth:`set_observer`)
        self.observer: Callable[[str, str, float], None] | None = None

    @classmethod
    def from_config(cls, config: Any) -> PluginHost:
        """A host set up from a configuration's ``[plugins]`` section."""
        section = config["plugins"]
        return cls(enable=section["enable"], disable=section["disable"],
                   slow_call_ms=section.get("slow_call_ms", SLOW_CALL_MS))

    # -- loading ------------------------------------------------------------------------

    def load_entrypoints(self, *, file: str = "<config>") -> list[str]:
        """Load installed plugins from the entry-point group, honouring enable/disable.

        :returns: the names loaded.
        :raises ConfigError: ``enable``/``disable`` name a plugin that is not installed.
        :raises PluginError: a plugin fails to import or register.
        """
        eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        for key, names in (("plugins.enable", self.enable), ("plugins.disable", self.disable)):
            missing = sorted(set(names) - set(eps))
            if missing:
                raise ConfigError(
                    f"no installed plugin named {', '.join(missing)}; installed: "
                    f"{', '.join(sorted(eps)) or 'none'}",
                    file=file, key=key,
                )
        loaded = []
        for name, ep in sorted(eps.items()):
            if name in self.disable or (self.enable and name not in self.enable):
                log.info("plugin %s disabled by configuration", name)
                continue
            if self.pm.get_plugin(name) is not None:
                continue
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ""
            origin = f"entry point {ep.value}" + (f", distribution {dist}" if dist else "")
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(name, f"cannot import {ep.value}: {exc!r}"
                                  + (f" (distribution {dist})" if dist else "")) from exc
            self.register(plugin, name, origin=origin)
            self._dists[name] = ep.dist.name if ep.dist else ""
            loaded.append(name)
        return loaded

    def register(self, plugin: object, name: str, *, origin: str = "") -> None:
        """Register a plugin object (module, class instance) under ``name``.

        When the daemon has already started, the plugin's ``clusterbus_startup`` (a historic
        hook) is called at once with the live cluster.

        :param origin: where the plugin comes from (entry point and distribution), for
            error messages.
        :raises PluginError: the plugin implements an unknown hook (the message names the
            plugin, the hook and the closest known hook) or a wrapper on a notification
            hook.
        """
        where = f" ({origin})" if origin else ""
        unknown = _unknown_hooks(self.pm, plugin)
        if unknown:
            raise PluginError(name, "; ".join(map(_did_you_mean, unknown))
                              + f" ({origin + '; ' if origin else ''}every hook is in "
                              "clusterbus.hookspecs)")
        self._forget_order()
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(name, f"{exc}{where}") from exc
        try:
            # an implementation of a hook that has no spec is a typo: refuse it now
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            self._forget_order()
            raise PluginError(name, f"{exc}{where} (known hooks: see clusterbus.hookspecs)") from exc
        for impl in self._impls_of(name):
            if impl.hookwrapper or impl.wrapper:
                self.pm.unregister(name=name)
                self._forget_order()
                raise PluginError(name, "hook wrappers are not supported; implement the hook itself")
        for hook_name, kwargs in self._historic.items():
            for impl in self._impls(hook_name):
                if impl.plugin_name == name:
                    self._call_impl(hook_name, impl, kwargs)

    def unregister(self, name: str) -> bool:
        """Unregister the plugin registered under ``name`` (its hooks are no longer called).

        :returns: whether one was registered under that name.
        """
        if self.pm.get_plugin(name) is None:
            return False
        self.pm.unregister(name=name)
        self._forget_order()
        self._dists.pop(name, None)
        return True

    def _forget_order(self) -> None:
        # the set of implementations changed: every cached call order is stale
        self._order.clear()
        for table in self._event_calls.values():
            for call in table.calls:
                call[3].calls += table.runs
        self._event_calls.clear()

    def set_observer(self, observer: Callable[[str, str, float], None] | None) -> None:
        """Time every hook call from now on: ``observer(plugin, hook, seconds)`` after each
        one, failed calls included (the metrics endpoint's per-plugin histogram). ``None``
        stops timing; untimed calls cost nothing extra."""
        self.observer = observer
        self._forget_order()

    def _impls_of(self, name: str) -> Iterable[pluggy.HookImpl]:
        plugin = self.pm.get_plugin(name)
        for caller in self.pm.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin_name == name:
                    yield impl

    # -- calling ------------------------------------------------------------------------

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        impls = self._order.get(hook_name)
        if impls is None:
            caller = getattr(self.pm.hook, hook_name, None)
            if caller is None:
                raise LocalProtocolError(f"no such hook {hook_name!r}")
            # pluggy keeps implementations in reverse call order.
            impls = self._order[hook_name] = list(reversed(caller.get_hookimpls()))
        return impls

    def _call_impl(self, hook_name: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        start = perf_counter_ns()
        try:
            return impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception:
            self._failed(impl.plugin_name, hook_name)
            return None
        finally:
            self._timed(self._stats_of(impl.plugin_name), impl.plugin_name, hook_name,
                        perf_counter_ns() - start)

    def _stats_of(self, name: str) -> HookStats:
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = HookStats()
        return stats

    def _failed(self, name: str, hook_name: str) -> None:
        """Count a failed call; log it with its traceback (called inside ``except``)."""
        self.failures[name] += 1
        self.limited.error((name, hook_name, "failed"), "plugin %s failed in %s", name,
                           hook_name, exc_info=True)

    def _timed(self, stats: HookStats, name: str, hook_name: str, ns: int) -> None:
        stats.calls += 1
        if self.observer is not None:
            self.observer(name, hook_name, ns / 1e9)
        if ns > stats.floor_ns:
            self._notable(stats, name, hook_name, ns)

    def _notable(self, stats: HookStats, name: str, hook_name: str, ns: int) -> None:
        """A call over ``stats.floor_ns``: a new worst, or slow, or both."""
        if ns > stats.worst_ns:
            stats.worst_ns = ns
            stats.worst_hook = hook_name
        stats.floor_ns = min(stats.worst_ns, self._slow_ns)
        if ns <= self._slow_ns:
            return
        stats.slow += 1
        self.limited.warning(
            (name, hook_name, "slow"),
            "plugin %s: %s took %.1f ms (over [plugins] slow_call_ms = %g): hooks run on the "
            "daemon's event loop; slow work belongs in a service", name, hook_name, ns / 1e6,
            self.slow_call_ms)

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a hook, each isolated.

        :returns: ``(plugin name, result)`` for every implementation, in call order; a
            failed implementation gives ``None``.
        """
        return [(impl.plugin_name, self._call_impl(hook_name, impl, kwargs))
                for impl in self._impls(hook_name)]

    async def settle(self, hook_name: str, answers: list[tuple[str, Any]],
                     timeout: float) -> list[tuple[str, Any]]:
        """Await the awaitable results of :meth:`call_each`, together, for at most
        ``timeout`` seconds (the takeover barrier of ``clusterbus_vrrp_prepare_master``).

        :returns: ``answers`` with each awaitable replaced by its result. One that raises
            is logged with the plugin's name and counted as a failure, like a raising
            hook, and gives ``None``; one not done within ``timeout`` is cancelled, logged
            (rate-limited) and gives ``None``. Plain results are kept as they are.
        """
        tasks: dict[int, asyncio.Future[Any]] = {
            i: asyncio.ensure_future(a) for i, (_, a) in enumerate(answers)
            if inspect.isawaitable(a)}
        if tasks:
            _done, late = await asyncio.wait(tasks.values(), timeout=max(0.0, timeout))
            for t in late:
                t.cancel()
        out: list[tuple[str, Any]] = []
        for i, (name, result) in enumerate(answers):
            task = tasks.get(i)
            if task is None:
                out.append((name, result))
                continue
            value = None
            if task.cancelled() or not task.done():
                self.late[name] += 1
                self.limited.warning((name, hook_name, "late"), "plugin %s: %s did not finish "
                                     "within %.3f s; taken as no answer", name, hook_name,
                                     timeout)
            elif task.exception() is not None:
                self.failures[name] += 1
                self.limited.error((name, hook_name, "failed"), "plugin %s failed in %s: %r",
                                   name, hook_name, task.exception())
            else:
                value = task.result()
            out.append((name, value))
        return out

    def notify_event(self, event: Any, cluster: Any) -> None:
        """Call the hooks an event reaches: its topic's own hook (``clusterbus_node_up``
        for ``node.up``, see :data:`~clusterbus.hookspecs.TOPIC_HOOKS`), then
        ``clusterbus_event``; every implementation isolated like :meth:`call_each`,
        without collecting results.

        This is the per-event path: one call table per topic, worked out once (again
        after a plugin registers), holding only the implementations there are. Each call
        is timed like every other hook call.
        """
        table = self._event_calls.get(event.TOPIC)
        if table is None:
            table = self._event_calls[event.TOPIC] = _EventTable(tuple(
                (name, hook_name, function, self._stats_of(name))
                for name, hook_name, function in self._event_table(event.TOPIC)))
        table.runs += 1
        clock = perf_counter_ns
        # The cheapest timing that still sees every call: one clock read per call (a call
        # ends when the next starts; a read costs about what a no-op implementation
        # does), and one comparison: only a call longer than its plugin's worst so far
        # or than the slow threshold (floor_ns) is looked at.
        start = clock()
        for name, hook_name, function, stats in table.calls:
            try:
                function(event, cluster)
            except Exception:
                self._failed(name, hook_name)
            end = clock()
            if end - start > stats.floor_ns:
                self._notable(stats, name, hook_name, end - start)
            start = end

    def _event_table(self, topic: str) -> tuple[EventCall, ...]:
        hooks = (hookspecs.TOPIC_HOOKS[topic],) if topic in hookspecs.TOPIC_HOOKS else ()
        observe = self.observer
        return tuple((impl.plugin_name, hook_name,
                      _event_caller(impl) if observe is None
                      else _observed(_event_caller(impl), impl.plugin_name, hook_name, observe))
                     for hook_name in (*hooks, "clusterbus_event")
                     for impl in self._impls(hook_name))

    def call_first(self, hook_name: str, **kwargs: Any) -> Any:
        """Call implementations in order until one returns something other than ``None``."""
        for impl in self._impls(hook_name):
            result = self._call_impl(hook_name, impl, kwargs)
            if result is not None:
                return result
        return None

    def configure(self, config: Any, cluster: Any) -> None:
        """Call ``clusterbus_configure`` on every plugin with its own section.

        :raises ConfigError: a section names no loaded plugin, or a plugin refused its section.
        :raises PluginError: a plugin failed otherwise.
        """
        names = set(self.names())
        for section in config.plugin_sections:
            if section not in names:
                if section in self.disable or (self.enable and section not in self.enable):
                    log.info("section [%s] ignored: plugin %s is disabled", section, section)
                    continue
                raise ConfigError(
                    f"unknown section: no core section and no loaded plugin of that name "
                    f"(plugins: {', '.join(sorted(names)) or 'none'})",
                    file=config.file, key=section,
                )
        for impl in self._impls("clusterbus_configure"):
            start = perf_counter_ns()
            try:
                impl.function(*_section_args(impl, config, cluster))
            except ConfigError as exc:
                raise exc.with_file(config.file) from None
            except Exception as exc:
                raise PluginError(impl.plugin_name, f"clusterbus_configure failed: {exc!r}") from exc
            finally:
                self._timed(self._stats_of(impl.plugin_name), impl.plugin_name,
                            "clusterbus_configure", perf_counter_ns() - start)

    def reload(self, config: Any, cluster: Any) -> dict[str, str | None]:
        """Call ``clusterbus_reload`` on every plugin with its own section, each isolated.

        :returns: plugin name -> ``None`` (reloaded) or the reason it refused or failed.
        """
        out: dict[str, str | None] = {}
        for impl in self._impls("clusterbus_reload"):
            start = perf_counter_ns()
            try:
                impl.function(*_section_args(impl, config, cluster))
                out[impl.plugin_name] = None
            except ConfigError as exc:
                out[impl.plugin_name] = str(exc.with_file(config.file))
                log.error("reload: plugin %s refused its new section, keeping the old: %s",
                          impl.plugin_name, out[impl.plugin_name])
            except Exception as exc:
                out[impl.plugin_name] = repr(exc)
                self._failed(impl.plugin_name, "clusterbus_reload")
            finally:
                self._timed(self._stats_of(impl.plugin_name), impl.plugin_name,
                            "clusterbus_reload", perf_counter_ns() - start)
        return out

    def call_historic(self, hook_name: str, **kwargs: Any) -> None:
        """Call a historic hook now, and remember it for plugins registered later."""
        self._historic[hook_name] = kwargs
        self.call_each(hook_name, **kwargs)

    # -- introspection ------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the registered plugins."""
        return sorted(n for n, _ in self.pm.list_name_plugin())

    def hook_stats(self) -> dict[str, dict[str, Any]]:
        """Per registered plugin: ``calls``, ``slow`` (calls over ``slow_call_ms``),
        ``failures`` (hook and service exceptions), ``late`` (awaited answers past their
        deadline, e.g. a takeover barrier), ``worst_ms`` and ``worst_hook`` (the longest
        call). Plain data, for ``clusterbus status``."""
        live: Counter[str] = Counter()
        for table in self._event_calls.values():
            for call in table.calls:
                live[call[0]] += table.runs
        out: dict[str, dict[str, Any]] = {}
        for name in self.names():
            stats = self._stats_of(name)
            out[name] = {"calls": stats.calls + live[name], "slow": stats.slow,
                         "failures": self.failures[name], "late": self.late[name],
                         "worst_ms": round(stats.worst_ns / 1e6, 3),
                         "worst_hook": stats.worst_hook}
        return out

    def describe(self) -> list[PluginInfo]:
        """One :class:`PluginInfo` per registered plugin, with its :meth:`hook_stats`."""
        out = []
        stats = self.hook_stats()
        for name in self.names():
            hooks = sorted({caller.name
                            for caller in self.pm.get_hookcallers(self.pm.get_plugin(name)) or ()
                            for impl in caller.get_hookimpls() if impl.plugin_name == name})
            st = stats[name]
            out.append(PluginInfo(name, tuple(hooks), st["failures"], self._dists.get(name, ""),
                                  calls=st["calls"], slow=st["slow"], worst_ms=st["worst_ms"],
                                  worst_hook=st["worst_hook"], late=st["late"]))
        return out


#: The names of every hook (the functions of :mod:`clusterbus.hookspecs`).
HOOK_NAMES: tuple[str, ...] = tuple(sorted(
    n for n in vars(hookspecs) if n.startswith("clusterbus_") and callable(getattr(hookspecs, n))))


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """The hook names ``plugin`` implements (``@hookimpl``) that no spec declares."""
    out = []
    for attr in dir(plugin):
        try:
            opts = pm.parse_hookimpl_opts(plugin, attr)
        except Exception:  # an attribute that cannot be read is pluggy's to report
            continue
        if opts is None or opts.get("optionalhook"):
            continue
        hook = opts.get("specname") or attr
        if hook not in HOOK_NAMES:
            out.append(hook)
    return sorted(out)


def _did_you_mean(hook: str) -> str:
    """``hook`` is no clusterbus hook: say so, with the closest hook name."""
    # compared without the common prefix, which would make every name look close
    stem = hook.removeprefix("clusterbus_")
    close = difflib.get_close_matches(stem, [h.removeprefix("clusterbus_") for h in HOOK_NAMES],
                                      n=1, cutoff=0.6)
    hint = f"did you mean clusterbus_{close[0]}?" if close else "no hook has a similar name"
    return f"{hook} is not a clusterbus hook: {hint}"


def _event_caller(impl: pluggy.HookImpl) -> Callable[[Any, Any], Any]:
    """``impl``'s function as a ``(event, cluster)`` callable, with no dict or list built per
    event. Event hooks take ``(event, cluster)``; pluggy lets an implementation take any
    subset in any order, so these five shapes are all there are."""
    f = impl.function
    shapes: dict[tuple[str, ...], Callable[[Any, Any], Any]] = {
        ("event", "cluster"): f,  # nearly every implementation: called directly
        ("cluster", "event"): lambda event, cluster: f(cluster, event),
        ("event",): lambda event, cluster: f(event),
        ("cluster",): lambda event, cluster: f(cluster),
        (): lambda event, cluster: f(),
    }
    return shapes[tuple(impl.argnames)]


def _observed(function: Callable[[Any, Any], Any], plugin: str, hook: str,
           observe: Callable[[str, str, float], None]) -> Callable[[Any, Any], Any]:
    """``function`` reporting its duration to ``observe``, when it raises too."""
    def call(event: Any, cluster: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(event, cluster)
        finally:
            observe(plugin, hook, time.perf_counter() - start)

    return call


def _section_args(impl: pluggy.HookImpl, config: Any, cluster: Any) -> list[Any]:
    """The arguments of ``clusterbus_configure``/``clusterbus_reload`` that ``impl``
    takes, its own plugin section included."""
    kwargs = {"config": config, "section": config.plugin_sections.get(impl.plugin_name),
              "cluster": cluster}
    return [kwargs[a] for a in impl.argnames]
