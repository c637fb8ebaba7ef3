"""The daemon: one asyncio loop, every source an fd on it, plugins and the ZeroMQ bus.

Start-up is ordered and fails early: configuration, plugins (``clusterbus_configure``),
sources are built, then everything runs in one ``asyncio.TaskGroup``. A core source that
fails stops the daemon with the error (systemd restarts it); a plugin service that fails
is logged with the plugin's name and counted, and the daemon keeps going.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .config import DEFAULT_FILE, Config, load_config
from .engine import Engine
from .errors import ClusterbusError, ConfigError
from .pluginhost import PluginHost
from .sdnotify import Notifier

__all__ = ["Daemon", "Service", "SOURCES"]

log = logging.getLogger(__name__)


class Service(Protocol):
    """What the daemon runs: a source, the speaker, the bus."""

    counters: dict[str, int]

    async def run(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SourceSpec:
    """A built-in service: where it lives and when the configuration enables it."""

    name: str
    target: str  #: "module:Class", built as Class(engine, config)
    enabled: Callable[[Config], bool]
    wants_status: bool = False  #: also gets ``status_provider=Daemon.status`` (the bus)


#: Built-in services, started in this order.
SOURCES: tuple[SourceSpec, ...] = (
    # first: it blocks its signal before ZeroMQ starts I/O threads that would inherit no mask
    SourceSpec("sigcluster", "clusterbus.sources.sigcluster:SigclusterSource",
               lambda c: bool(c["sigcluster"]["enabled"])),
    SourceSpec("bus", "clusterbus.bus.service:BusService", lambda c: bool(c["bus"]["enabled"]),
               wants_status=True),
    SourceSpec("netlink", "clusterbus.sources.netlink:NetlinkSource",
               lambda c: bool(c["netlink"]["enabled"])),
    SourceSpec("keepalived", "clusterbus.sources.keepalived:KeepalivedSource",
               lambda c: "keepalived" in c.core),
    SourceSpec("vrrp", "clusterbus.vrrp.speaker:VrrpSpeaker",
               lambda c: bool(c.core.get("vrrp"))),
    SourceSpec("metrics", "clusterbus.metrics:MetricsService",
               lambda c: bool(c["metrics"]["listen"]), wants_status=True),
)


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Daemon:
    """One clusterbus daemon.

    :param config: a validated :class:`~clusterbus.config.Config`.
    :param load_entrypoints: load installed plugins (tests may register their own).
    """

    def __init__(self, config: Config, *, load_entrypoints: bool = True) -> None:
        self.config = config
        #: the configuration the daemon started with: what a reload cannot change stays so
        self.initial_config = config
        self.plugins = PluginHost(enable=config["plugins"]["enable"],
                                  disable=config["plugins"]["disable"])
        self.engine = Engine(origin=config.node, plugins=self.plugins)
        self.services: dict[str, Service] = {}
        self.started = time.time()
        self._load_entrypoints = load_entrypoints
        self._stop: asyncio.Event | None = None
        self._set_up = False

    # -- start-up -----------------------------------------------------------------------

    def setup(self) -> None:
        """Load and configure plugins, build the services. Nothing runs yet.

        :raises ConfigError: bad configuration (names the file and the key).
        :raises PluginError: a plugin failed to load or configure.
        """
        if self._set_up:
            return
        if self._load_entrypoints:
            self.plugins.load_entrypoints(file=self.config.file)
        self.plugins.configure(self.config, self.engine.cluster)
        for spec in SOURCES:
            if not spec.enabled(self.config):
                continue
            cls = _load(spec.target)
            kwargs: dict[str, Any] = {"status_provider": self.status} if spec.wants_status else {}
            self.services[spec.name] = cls(self.engine, self.config, **kwargs)
        self._set_up = True

    # -- running ------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration file (SIGHUP) and hand it to services that can apply
        it (``service.reload(config)``: e.g. new VRRP priorities) and to plugins
        (``clusterbus_reload``). A section that differs from the one the daemon started
        with and that nothing running can apply (``[daemon]``, ``[bus]``, ``[netlink]``,
        a plugin without the hook, ...) is logged as needing a restart. A bad file is
        logged and changes nothing; the daemon keeps running on what it had.

        :returns: whether the new configuration was applied.
        """
        if self.config.file == DEFAULT_FILE:
            log.info("reload: running on the embedded default; nothing to re-read")
            return False
        try:
            new = load_config(self.config.file)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        for name, service in self.services.items():
            apply = getattr(service, "reload", None)
            if apply is None:
                continue
            try:
                apply(new)
            except ConfigError as exc:
                log.error("reload: %s refused the new configuration: %s", name, exc)
            except Exception:
                log.exception("reload: %s failed", name)
        reloaded = self.plugins.reload(new, self.engine.cluster)
        old = self.initial_config
        # core services are named after their sections (SOURCES)
        live = {name for name, service in self.services.items() if hasattr(service, "reload")}
        for section in sorted((set(new.core) | set(old.core)) - live):
            if new.core.get(section) != old.core.get(section):
                log.warning("reload: [%s] changed, but it applies at start-up only: restart "
                            "the daemon to apply it", section)
        for section in sorted(set(new.plugin_sections) | set(old.plugin_sections)):
            if section in reloaded:
                continue
            if new.plugin_sections.get(section) != old.plugin_sections.get(section):
                log.warning("reload: [%s] changed, but plugin %s applies its section at "
                            "start-up only: restart the daemon to apply it", section, section)
        self.config = new
        log.info("configuration reloaded from %s", new.file)
        return True

    def stop(self) -> None:
        """Ask the running daemon to stop (safe from a signal handler)."""
        if self._stop is not None:
            self._stop.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until :meth:`stop`, SIGTERM or SIGINT.

        :raises ClusterbusError: a core service failed (after everything was stopped).
        """
        self.setup()
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # systemd Type=notify: READY/WATCHDOG/STOPPING from a task, RELOADING around SIGHUP
        notifier = Notifier.from_environ()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, notifier.reload, self.reload)
        failed: list[BaseException] = []
        try:
            async with asyncio.TaskGroup() as tg:
                for name, service in self.services.items():
                    tg.create_task(self._core(name, service.run(), failed), name=name)
                self.plugins.call_historic("clusterbus_startup", cluster=self.engine.cluster)
                for plugin, services in self.plugins.call_each("clusterbus_services",
                                                               cluster=self.engine.cluster):
                    for fn in services or ():
                        tg.create_task(self._plugin_service(plugin, fn), name=f"{plugin}:{fn}")
                tg.create_task(notifier.supervise(self), name="sdnotify")
                log.info("clusterbus node %d running (pid %d): services %s, plugins %s",
                         self.engine.origin, os.getpid(), ", ".join(self.services) or "none",
                         ", ".join(self.plugins.names()) or "none")
                await self._stop.wait()
                raise _Stopping()
        except* _Stopping:
            pass
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            self.plugins.call_each("clusterbus_shutdown", cluster=self.engine.cluster)
            log.info("clusterbus node %d stopped", self.engine.origin)
        if failed:
            raise ClusterbusError(f"stopped because a service failed: {failed[0]}") from failed[0]

    async def _core(self, name: str, coro: Awaitable[None], failed: list[BaseException]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except (ClusterbusError, OSError) as exc:
            log.error("%s: %s", name, exc)
            failed.append(exc)
            self.stop()
        except Exception as exc:
            log.exception("%s failed", name)
            failed.append(exc)
            self.stop()

    async def _plugin_service(self, plugin: str, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.plugins.failures[plugin] += 1
            log.exception("plugin %s: service %s failed", plugin, getattr(fn, "__name__", fn))

    # -- introspection ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status`` (answered over the bus's STATUS request)."""
        # first: a plugin whose status hook fails shows in the failure counts below
        plugin_status = {name: data for name, data in
                         self.plugins.call_each("clusterbus_status", cluster=self.engine.cluster)
                         if data is not None}
        return {
            "node": self.engine.origin,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "view": self.engine.view.view_id,
            "seq": self.engine.seq,
            "ignored": dict(self.engine.view.ignored),
            "services": {name: s.status() for name, s in self.services.items()},
            "plugins": [asdict(p) for p in self.plugins.describe()],
            "plugin_status": plugin_status,
        }


class _Stopping(Exception):
    """Raised inside the task group to cancel every task on a clean stop."""


def run_daemon(config: Config) -> int:
    """Run a daemon in a fresh event loop; the CLI's ``run``. Returns an exit code."""
    daemon = Daemon(config)
    try:
        daemon.setup()
    except (ConfigError, ClusterbusError) as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(daemon.run())
    except ClusterbusError as exc:
        log.error("%s", exc)
        return 1
    return 0


