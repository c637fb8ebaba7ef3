"""Corosync as a membership source (``[corosync]``): nodes, peer directors and quorum.

Three things come from the local Corosync 3, through ctypes (:mod:`clusterbus.corosync`):

- ``node.up`` / ``node.down`` (reason ``corosync``) from CPG's totem confchg callback: the
  node-level membership. Corosync node ids are clusterbus node numbers.
- ``director.up`` / ``director.down`` from the CPG group ``[corosync] group`` that every
  daemon joins: a peer daemon's process leaving the group is seen in milliseconds (a
  killed process closes its IPC connection at once), long before any heartbeat timer.
  The source is a director source of the engine (``Engine.director_sources["corosync"]``,
  as the peer links are ``"peers"``): the directors in the group count for
  :meth:`Cluster.directors() <clusterbus.engine.Cluster.directors>`, which already holds
  the change when the hooks get its ``director.up`` / ``director.down``.
- ``cluster.quorum`` from libquorum's quorate flag (``[corosync] quorum = true``), only
  when it changes. Losing the local Corosync counts as losing quorum.

Threading: only ``cpg_dispatch`` / ``quorum_dispatch`` run on the loop, from
``loop.add_reader`` on the libraries' fds. Everything else (initialize, join, leave,
finalize) waits on Corosync without a timeout, so it runs in a worker thread with a bound
on how long the loop waits for it (:data:`CALL_TIMEOUT`). The worker is a daemon thread: a
frozen Corosync (SIGSTOP) can delay nothing but this source, not even the daemon's exit.

Reconnection: when the local Corosync dies, the fd turns readable and dispatch fails
(``CS_ERR_LIBRARY``); the source finalizes the handles (a handle that left a group cannot
join again: a new one is opened each time) and retries every :data:`BACKOFF_MIN` s,
doubling up to :data:`BACKOFF_MAX` s. ``status`` says whether it is connected and how many
times it reconnected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from ..config import Config
from ..corosync.binding import CS_ERR_TRY_AGAIN, CS_OK, CorosyncError, Cpg, Quorum
from ..corosync.membership import (
    Decision,
    DirectorChange,
    Membership,
    NodeChange,
    QuorumChange,
    Record,
)
from ..engine import Engine
from ..events import ClusterQuorum, DirectorDown, DirectorUp
from ..view import NodeReport, NodeState

__all__ = ["CorosyncSource", "BACKOFF_MIN", "BACKOFF_MAX", "CALL_TIMEOUT", "SHUTDOWN_TIMEOUT"]

log = logging.getLogger(__name__)

#: First retry after a lost or failed connection, in seconds; doubles up to BACKOFF_MAX.
BACKOFF_MIN = 0.2
BACKOFF_MAX = 2.0
#: Longest the source waits for initialize+join (a frozen Corosync never answers).
CALL_TIMEOUT = 10.0
#: Longest a stopping daemon waits for leave+finalize.
SHUTDOWN_TIMEOUT = 2.0
#: The event reason of node.up / node.down from this source.
REASON = "corosync"

T = TypeVar("T")


async def _blocking(fn: Callable[[], T], timeout: float) -> T:
    """Run ``fn`` in a daemon thread; wait at most ``timeout`` s for it.

    :raises TimeoutError: it did not return in time (it goes on in its thread).
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def target() -> None:
        try:
            result: Any = fn()
            ok = True
        except BaseException as exc:  # handed to the awaiting task
            result, ok = exc, False
        try:
            loop.call_soon_threadsafe(deliver, ok, result)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=target, name="corosync-call", daemon=True).start()
    return await asyncio.wait_for(fut, timeout)


