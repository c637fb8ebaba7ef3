"""The daemon: one asyncio loop, every source an fd on it, plugins and the ZeroMQ bus.

Start-up is ordered and fails early: configuration, plugins (``clusterbus_configure``),
sources are built, plugins' ``clusterbus_startup`` runs, then the services start one by
one in :data:`SOURCES` order in one ``asyncio.TaskGroup``, each ready (sockets bound, files
open) before the next; only then do plugin services start and the daemon log "running".
A service that cannot start stops the daemon with one error line and exit code 2 (its
configuration cannot work) or 1 (anything else, e.g. a port in use). A core service that
fails later stops the daemon the same way
(systemd restarts it); a plugin service that fails is logged with the plugin's name and
counted, and the daemon keeps going.

A reload (SIGHUP) records its verdict in :attr:`Daemon.last_reload`, numbered by a
generation counter, which ``status`` reports and ``clusterbus reload`` waits for.
"""

from __future__ import annotations

import asyncio
import errno
import gc
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
from .looplag import LoopLagMonitor
from .pluginhost import PluginHost
from .sdnotify import Notifier
from .view import ViewStore

__all__ = ["Daemon", "Service", "SOURCES", "ServiceFailed", "run_daemon"]

log = logging.getLogger(__name__)

#: seconds after "running" when :func:`freeze_heap` runs a second time
_FREEZE_AGAIN_S = 10.0


class Service(Protocol):
    """What the daemon runs: a source, the speaker, the bus.

    ``run`` opens what the service needs (sockets, files) and serves until cancelled. A
    service that opens everything before its first ``await`` is ready after one loop step;
    one that awaits while it opens has a ``ready`` :class:`asyncio.Event`, set once it
    serves, which the daemon waits for before starting the next service.
    """

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


class ServiceFailed(ClusterbusError):
    """A core service failed (already logged, one line); the daemon stopped.

    :param service: the service's name (``bus``, ``netlink``, ...).
    :param error: what it raised.
    :param started: whether the daemon had announced "running".
    """

    def __init__(self, service: str, error: BaseException, *, started: bool) -> None:
        super().__init__(f"stopped because a service failed: {service}: {error}")
        self.service = service
        self.error = error
        self.started = started

    @property
    def exit_code(self) -> int:
        """2 when the configuration cannot work as written, else 1 (README's convention)."""
        if isinstance(self.error, ConfigError):
            return 2
        code = getattr(self.error, "errno", None)
        return 2 if code in _CONFIG_ERRNOS else 1


