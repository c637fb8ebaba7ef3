"""The plugin manager: loads plugins from the ``clusterbus`` entry-point group and calls
hooks one implementation at a time, so one raising plugin cannot stop the others.

Built-in plugins come through the same entry-point group as third-party ones.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError, LocalProtocolError, PluginError

__all__ = ["PluginHost", "PluginInfo", "ENTRY_POINT_GROUP", "hookimpl"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "clusterbus"

#: Marker for hook implementations: ``@clusterbus.hookimpl``.
hookimpl = pluggy.HookimplMarker("clusterbus")

#: One entry of an event call table: (plugin name, hook name, ``f(event, cluster)``).
EventCall = tuple[str, str, Callable[[Any, Any], Any]]


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What ``clusterbus plugins`` shows for one plugin."""

    name: str
    hooks: tuple[str, ...]
    failures: int
    distribution: str  #: the installed distribution that provides it ("" when registered by code)


class PluginHost:
    """Owns the pluggy manager; the only place hooks are called from.

    :param enable: when non-empty, only these entry-point plugins are loaded.
    :param disable: entry-point plugins that are not loaded.
    """

    def __init__(self, *, enable: Sequence[str] = (), disable: Sequence[str] = ()) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.enable = tuple(enable)
        self.disable = tuple(disable)
        #: hook exceptions per plugin name
        self.failures: Counter[str] = Counter()
        self._dists: dict[str, str] = {}
        self._historic: dict[str, dict[str, Any]] = {}
        # hook name -> implementations in call order; rebuilt when a plugin registers
        self._order: dict[str, list[pluggy.HookImpl]] = {}
        # event topic -> what notify_event() calls for it, in call order: the topic's own
        # hook's implementations, then clusterbus_event's. Cleared with _order.
        self._event_calls: dict[str, tuple[EventCall, ...]] = {}
        #: ``observer(plugin, hook, seconds)`` after every hook call (:meth:`set_observer`)
        self.observer: Callable[[str, str, float], None] | None = None

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
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(name, f"cannot import {ep.value}: {exc!r}") from exc
            self.register(plugin, name)
            self._dists[name] = ep.dist.name if ep.dist else ""
            loaded.append(name)
        return loaded

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object (module, class instance) under ``name``.

        When the daemon has already started, the plugin's ``clusterbus_startup`` (a historic
        hook) is called at once with the live cluster.

        :raises PluginError: the plugin implements an unknown hook or a wrapper on a
            notification hook.
        """
        self._forget_order()
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(name, str(exc)) from exc
        try:
            # an implementation of a hook that has no spec is a typo: refuse it now
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            self._forget_order()
            raise PluginError(name, f"{exc} (known hooks: see clusterbus.hookspecs)") from exc
        for impl in self._impls_of(name):
            if impl.hookwrapper or impl.wrapper:
                self.pm.unregister(name=name)
                self._forget_order()
                raise PluginError(name, "hook wrappers are not supported; implement the hook itself")
        for hook_name, kwargs in self._historic.items():
            for impl in self._impls(hook_name):
                if impl.plugin_name == name:
                    self._call_impl(hook_name, impl, kwargs)

    def _forget_order(self) -> None:
        # the set of implementations changed: every cached call order is stale
        self._order.clear()
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
        observe = self.observer
        start = time.perf_counter() if observe is not None else 0.0
        try:
            return impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception:
            self.failures[impl.plugin_name] += 1
            log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)
            return None
        finally:
            if observe is not None:
                observe(impl.plugin_name, hook_name, time.perf_counter() - start)

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a hook, each isolated.

        :returns: ``(plugin name, result)`` for every implementation, in call order; a
            failed implementation gives ``None``.
        """
        return [(impl.plugin_name, self._call_impl(hook_name, impl, kwargs))
                for impl in self._impls(hook_name)]

    def notify_event(self, event: Any, cluster: Any) -> None:
        """Call the hooks an event reaches: its topic's own hook (``clusterbus_node_up``
        for ``node.up``, see :data:`~clusterbus.hookspecs.TOPIC_HOOKS`), then
        ``clusterbus_event``; every implementation isolated like :meth:`call_each`,
        without collecting results.

        This is the per-event path: one call table per topic, worked out once (again
        after a plugin registers), holding only the implementations there are.
        """
        calls = self._event_calls.get(event.TOPIC)
        if calls is None:
            calls = self._event_calls[event.TOPIC] = self._event_table(event.TOPIC)
        for name, hook_name, function in calls:
            try:
                function(event, cluster)
            except Exception:
                self.failures[name] += 1
                log.exception("plugin %s failed in %s", name, hook_name)

    def _event_table(self, topic: str) -> tuple[EventCall, ...]:
        hooks = (hookspecs.TOPIC_HOOKS[topic],) if topic in hookspecs.TOPIC_HOOKS else ()
        observe = self.observer
        return tuple((impl.plugin_name, hook_name,
                      _event_caller(impl) if observe is None
                      else _timed(_event_caller(impl), impl.plugin_name, hook_name, observe))
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
            try:
                impl.function(*_section_args(impl, config, cluster))
            except ConfigError as exc:
                raise exc.with_file(config.file) from None
            except Exception as exc:
                raise PluginError(impl.plugin_name, f"clusterbus_configure failed: {exc!r}") from exc

    def reload(self, config: Any, cluster: Any) -> dict[str, str | None]:
        """Call ``clusterbus_reload`` on every plugin with its own section, each isolated.

        :returns: plugin name -> ``None`` (reloaded) or the reason it refused or failed.
        """
        out: dict[str, str | None] = {}
        for impl in self._impls("clusterbus_reload"):
            try:
                impl.function(*_section_args(impl, config, cluster))
                out[impl.plugin_name] = None
            except ConfigError as exc:
                out[impl.plugin_name] = str(exc.with_file(config.file))
                log.error("reload: plugin %s refused its new section, keeping the old: %s",
                          impl.plugin_name, out[impl.plugin_name])
            except Exception as exc:
                self.failures[impl.plugin_name] += 1
                out[impl.plugin_name] = repr(exc)
                log.exception("reload: plugin %s failed", impl.plugin_name)
        return out

    def call_historic(self, hook_name: str, **kwargs: Any) -> None:
        """Call a historic hook now, and remember it for plugins registered later."""
        self._historic[hook_name] = kwargs
        self.call_each(hook_name, **kwargs)

    # -- introspection ------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the registered plugins."""
        return sorted(n for n, _ in self.pm.list_name_plugin())

    def describe(self) -> list[PluginInfo]:
        """One :class:`PluginInfo` per registered plugin."""
        out = []
        for name in self.names():
            hooks = sorted({caller.name
                            for caller in self.pm.get_hookcallers(self.pm.get_plugin(name)) or ()
                            for impl in caller.get_hookimpls() if impl.plugin_name == name})
            out.append(PluginInfo(name, tuple(hooks), self.failures[name], self._dists.get(name, "")))
        return out


def _event_caller(impl: pluggy.HookImpl) -> Callable[[Any, Any], Any]:
    """``impl``'s function as a ``(event, cluster)`` callable."""
    function = impl.function
    argnames = tuple(impl.argnames)
    if argnames == ("event", "cluster"):
        return function  # nearly every implementation: called directly

    # an implementation may take a subset of the hook's arguments, in any order
    def call(event: Any, cluster: Any) -> Any:
        kwargs = {"event": event, "cluster": cluster}
        return function(*[kwargs[a] for a in argnames])

    return call


def _timed(function: Callable[[Any, Any], Any], plugin: str, hook: str,
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