class CorosyncSource:
    """Membership, peer directors and quorum from the local Corosync.

    :param engine: where reports and events go.
    :param config: uses ``[corosync]`` ``enabled``, ``group`` and ``quorum``.

    ``counters`` (dotted): ``connect.ok``, ``connect.failed``, ``reconnects``,
    ``dispatch.try_again``, ``dispatch.failed``, ``node.up``, ``node.down``,
    ``director.up``, ``director.down``, ``quorum.changes``, ``internal_error``, plus the
    membership core's (``records.totem``, ``records.group``, ``records.quorum``,
    ``quorum.unchanged``, ``dropped.<what>``, ``disconnects``).
    """

    def __init__(self, engine: Engine, config: Config) -> None:
        section: dict[str, Any] = config["corosync"]
        self.engine = engine
        self.enabled: bool = section["enabled"]
        self.group: str = section["group"]
        self.use_quorum: bool = section["quorum"]
        self.membership = Membership(group=self.group, local_pid=os.getpid())
        self.counters: Counter[str] = Counter()
        self.connected = False
        self.reconnects = 0
        self.last_error: str | None = None
        #: set while connected (tests and callers may wait for it)
        self.ready = asyncio.Event()
        self._cpg: Cpg | None = None
        self._quorum: Quorum | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost: asyncio.Future[None] | None = None
        if self.enabled:
            engine.director_sources["corosync"] = self.directors

    def directors(self) -> list[int]:
        """The peer directors in the CPG group: those of its ``director.up`` not followed
        by a ``director.down`` (this daemon's own process is not one). While the local
        Corosync is away they are kept, as the events are, until the next connection's
        lists are compared with them."""
        m = self.membership
        me = (m.local_nodeid, m.local_pid)
        return sorted({node for node, pid in m.processes if (node, pid) != me})

    # -- service ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, dispatch, reconnect, until cancelled.

        :raises CorosyncError: libcpg/libquorum cannot be loaded (the packages are missing).
        """
        if not self.enabled:
            log.info("corosync source disabled ([corosync] enabled = false)")
            return
        self._loop = asyncio.get_running_loop()
        delay = BACKOFF_MIN
        attempts = 0
        try:
            while True:
                try:
                    await self._connect()
                except CorosyncError as exc:
                    if exc.call == "load":
                        raise
                    attempts += 1
                    self.counters["connect.failed"] += 1
                    self.last_error = str(exc)
                    (log.warning if attempts == 1 else log.debug)(
                        "corosync: cannot connect (%s); retrying every %.1f..%.1f s",
                        exc, BACKOFF_MIN, BACKOFF_MAX)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                if self.counters["connect.ok"] > 1:
                    self.reconnects += 1
                    self.counters["reconnects"] += 1
                    log.info("corosync: reconnected after %d failed attempt(s)", attempts)
                attempts, delay = 0, BACKOFF_MIN
                assert self._lost is not None
                await self._lost
                await self._close(leave=False)
        finally:
            await self._close(leave=True)

    async def _connect(self) -> None:
        assert self._loop is not None
        cpg = Cpg(self.group)
        quorum = Quorum() if self.use_quorum else None
        lock = threading.Lock()
        state = {"abandoned": False, "opened": False}

        def work() -> None:
            cpg.open()
            if quorum is not None:
                try:
                    quorum.open()
                except CorosyncError:
                    cpg.close()
                    raise
            with lock:
                if state["abandoned"]:  # the loop stopped waiting: nobody will dispatch
                    cpg.close()
                    if quorum is not None:
                        quorum.close()
                    return
                state["opened"] = True

        try:
            await _blocking(work, CALL_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with lock:
                opened = state["opened"]
                state["abandoned"] = not opened
            if opened:  # finished at the last moment: keep it so that _close frees it
                self._cpg, self._quorum = cpg, quorum
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not opened:
                raise CorosyncError("connect", 5,
                                    f"no answer in {CALL_TIMEOUT:g} s (corosync stopped?)") from None
        self._cpg, self._quorum = cpg, quorum
        self._lost = self._loop.create_future()
        self.counters["connect.ok"] += 1
        self.connected = True
        self.last_error = None
        self._apply(self.membership.connected(cpg.local_nodeid))
        self._loop.add_reader(cpg.fd, self._on_cpg)
        if quorum is not None:
            self._loop.add_reader(quorum.fd, self._on_quorum)
        self.ready.set()
        log.info("corosync: connected as node %d, joined CPG group %r%s", cpg.local_nodeid,
                 self.group, f", quorate={quorum.quorate}" if quorum is not None else "")

    def _remove_readers(self) -> None:
        if self._loop is None:
            return
        for handle in (self._cpg, self._quorum):
            if handle is not None and handle.fd >= 0:
                self._loop.remove_reader(handle.fd)

    async def _close(self, *, leave: bool) -> None:
        """Stop dispatching and free the handles (in the worker thread)."""
        self._remove_readers()
        cpg, quorum = self._cpg, self._quorum
        self._cpg = self._quorum = None
        self.connected = False
        self.ready.clear()
        if cpg is None and quorum is None:
            return

        def work() -> None:
            if cpg is not None:
                if leave:
                    cpg.leave()  # peers see "leave", not "procdown"
                cpg.close()
            if quorum is not None:
                quorum.close()

        timeout = SHUTDOWN_TIMEOUT if leave else CALL_TIMEOUT
        try:
            await _blocking(work, timeout)
        except TimeoutError:
            log.warning("corosync: leave/finalize did not return in %g s (corosync stopped?); "
                        "abandoned", timeout)

    # -- dispatch (on the loop) -----------------------------------------------------------

    def _on_cpg(self) -> None:
        if self._cpg is not None:
            self._dispatch(self._cpg, "cpg_dispatch")

    def _on_quorum(self) -> None:
        if self._quorum is not None:
            self._dispatch(self._quorum, "quorum_dispatch")

    def _dispatch(self, handle: Cpg | Quorum, call: str) -> None:
        code = CS_OK
        try:
            code = handle.dispatch()
            self._feed(handle.take())
        except Exception:  # the supervisor boundary of this source
            self.counters["internal_error"] += 1
            log.exception("corosync: %s handling failed", call)
        if code == CS_OK:
            return
        if code == CS_ERR_TRY_AGAIN:
            self.counters["dispatch.try_again"] += 1
            return
        self.counters["dispatch.failed"] += 1
        self._connection_lost(str(CorosyncError(call, code)))

    def _connection_lost(self, why: str) -> None:
        if not self.connected:
            return
        log.warning("corosync: lost the local corosync (%s); reconnecting", why)
        self.last_error = why
        self._remove_readers()
        self.connected = False
        self.ready.clear()
        try:
            self._apply(self.membership.disconnected())
        except Exception:  # whatever happens, the reconnection below must
            self.counters["internal_error"] += 1
            log.exception("corosync: publishing the lost connection failed")
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _feed(self, records: list[Record]) -> None:
        for record in records:
            self._apply(self.membership.feed(record))

    def _apply(self, decisions: list[Decision]) -> None:
        engine = self.engine
        for d in decisions:
            if isinstance(d, NodeChange):
                state = NodeState.UP if d.up else NodeState.DOWN
                self.counters[f"node.{state.value}"] += 1
                engine.report(NodeReport(state=state, node=d.node, reason=REASON))
            elif isinstance(d, DirectorChange):
                self.counters["director.up" if d.up else "director.down"] += 1
                log.info("corosync: director %d %s (%s)", d.node, "up" if d.up else "down",
                         d.reason)
                engine.publish(DirectorUp if d.up else DirectorDown, node=d.node,
                               reason=d.reason)
            elif isinstance(d, QuorumChange):
                self.counters["quorum.changes"] += 1
                (log.info if d.quorate else log.warning)(
                    "corosync: %s (partition %s)", "quorate" if d.quorate else "quorum LOST",
                    ",".join(map(str, d.members)) or "-")
                engine.publish(ClusterQuorum, quorate=d.quorate, members=d.members)

    # -- introspection --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        m = self.membership
        return {
            "enabled": self.enabled,
            "group": self.group,
            "quorum": self.use_quorum,
            "connected": self.connected,
            "local_node": m.local_nodeid,
            "reconnects": self.reconnects,
            "quorate": m.quorate,
            "members": sorted(m.nodes),
            "quorum_members": list(m.quorum_members),
            "directors": m.directors(),
            "ring_seq": m.ring_seq,
            "last_error": self.last_error,
            "counters": {**m.counters, **self.counters},
        }
