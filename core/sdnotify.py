"""systemd ``Type=notify``: readiness, status lines, the watchdog, reload and stop.

The protocol is sd_notify(3): newline-separated ``KEY=VALUE`` assignments in one datagram
to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). No library is needed. Without ``$NOTIFY_SOCKET`` (not started by systemd)
every call does nothing.

- ``READY=1`` once every core service is ready: sockets bound, sources open
  (:func:`service_ready`), with a ``STATUS=`` line saying what runs.
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC``, sent by a task of the event loop itself:
  a loop that stops turning stops the pings, and systemd restarts the daemon
  (``WatchdogSec=`` in the unit).
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` (systemd 253+ asks for it; older ones ignore it)
  when SIGHUP arrives, ``READY=1`` when the reload is done.
- ``STOPPING=1`` when the daemon starts shutting down.

A notification that cannot be sent is logged once and counted; the daemon never stops
because systemd is not listening.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .daemon import Daemon

__all__ = ["Notifier", "service_ready", "STATUS_INTERVAL"]

log = logging.getLogger(__name__)

#: seconds between STATUS= updates when there is no watchdog to ride on
STATUS_INTERVAL = 10.0
#: readiness is checked again after 5 ms, 10 ms, ... up to this many seconds apart
_READY_POLL_MAX = 0.2


def service_ready(service: Any) -> bool:
    """Whether a core service has bound its sockets / opened its source.

    A service says so with a ``ready`` attribute (an ``asyncio.Event`` or
    ``threading.Event``, a bool or a callable); without one, a ``listening``/``open`` flag
    in its status counts (a disabled service is ready); otherwise it is ready once
    constructed (its fds are opened in ``__init__``).
    """
    ready = getattr(service, "ready", None)
    if isinstance(ready, (asyncio.Event, threading.Event)):
        return ready.is_set()
    if isinstance(ready, bool):
        return ready
    if callable(ready):
        return bool(ready())
    private = getattr(service, "_ready", None)  # the VRRP speaker: set once instances run
    if isinstance(private, bool):
        return private
    try:
        st = service.status()
    except Exception:
        return False
    if isinstance(st, Mapping):
        if st.get("enabled") is False:
            return True
        for key in ("listening", "open"):
            if key in st:
                return bool(st[key])
    return True


class Notifier:
    """Talks to systemd over ``$NOTIFY_SOCKET``.

    :param address: the socket (``@name``: abstract namespace); ``None``: do nothing.
    :param watchdog: seconds of ``WatchdogSec=`` (``$WATCHDOG_USEC``), ``None`` when off.
    """

    def __init__(self, address: str | None, *, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        self.counters: dict[str, int] = {"sent": 0, "send_failed": 0}
        self._sock: socket.socket | None = None
        self._warned = False
        self._last_status = ""

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *,
                     unset: bool = True) -> Notifier:
        """From ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``; with ``unset``,
        removes them from the environment so child processes do not notify for us."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1e6
        if unset:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(key, None)
        if address is not None and not address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying",
                        address)
            address = None
        return cls(address, watchdog=watchdog)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram. :returns: whether it was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # never stall the loop on a full queue
            self._sock.sendto("\n".join(assignments).encode(), target)
        except OSError as exc:
            self.counters["send_failed"] += 1
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed (further failures are only counted): %s",
                            self.address, exc)
            return False
        self.counters["sent"] += 1
        return True

    def ready(self, status: str) -> None:
        """``READY=1`` with a ``STATUS=`` line."""
        self._last_status = status
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A ``STATUS=`` line, only when it changed."""
        if status != self._last_status:
            self._last_status = status
            self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, as systemd wants)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        """``STOPPING=1``."""
        self.notify("STOPPING=1", "STATUS=stopping")

    def reload(self, reload: Callable[[], bool]) -> None:
        """Run a reload between ``RELOADING=1`` and ``READY=1`` (the SIGHUP handler)."""
        self.reloading()
        applied = False
        try:
            applied = reload()
        finally:
            self._last_status = ""
            self.ready("reloaded" if applied
                       else "reload refused or not needed; running configuration kept")

    def close(self) -> None:
        """Close the socket (the next notify opens it again)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def supervise(self, daemon: Daemon) -> None:
        """The daemon's notify task: ``READY=1`` once its services are ready, then
        ``WATCHDOG=1`` every half watchdog interval and ``STATUS=`` when it changes;
        ``STOPPING=1`` when cancelled (the daemon stops). Never raises but for that."""
        if not self.enabled:
            return
        try:
            self.notify("STATUS=starting: binding sockets, opening sources")
            delay = 0.005
            # bounded by the daemon itself: systemd's TimeoutStartSec kills a start that hangs
            while not all(service_ready(s) for s in daemon.services.values()):
                await asyncio.sleep(delay)
                delay = min(delay * 2, _READY_POLL_MAX)
            status = _status_line(daemon)
            log.info("ready: %s", status)
            self.ready(status)
            interval = self.watchdog / 2 if self.watchdog else STATUS_INTERVAL
            while True:
                if self.watchdog:
                    self.notify("WATCHDOG=1")
                self.status(_status_line(daemon))
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            self.stopping()
            self.close()
            raise
        except Exception:  # a bug here must not stop the daemon: systemd restarts it anyway
            log.exception("sd_notify supervision failed; no more watchdog pings")


def _status_line(daemon: Daemon) -> str:
    engine = daemon.engine
    up = len(engine.view.up_nodes())
    return (f"node {engine.origin}: view {engine.view.view_id}, {up} node(s) up, "
            f"seq {engine.seq}; services: {', '.join(daemon.services) or 'none'}")