#: Errors of an endpoint or address that cannot work as written (bad syntax, unknown
#: protocol or interface), unlike a busy port or a missing permission.
_CONFIG_ERRNOS = frozenset({errno.EINVAL, errno.EPROTONOSUPPORT, errno.ENODEV})


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
    SourceSpec("corosync", "clusterbus.sources.corosync:CorosyncSource",
               lambda c: bool(c["corosync"]["enabled"])),
    SourceSpec("peers", "clusterbus.peers:PeersService",
               lambda c: bool(c["cluster"]["peer"])),
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
        self.plugins = PluginHost.from_config(config)
        self.engine = Engine(origin=config.node, plugins=self.plugins)
        self.services: dict[str, Service] = {}
        #: measures how late the loop wakes a sleeping task (``status()["looplag"]``)
        self.looplag = LoopLagMonitor()
        self.started = time.time()
        self._load_entrypoints = load_entrypoints
        self._stop: asyncio.Event | None = None
        self._set_up = False
        self._announced = False
        #: gc.freeze() once running (:func:`freeze_heap`); set by :func:`run_daemon`
        self.freeze_heap = False
        #: the verdict of the last reload (``status`` reports it, ``clusterbus reload``
        #: waits for its generation to change); generation 0: no reload yet
        self.last_reload: dict[str, Any] = {"generation": 0, "result": None}

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
        state_dir = self.config["daemon"]["state_dir"]
        if state_dir:  # restore the view (unconfirmed) before any source reports
            self.engine.attach_store(ViewStore(state_dir))
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

        The verdict goes to :attr:`last_reload` with the next generation number:
        ``result`` ``"applied"`` or ``"refused"`` (``reason`` says why), ``file``,
        ``restart_needed`` (sections, e.g. ``["bus", "daemon"]``, and what a live service
        could not apply, e.g. ``"vrrp: VI_1 vrid"``, or a plugin's section added or
        removed, ``"connsync: added"``) and ``failed`` (service or plugin -> why it
        refused its part).

        :returns: whether the new configuration was applied.
        """
        if self.config.file == DEFAULT_FILE:
            log.info("reload: running on the embedded default; nothing to re-read")
            self._verdict("refused", reason="the daemon runs on the embedded default; "
                          "there is no file to re-read (start it with -c FILE)")
            return False
        try:
            new = load_config(self.config.file)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self._verdict("refused", reason=str(exc))
            return False
        failed: dict[str, str] = {}
        for name, service in self.services.items():
            apply = getattr(service, "reload", None)
            if apply is None:
                continue
            try:
                apply(new)
            except ConfigError as exc:
                log.error("reload: %s refused the new configuration: %s", name, exc)
                failed[name] = str(exc)
            except Exception as exc:
                log.exception("reload: %s failed", name)
                failed[name] = f"failed: {exc!r}"
        reloaded = self.plugins.reload(new, self.engine.cluster)
        # a plugin that refused its new section keeps the old one (logged by the host)
        failed.update({name: why for name, why in reloaded.items() if why is not None})
        old = self.initial_config
        restart: list[str] = self._restart_needed_inside()
        # core services are named after their sections (SOURCES)
        live = {name for name, service in self.services.items() if hasattr(service, "reload")}
        for section in sorted((set(new.core) | set(old.core)) - live):
            if new.core.get(section) != old.core.get(section):
                restart.append(section)
                log.warning("reload: [%s] changed, but it applies at start-up only: restart "
                            "the daemon to apply it", section)
        for section in sorted(set(new.plugin_sections) | set(old.plugin_sections)):
            if section in reloaded:
                # a plugin starts its services once: a section added or removed since
                # start-up applies at the next one (the plugin's hook logs why)
                if (section in new.plugin_sections) != (section in old.plugin_sections):
                    restart.append(f"{section}: "
                                   + ("added" if section in new.plugin_sections else "removed"))
                continue
            if new.plugin_sections.get(section) != old.plugin_sections.get(section):
                restart.append(section)
                log.warning("reload: [%s] changed, but plugin %s applies its section at "
                            "start-up only: restart the daemon to apply it", section, section)
        self.config = new
        log.info("configuration reloaded from %s", new.file)
        self._verdict("applied", restart_needed=restart, failed=failed)
        return True

    def _restart_needed_inside(self) -> list[str]:
        """``"vrrp: VI_1 vrid"`` for each item of a live service's status (its
        ``instances``, or its own ``restart_needed`` table, e.g. ``{"VI_9": "added"}``)
        that needs a restart: what the service could not apply; the same for each
        plugin's status with a ``restart_needed`` table."""
        out: list[str] = []
        for name, service in self.services.items():
            if not hasattr(service, "reload"):
                continue
            try:
                st = service.status()
            except Exception:  # status is best effort here; the verdict must still be given
                log.debug("reload: status of %s failed", name, exc_info=True)
                continue
            top = st.get("restart_needed")  # e.g. the speaker's {"VI_9": "added"}
            if isinstance(top, dict):
                out += [f"{name}: {k} {v}" for k, v in top.items()]
            for inst in st.get("instances") or ():
                if isinstance(inst, dict) and inst.get("restart_needed"):
                    what = inst["restart_needed"]
                    if isinstance(what, (list, tuple, dict)):
                        what = ", ".join(str(w) for w in what)
                    out.append(f"{name}: {inst.get('name', '?')} {what}")
        # and what a plugin's reload could not apply (its status's ``restart_needed``,
        # e.g. connsync's {"interface": "'sync0' -> 'sync1'"})
        for name, data in self.plugins.call_each("clusterbus_status",
                                                 cluster=self.engine.cluster):
            top = data.get("restart_needed") if isinstance(data, dict) else None
            if isinstance(top, dict):
                out += [f"{name}: {k} {v}" for k, v in top.items()]
        return out

    def _verdict(self, result: str, *, reason: str | None = None,
                 restart_needed: list[str] | None = None,
                 failed: dict[str, str] | None = None) -> None:
        self.last_reload = {
            "generation": int(self.last_reload["generation"]) + 1,
            "result": result,
            "reason": reason,
            "file": self.config.file,
            "time": time.time(),
            "restart_needed": restart_needed or [],
            "failed": failed or {},
        }

    def stop(self) -> None:
        """Ask the running daemon to stop (safe from a signal handler)."""
        if self._stop is not None:
            self._stop.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Start every service, then plugins, and run until :meth:`stop`, SIGTERM or SIGINT.

        "running" is logged only once every service is ready (sockets bound, files open).

        :raises ServiceFailed: a core service failed, at start-up or later (it was logged,
            one line; everything was stopped).
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
        failed: list[tuple[str, BaseException]] = []
        started = False
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._core("looplag", self.looplag.run(), failed), name="looplag")
                # before any service serves: a STATUS request never finds a plugin unstarted
                self.plugins.call_historic("clusterbus_startup", cluster=self.engine.cluster)
                for name, service in self.services.items():
                    busy = _ipc_in_use(self.config) if name == "bus" else None
                    if busy is not None:
                        log.error("cannot start %s: %s", name, busy)
                        failed.append((name, OSError(errno.EADDRINUSE, busy)))
                        raise _Stopping()
                    task = tg.create_task(self._core(name, service.run(), failed), name=name)
                    await self._until_ready(service, task)
                    if failed or self._stop.is_set():
                        raise _Stopping()
                started = self._announced = True
                for plugin, services in self.plugins.call_each("clusterbus_services",
                                                               cluster=self.engine.cluster):
                    for fn in services or ():
                        tg.create_task(self._plugin_service(plugin, fn), name=f"{plugin}:{fn}")
                tg.create_task(notifier.supervise(self), name="sdnotify")
                log.info("clusterbus node %d running (pid %d): services %s, plugins %s",
                         self.engine.origin, os.getpid(), ", ".join(self.services) or "none",
                         ", ".join(self.plugins.names()) or "none")
                if self.freeze_heap:
                    # and again once the services' own start-up (the speaker thread's
                    # netlink modules, imported on first use) is surely over
                    freeze_heap("running")
                    loop.call_later(_FREEZE_AGAIN_S, freeze_heap, "running for a while")
                await self._stop.wait()
                raise _Stopping()
        except* _Stopping:
            pass
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            self.plugins.call_each("clusterbus_shutdown", cluster=self.engine.cluster)
            self.engine.save_state()
            if started:
                log.info("clusterbus node %d stopped", self.engine.origin)
            self._announced = False
        if failed:
            name, exc = failed[0]
            raise ServiceFailed(name, exc, started=started) from exc

    @staticmethod
    async def _until_ready(service: Service, task: asyncio.Task[None]) -> None:
        # One loop step runs the service up to its first await: a service that binds and
        # opens synchronously is serving (or has failed) after it.
        await asyncio.sleep(0)
        ready = getattr(service, "ready", None)
        if not isinstance(ready, asyncio.Event) or ready.is_set() or task.done():
            return
        waiter = asyncio.ensure_future(ready.wait())
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _core(self, name: str, coro: Awaitable[None],
                    failed: list[tuple[str, BaseException]]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # typed errors, OSError and zmq.ZMQError (errno) are one line; the rest is a bug
            if isinstance(exc, ClusterbusError) or isinstance(getattr(exc, "errno", None), int):
                if self._announced:
                    log.error("%s failed, stopping: %s", name, exc)
                else:
                    log.error("cannot start %s: %s", name, exc)
            else:
                log.exception("%s failed", name)
            failed.append((name, exc))
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
            "config": self.config.file,
            "uptime": round(time.time() - self.started, 3),
            "view": self.engine.view.view_id,
            "seq": self.engine.seq,
            "ignored": dict(self.engine.view.ignored),
            "membership": self.engine.status(),
            "services": {name: s.status() for name, s in self.services.items()},
            "looplag": self.looplag.status(),
            "plugins": [asdict(p) for p in self.plugins.describe()],
            "plugin_status": plugin_status,
            "reload": dict(self.last_reload),
        }


