"""The applier service: keeps the kernel's IPVS table equal to the desired one.

Two kinds of reconcile:

* **full** (start-up, on demand with :meth:`Applier.trigger`, and every
  ``reconcile_interval`` seconds): dump the kernel's whole table, diff it against the whole
  desired table, apply (or, for a periodic check with ``drift = "report"``, only report).
  This is what finds hand-made drift.
* **targeted** (node events: :meth:`Applier.touch_node`): rebuild the desired entries of
  only the services that have a real server on the touched nodes, and diff them against
  the applier's cache of the kernel's table, so one node going down among 10,000 services
  costs a few entries, not a dump and a diff of the whole table.

The cache (``known``) is the table of the last dump, changed by every operation the kernel
then accepted (:func:`~clusterbus.plugins.ipvs.table.apply_ops`). An operation the kernel
refused marks its service *stale*: the next reconcile that touches it reads that service
back from the kernel before diffing, and a full reconcile replaces the whole cache. A
failure that leaves the outcome unknown (the socket failed mid-batch) drops the cache, so
the next reconcile is a full one. Drift made by hand between two full reconciles is not in
the cache: only the periodic check sees it, as documented.

Hooks (on the loop, fast) only record what happened and wake the service; desired entries
are computed on the loop (pure and quick; node resolution goes through plugin hooks), the
kernel work runs in a worker thread (``asyncio.to_thread``) so it never blocks the loop,
and ``ipvs.applied`` is emitted back on the loop after the kernel's ack.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from clusterbus import Cluster, IpvsApplied, NodeState

from .kernel import IpvsKernelError, Kernel
from .model import IpvsConfig, SyncDaemon, VirtualServer, desired_entry
from .table import Entry, Op, Plan, ServiceKey, Table, apply_ops, diff

__all__ = ["Applier"]

log = logging.getLogger(__name__)


class Applier:
    """One per daemon (per cluster) when ``[ipvs]`` is configured.

    :param config: the validated section.
    :param cluster: the live cluster (node map, view, emit).
    :param extra_addrs: node addresses from the configuration file's ``[nodemap.nodes]``,
        used when the live node map does not know a node (yet).
    """

    def __init__(self, config: IpvsConfig, cluster: Cluster,
                 extra_addrs: dict[int, tuple[str, ...]] | None = None) -> None:
        self.config = config
        self.cluster = cluster
        self.extra_addrs = extra_addrs or {}
        self.counters: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._full: list[str] = ["startup"]     # reasons for a full reconcile
        self._nodes: dict[int, str] = {}        # nodes to re-check (targeted) -> reason
        self._sync_state: str | None = None     # wanted: "master" | "backup"
        #: the role the kernel's sync daemon runs in, and the settings it was started with
        self._sync_applied: tuple[str, SyncDaemon] | None = None
        self._sync_dirty = False
        self._kernel: Kernel | None = None
        #: the kernel's table as last dumped and then acknowledged; None: unknown
        self.known: Table | None = None
        #: services whose cache entry the kernel contradicted (a refused operation)
        self.stale: set[ServiceKey] = set()
        self.last: dict[str, Any] = {}
        # Which virtual servers (by index) a node event can touch: real servers given by
        # node number, and by literal address (resolved to a node when the entry is built).
        self._by_node: dict[int, set[int]] = {}
        self._by_addr: dict[str, set[int]] = {}
        self._owner: dict[str, int | None] = {}  # literal address -> node, last resolution
        self._owned: dict[int, set[str]] = {}    # node -> literal addresses it resolved
        self._timeouts_dirty = config.timeouts is not None
        self._index()

    def _index(self) -> None:
        self._by_node.clear()
        self._by_addr.clear()
        self._owner.clear()
        self._owned.clear()
        for i, vs in enumerate(self.config.virtual_servers):
            for rs in vs.real_servers:
                if rs.node is not None:
                    self._by_node.setdefault(rs.node, set()).add(i)
                else:
                    self._by_addr.setdefault(rs.address, set()).add(i)

    def reconfigure(self, config: IpvsConfig,
                    extra_addrs: dict[int, tuple[str, ...]] | None = None) -> None:
        """Take a new ``[ipvs]`` (a reload): the next pass is a full reconcile against it.

        Runs on the loop, like the hooks; the worker thread only ever sees tables built
        here, so the swap needs no lock.
        """
        old = self.config
        self.config = config
        if extra_addrs is not None:
            self.extra_addrs = extra_addrs
        self._index()
        if config.timeouts != old.timeouts and config.timeouts is not None:
            self._timeouts_dirty = True
        if config.sync_daemon != old.sync_daemon:
            self._sync_dirty = True
        self.counters["reloads"] += 1
        self.trigger("reload")

    # -- called from hooks (on the loop, must not block) ----------------------------------

    def trigger(self, reason: str) -> None:
        """Ask for a full reconcile (dump + diff of everything) soon (coalesced)."""
        self._full.append(reason)
        self._wake.set()

    def touch_node(self, node: int, reason: str) -> None:
        """A node's state or addresses changed: re-check only the services it serves."""
        self._nodes[node] = reason
        self._wake.set()

    def vrrp_state(self, state: str) -> None:
        """VRRP said MASTER (``master``) or BACKUP/FAULT (``backup``) for the sync daemon."""
        if self.config.sync_daemon is None or state == self._sync_state:
            return
        self._sync_state = state
        self._sync_dirty = True
        self._wake.set()

    # -- the desired state ----------------------------------------------------------------

    def node_addrs(self, node: int) -> tuple[str, ...]:
        return self.cluster.nodemap.addrs(node) or self.extra_addrs.get(node, ())

    def _node_of(self, addr: str) -> int | None:
        # Remember who owns each literal address, so that a later event of that node finds
        # the services to re-check even if the address left the node map meanwhile.
        node = self.cluster.resolve_node(addr)
        old = self._owner.get(addr)
        if old != node and old is not None:
            self._owned.get(old, set()).discard(addr)
        self._owner[addr] = node
        if node is not None:
            self._owned.setdefault(node, set()).add(addr)
        return node

    def _is_down(self, node: int) -> bool:
        return self.cluster.state(node) is NodeState.DOWN

    def _entry(self, vs: VirtualServer, problems: list[str]) -> Entry:
        return desired_entry(vs, node_addrs=self.node_addrs, node_of=self._node_of,
                             is_down=self._is_down, problems=problems)

    def _warn(self, problems: list[str]) -> None:
        for p in problems:
            self.counters["skipped_real_servers"] += 1
            log.warning("ipvs: %s", p)

    def desired(self) -> Table:
        """The table the kernel should hold now (view and node map as they are)."""
        problems: list[str] = []
        table = {vs.service.key: self._entry(vs, problems) for vs in self.config.virtual_servers}
        self._warn(problems)
        return table

    def services_of(self, nodes: Iterable[int]) -> list[VirtualServer]:
        """The virtual servers that have a real server on one of ``nodes``."""
        idx: set[int] = set()
        for n in nodes:
            idx |= self._by_node.get(n, set())
            for a in (*self.node_addrs(n), *self.extra_addrs.get(n, ()),
                      *self._owned.get(n, ())):
                idx |= self._by_addr.get(a, set())
        return [self.config.virtual_servers[i] for i in sorted(idx)]

    # -- the service ----------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile on every trigger and every ``reconcile_interval`` seconds."""
        loop = asyncio.get_running_loop()
        interval = self.config.reconcile_interval or None
        deadline: float | None = None
        try:
            self._kernel = await asyncio.to_thread(Kernel)
            while True:
                if self._timeouts_dirty and self.config.timeouts is not None:
                    self._timeouts_dirty = False
                    t = self.config.timeouts
                    await asyncio.to_thread(self._kernel.set_timeouts, tcp=t.tcp,
                                            tcp_fin=t.tcp_fin, udp=t.udp)
                if self._full:
                    reasons, self._full = self._full, []
                    self._nodes.clear()  # a full reconcile covers them
                    await self._reconcile(reasons[-1], correct=True)
                    # The periodic check counts from the last full reconcile, whatever
                    # caused it; node events do not postpone it (they never dump).
                    deadline = None if interval is None else loop.time() + interval
                elif self._nodes:
                    nodes, self._nodes = self._nodes, {}
                    await self._targeted(nodes)
                elif deadline is not None and loop.time() >= deadline:
                    await self._reconcile("reconcile", correct=self.config.drift == "correct")
                    deadline = None if interval is None else loop.time() + interval
                if self._sync_dirty:
                    self._sync_dirty = False
                    await self._sync_daemon()
                self._wake.clear()
                if self._full or self._nodes or self._sync_dirty:
                    continue
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if self._kernel is not None:
                self._kernel.close()

    def _follow(self, ops: list[Op], errors: list[IpvsKernelError]) -> None:
        """Bring the cache up to what the kernel acknowledged."""
        assert self.known is not None
        refused = {id(e.op) for e in errors if e.op is not None}
        keys = {e.op.service.key for e in errors if e.op is not None}
        keys |= apply_ops(self.known, (op for op in ops if id(op) not in refused))
        if keys:
            self.counters["cache_invalidated"] += len(keys)
            self.stale |= keys

    async def _reconcile(self, reason: str, *, correct: bool) -> None:
        """Full reconcile: dump, diff the whole table, apply (or only report)."""
        assert self._kernel is not None
        want = self.desired()
        kernel, prune = self._kernel, self.config.prune
        start = time.monotonic()

        def work() -> tuple[Table, Plan, list[IpvsKernelError]]:
            have = kernel.dump()
            plan = diff(have, want, prune=prune)
            if not correct or not plan:
                return have, plan, []
            return have, plan, kernel.apply(plan).errors

        try:
            have, plan, errors = await asyncio.to_thread(work)
        except (IpvsKernelError, OSError) as exc:
            self.known = None  # the kernel may have taken part of a batch
            self.counters["kernel_failures"] += 1
            log.error("ipvs: reconcile (%s) failed: %s", reason, exc)
            return
        self.known, self.stale = have, set()
        if correct:
            self._follow(plan.ops, errors)
        self.counters["reconciles"] += 1
        if not correct and plan:
            self.counters["drift_reported"] += 1
            log.warning("ipvs: drift (%d differences), not corrected (drift = \"report\"): %s",
                        len(plan), "; ".join(op.describe() for op in plan.ops[:10]))
        self._done(reason, plan, errors, time.monotonic() - start, correct=correct)

    async def _targeted(self, nodes: dict[int, str]) -> None:
        """Re-check the services of ``nodes`` against the cache; apply the difference."""
        reason = next(reversed(nodes.values()))
        if self.known is None or self._kernel is None:
            await self._reconcile(reason, correct=True)  # nothing known: dump first
            return
        start = time.monotonic()
        problems: list[str] = []
        want = {vs.service.key: self._entry(vs, problems) for vs in self.services_of(nodes)}
        self._warn(problems)
        kernel, known = self._kernel, self.known
        reread = [k for k in want if k in self.stale]

        def work() -> tuple[dict[ServiceKey, Entry | None], Plan, list[IpvsKernelError]]:
            fresh = {k: kernel.entry(k) for k in reread}
            have: Table = {}
            for k in want:
                e = fresh[k] if k in fresh else known.get(k)
                if e is not None:
                    have[k] = e
            plan = diff(have, want, prune=False)
            return fresh, plan, (kernel.apply(plan).errors if plan else [])

        try:
            fresh, plan, errors = await asyncio.to_thread(work)
        except (IpvsKernelError, OSError) as exc:
            self.known = None
            self.counters["kernel_failures"] += 1
            log.error("ipvs: %s (nodes %s) failed: %s", reason, sorted(nodes), exc)
            return
        for k, e in fresh.items():
            self.stale.discard(k)
            if e is None:
                known.pop(k, None)
            else:
                known[k] = e
        self._follow(plan.ops, errors)
        self.counters["targeted"] += 1
        self._done(reason, plan, errors, time.monotonic() - start, correct=True)

    def _done(self, reason: str, plan: Plan, errors: list[IpvsKernelError], duration: float,
              *, correct: bool) -> None:
        self.counters["kernel_errors"] += len(errors)
        self.last = {"reason": reason, "added": plan.added, "removed": plan.removed,
                     "changed": plan.changed, "errors": [str(e) for e in errors],
                     "duration": duration, "corrected": correct,
                     "differences": [op.describe() for op in plan.ops[:20]]}
        if correct and plan:
            log.info("ipvs: %s: %d added, %d removed, %d changed in %.3f s", reason, plan.added,
                     plan.removed, plan.changed, duration)
            self.cluster.emit(IpvsApplied, added=plan.added, removed=plan.removed,
                              changed=plan.changed, duration=duration, reason=reason[:64])

    async def _sync_daemon(self) -> None:
        """Bring the kernel's sync daemon to the wanted role with the configured settings:
        a new role, new ``[ipvs.sync_daemon]`` settings (a reload: the running daemon is
        restarted with them) or a removed section (it is stopped)."""
        want, sd, kernel = self._sync_state, self.config.sync_daemon, self._kernel
        applied = self._sync_applied
        target = None if sd is None or want is None else (want, sd)
        if kernel is None or target == applied:
            return
        stop: list[str] = []
        if applied is not None and (target is None or applied[1] != target[1]):
            stop.append(applied[0])  # stopped, or restarted with the new settings
        if target is not None:
            # keepalived's order: stop the other role, then start this one.
            stop.append("backup" if want == "master" else "master")

        def work() -> None:
            for role in dict.fromkeys(stop):
                try:
                    kernel.stop_daemon(role)
                except IpvsKernelError as exc:
                    if exc.code != errno.ESRCH:
                        raise
            if target is None:
                return
            role, s = target
            try:
                kernel.start_daemon(role, interface=s.interface, syncid=s.syncid,
                                    maxlen=s.maxlen, group=s.group, port=s.port, ttl=s.ttl)
            except IpvsKernelError as exc:
                if exc.code != errno.EEXIST:
                    raise

        try:
            await asyncio.to_thread(work)
        except (IpvsKernelError, OSError) as exc:
            self.counters["sync_daemon_failures"] += 1
            log.error("ipvs: sync daemon %s: %s", want or "stop", exc)
            return
        self._sync_applied = target
        if target is None:
            log.info("ipvs: sync daemon stopped ([ipvs.sync_daemon] removed)")
        else:
            log.info("ipvs: sync daemon now %s on %s (syncid %d)", target[0],
                     target[1].interface, target[1].syncid)

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        return {"counters": dict(self.counters), "last": dict(self.last),
                "sync_daemon": self._sync_applied[0] if self._sync_applied else "",
                "services": len(self.config.virtual_servers),
                "cached": -1 if self.known is None else len(self.known),
                "stale": len(self.stale)}
