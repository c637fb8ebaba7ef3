"""The applier service: keeps the kernel's IPVS table equal to the desired one.

Hooks (on the loop, fast) only record what happened and wake the service; the service
computes the desired table on the loop (pure and quick), then dumps, diffs and applies in a
worker thread (``asyncio.to_thread``) so kernel work never blocks the loop, and emits
``ipvs.applied`` back on the loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import Counter
from typing import Any

from clusterbus.engine import Cluster
from clusterbus.events import IpvsApplied
from clusterbus.view import NodeState

from .kernel import IpvsKernelError, Kernel
from .model import IpvsConfig, desired_table
from .table import Plan, Table, diff

__all__ = ["Applier"]

log = logging.getLogger(__name__)


class Applier:
    """One per daemon when ``[ipvs]`` is configured.

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
        self._reasons: list[str] = ["startup"]
        self._sync_state: str | None = None   # wanted: "master" | "backup"
        self._sync_applied: str | None = None
        self._kernel: Kernel | None = None
        self.last: dict[str, Any] = {}

    # -- called from hooks (on the loop, must not block) ----------------------------------

    def trigger(self, reason: str) -> None:
        """Ask for a reconcile soon (coalesced)."""
        self._reasons.append(reason)
        self._wake.set()

    def vrrp_state(self, state: str) -> None:
        """VRRP said MASTER (``master``) or BACKUP/FAULT (``backup``) for the sync daemon."""
        if self.config.sync_daemon is None or state == self._sync_state:
            return
        self._sync_state = state
        self._reasons.append(f"vrrp.{state}")
        self._wake.set()

    # -- the desired state ----------------------------------------------------------------

    def node_addrs(self, node: int) -> tuple[str, ...]:
        return self.cluster.nodemap.addrs(node) or self.extra_addrs.get(node, ())

    def desired(self) -> Table:
        """The table the kernel should hold now (view and node map as they are)."""
        table, problems = desired_table(
            self.config, node_addrs=self.node_addrs, node_of=self.cluster.resolve_node,
            is_down=lambda n: self.cluster.state(n) is NodeState.DOWN)
        for p in problems:
            self.counters["skipped_real_servers"] += 1
            log.warning("ipvs: %s", p)
        return table

    # -- the service ----------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile on every trigger and every ``reconcile_interval`` seconds."""
        interval = self.config.reconcile_interval or None
        try:
            self._kernel = await asyncio.to_thread(Kernel)
            if self.config.timeouts is not None:
                t = self.config.timeouts
                await asyncio.to_thread(self._kernel.set_timeouts, tcp=t.tcp, tcp_fin=t.tcp_fin,
                                        udp=t.udp)
            while True:
                reasons, self._reasons = self._reasons, []
                if reasons:
                    await self._reconcile(reasons[-1], correct=True)
                else:  # periodic drift check
                    await self._reconcile("reconcile", correct=self.config.drift == "correct")
                self._wake.clear()
                if self._reasons:
                    continue
                try:
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if self._kernel is not None:
                self._kernel.close()

    async def _reconcile(self, reason: str, *, correct: bool) -> None:
        assert self._kernel is not None
        want = self.desired()
        kernel = self._kernel
        start = time.monotonic()

        def work() -> tuple[Plan, list[IpvsKernelError]]:
            plan = diff(kernel.dump(), want, prune=self.config.prune)
            if not correct or not plan:
                return plan, []
            return plan, kernel.apply(plan).errors

        try:
            plan, errors = await asyncio.to_thread(work)
        except (IpvsKernelError, OSError) as exc:
            self.counters["kernel_failures"] += 1
            log.error("ipvs: reconcile (%s) failed: %s", reason, exc)
            return
        await self._sync_daemon()
        duration = time.monotonic() - start
        self.counters["reconciles"] += 1
        self.counters["kernel_errors"] += len(errors)
        if not correct and plan:
            self.counters["drift_reported"] += 1
            log.warning("ipvs: drift (%d differences), not corrected (drift = \"report\"): %s",
                        len(plan), "; ".join(op.describe() for op in plan.ops[:10]))
        self.last = {"reason": reason, "added": plan.added, "removed": plan.removed,
                     "changed": plan.changed, "errors": [str(e) for e in errors],
                     "duration": duration, "corrected": correct}
        if correct and plan:
            log.info("ipvs: %s: %d added, %d removed, %d changed in %.3f s", reason, plan.added,
                     plan.removed, plan.changed, duration)
            self.cluster.emit(IpvsApplied, added=plan.added, removed=plan.removed,
                              changed=plan.changed, duration=duration, reason=reason[:64])

    async def _sync_daemon(self) -> None:
        want, sd, kernel = self._sync_state, self.config.sync_daemon, self._kernel
        if sd is None or want is None or want == self._sync_applied or kernel is None:
            return
        other = "backup" if want == "master" else "master"

        def work() -> None:
            # keepalived's order: stop the other role, then start this one.
            try:
                kernel.stop_daemon(other)
            except IpvsKernelError as exc:
                if exc.code != errno.ESRCH:
                    raise
            try:
                kernel.start_daemon(want, interface=sd.interface, syncid=sd.syncid,
                                    maxlen=sd.maxlen, group=sd.group, port=sd.port, ttl=sd.ttl)
            except IpvsKernelError as exc:
                if exc.code != errno.EEXIST:
                    raise

        try:
            await asyncio.to_thread(work)
        except (IpvsKernelError, OSError) as exc:
            self.counters["sync_daemon_failures"] += 1
            log.error("ipvs: sync daemon %s on %s: %s", want, sd.interface, exc)
            return
        self._sync_applied = want
        log.info("ipvs: sync daemon now %s on %s (syncid %d)", want, sd.interface, sd.syncid)

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        return {"counters": dict(self.counters), "last": dict(self.last),
                "sync_daemon": self._sync_applied or "", "services": len(self.config.virtual_servers)}