def _ipc_in_use(config: Config) -> str | None:
    """Whether a ``[bus]`` ``ipc://`` endpoint is another process's, as one line.

    ZeroMQ binds an ``ipc://`` path by replacing whatever socket file is there, so a second
    daemon would silently take the endpoints of a running one. A path that accepts a
    connection belongs to a live process; one that refuses it is a stale file (replaced).
    """
    import socket

    for key in ("publish", "ingest", "snapshot"):
        endpoint = str(config["bus"][key])
        path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""
        if not path or path.startswith("@") or not os.path.exists(path):
            continue  # abstract sockets fail to bind with EADDRINUSE by themselves
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError:
                continue
        return (f"[bus] {key}: cannot bind {endpoint}: another process listens on it "
                "(Address already in use)")
    return None


class _Stopping(Exception):
    """Raised inside the task group to cancel every task on a clean stop."""


def freeze_heap(when: str) -> None:
    """Move every object the process holds now out of the cyclic garbage collector's
    reach (``gc.freeze()``): modules, classes, functions, plugins, sockets. They live as
    long as the process, and scanning them made each full collection of the daemon's heap
    50..90 ms, holding the GIL, so long the VRRP speaker's thread missed adverts (see
    docs/architecture.md, "Concurrency model"). A full collection then scans only what
    came after: the node map, events in flight. Called by :func:`run_daemon` only (the
    process is the daemon's), never in a process that runs daemons for tests.
    """
    gc.freeze()
    log.debug("garbage collector: %d objects frozen (%s)", gc.get_freeze_count(), when)


def run_daemon(config: Config) -> int:
    """Run a daemon in a fresh event loop; the CLI's ``run``. Returns an exit code:
    0 after a clean stop, 2 when the configuration cannot work (including a service that
    cannot start because of it), 1 for any other failure. Every failure is one log line.

    First, whether ``[sigcluster]`` is on or not, the configured cluster signal is set to
    SIG_IGN, so that a queued cluster signal never kills the daemon (the real-time
    signal's default action); see :mod:`clusterbus.sources.sigcluster`.
    """
    from .sources import sigcluster

    sigcluster.ignore(sigcluster.parse_signal(config["sigcluster"]["signal"]))
    daemon = Daemon(config)
    try:
        daemon.setup()
    except ClusterbusError as exc:
        log.error("%s", exc)
        return 2
    gc.collect()  # start-up garbage, once, before anything is time-critical
    freeze_heap("set up")
    daemon.freeze_heap = True
    try:
        asyncio.run(daemon.run())
    except ServiceFailed as exc:  # logged where it happened
        return exc.exit_code
    except ClusterbusError as exc:
        log.error("%s", exc)
        return 1
    return 0


