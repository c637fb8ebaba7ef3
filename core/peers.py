"""Links between directors (``[[cluster.peer]]``): every peer's events reach the local hooks.

For each configured peer the daemon runs the gap-repairing
:class:`~clusterbus.bus.client.Subscriber` over CURVE (this daemon's ``[bus] certificate``
as the client key pair, the peer's ``public_key`` as the server key) and hands each of the
peer's events to the local plugin hooks (:meth:`PluginHost.notify_event`), with the
peer's own ``origin``:

* the local membership view stays the local sources' view: a peer's ``node.up`` reaches
  the hooks but never :meth:`Engine.report`;
* the daemon never re-publishes a peer's events (they do not go to the engine's sinks),
  so N directors that all list each other form no loop;
* an event whose ``origin`` is not the peer's configured node number is dropped and
  counted (``dropped.wrong_origin``): a peer never forwards a third director's events.

Liveness of a peer, as events plugins can use (published locally, origin = this
director), decided by :class:`PeerLiveness` from what the subscriber saw:

* ``director.up`` (reason ``heartbeat``): the first heartbeat, or heartbeats again after
  a ``director.down``; reason ``restarted`` when the peer came back with a new epoch;
* ``director.down`` (reason ``heartbeat_timeout``): no heartbeat for the subscriber's
  dead interval (three of the peer's heartbeat intervals); reason ``restarted``, followed
  by ``director.up``, when a heartbeat with a new epoch arrives before that.

After a peer restarted (new epoch) the events its new run published before this daemon
reconnected are replayed from the peer's ring (``backfilled``) and then the stream goes
on, so no event of the new run is missed while the ring holds it. Events of a peer's run
that are no longer in its ring are lost to the hooks: ``resyncs`` counts such snapshots.

:meth:`Cluster.directors() <clusterbus.engine.Cluster.directors>` holds this director and
every peer that is up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .bus.client import RequestFailed, RequestTimeout, Snapshot, Subscriber
from .bus.codec import FrameError, decode
from .config import Config
from .engine import Engine
from .events import DirectorDown, DirectorUp, Event

__all__ = ["PeerLiveness", "Transition", "PeerLink", "PeersService"]

log = logging.getLogger(__name__)

#: Longest wait between two liveness checks of a peer (seconds).
CHECK_EVERY = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """A decision of :class:`PeerLiveness`: publish ``director.up`` (``up``) or
    ``director.down`` with ``reason``."""

    up: bool
    reason: str


class PeerLiveness:
    """Sans-IO: is a peer director up, given what its subscription saw.

    Feed :meth:`observe` the subscription's state (whether heartbeats arrive in time, the
    epoch of the last heartbeat); it returns the transitions to publish, in order.
    """

    def __init__(self) -> None:
        self.up = False
        #: the epoch of the peer's run last seen (None: never heard)
        self.epoch: int | None = None
        #: transitions so far: ``up``, ``down``, ``restarts``
        self.counters: dict[str, int] = {"up": 0, "down": 0, "restarts": 0}

    def observe(self, *, alive: bool, epoch: int | None) -> list[Transition]:
        """The transitions this observation causes (often none)."""
        out: list[Transition] = []
        restarted = epoch is not None and self.epoch is not None and epoch != self.epoch
        if alive:
            if self.up and restarted:
                out += [Transition(up=False, reason="restarted"),
                        Transition(up=True, reason="restarted")]
            elif not self.up:
                out.append(Transition(up=True, reason="restarted" if restarted else "heartbeat"))
        elif self.up:
            out.append(Transition(up=False, reason="heartbeat_timeout"))
        if epoch is not None and alive:  # a dead peer's new epoch counts when it is back
            self.epoch = epoch
            if restarted:
                self.counters["restarts"] += 1
        for t in out:
            self.up = t.up
            self.counters["up" if t.up else "down"] += 1
        return out


class PeerLink:
    """The subscription to one peer director and what came of it.

    :param peer: the validated ``[[cluster.peer]]`` table.
    :param certificate: this daemon's ``.key_secret`` file.
    :param engine: the engine (plugins, ``director.*`` events).
    """

    def __init__(self, peer: Mapping[str, Any], certificate: str, engine: Engine) -> None:
        self.node = int(peer["node"])
        self.publish = str(peer["publish"])
        self.snapshot = str(peer["snapshot"])
        self.engine = engine
        self.sub = Subscriber(self.publish, self.snapshot, certificate=certificate,
                              server_key=str(peer["public_key"]), request_timeout=1.0,
                              request_retries=1)
        self.liveness = PeerLiveness()
        #: ``events.delivered`` (handed to the hooks), ``backfilled`` (of those, replayed
        #: after a restart), ``dropped.wrong_origin``, ``request_timeouts``,
        #: ``request_failed``, ``resyncs`` (continuity re-established by a snapshot)
        self.counters: dict[str, int] = {"events.delivered": 0, "backfilled": 0,
                                         "dropped.wrong_origin": 0, "request_timeouts": 0,
                                         "request_failed": 0, "resyncs": 0}
        self._last: Event | None = None  # the last event delivered

    # -- liveness -------------------------------------------------------------------------

    def check(self, *, new_epoch: int | None = None) -> None:
        """Compare what the subscription saw with the last decision; publish the change.

        :param new_epoch: the epoch of a reply from the peer's new run (proof of life
            before its first heartbeat arrives).
        """
        hb = self.sub.last_heartbeat
        epoch: int | None
        if new_epoch is not None:
            alive, epoch = True, new_epoch
        else:
            alive, epoch = self.sub.alive, (hb.epoch if hb is not None else None)
        for t in self.liveness.observe(alive=alive, epoch=epoch):
            (log.info if t.up else log.warning)(
                "peer director %d is %s (%s)", self.node, "up" if t.up else "DOWN", t.reason)
            self.engine.publish(DirectorUp if t.up else DirectorDown, node=self.node,
                                reason=t.reason)

    async def watch(self) -> None:
        """Check liveness until cancelled."""
        while True:
            self.check()
            await asyncio.sleep(min(CHECK_EVERY, self.sub.effective_dead_after / 4))

    # -- the stream -----------------------------------------------------------------------

    async def follow(self) -> None:
        """Read the peer's stream and hand its events to the hooks, until cancelled."""
        sub = self.sub
        while True:
            try:
                # each event is handed to the hooks from the socket's wake-up itself
                snap = await sub.follow(self.deliver)
            except RequestTimeout:
                self._count("request_timeouts")
                log.debug("peer %d: no answer from %s", self.node, self.snapshot)
                await asyncio.sleep(CHECK_EVERY)
                continue
            except RequestFailed as exc:
                self._count("request_failed")
                log.warning("peer %d: bad answer from %s: %s", self.node, self.snapshot, exc)
                await asyncio.sleep(CHECK_EVERY)
                continue
            await self._resynced(snap)

    def deliver(self, event: Event) -> None:
        """Hand one peer event to the local hooks (never to the view, never re-published)."""
        if event.origin != self.node:
            self._count("dropped.wrong_origin")
            if self.counters["dropped.wrong_origin"] == 1:
                log.warning("peer %d sent an event of origin %d (%s seq %d): dropped; is "
                            "[[cluster.peer]] node right?", self.node, event.origin,
                            event.topic, event.seq)
            return
        self.counters["events.delivered"] += 1
        self._last = event  # (status builds the summary: nothing is built per event)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("peer %d: %s seq %d -> hooks", self.node, event.topic, event.seq)
        self.engine.plugins.notify_event(event, self.engine.cluster)

    async def _resynced(self, snap: Snapshot) -> None:
        """Continuity was re-established at ``snap.seq``. After a restart (new epoch), the
        new run's events up to there are replayed from the peer's ring and delivered."""
        if snap.reason == "epoch_changed":  # director.down/up before the new run's events
            self.check(new_epoch=snap.epoch)
        else:
            self._count("resyncs")
            log.warning("peer %d: events lost (%s), continuing at seq %d", self.node,
                        snap.reason, snap.seq)
            return
        after = 0
        while after < snap.seq:
            try:
                header, payload = await self.sub.requester.request("REPLAY", after)
            except (RequestTimeout, RequestFailed) as exc:
                self._count("resyncs")
                log.warning("peer %d: cannot replay its new run's first events: %s",
                            self.node, exc)
                return
            if header.get("epoch") != snap.epoch or header.get("status") != "ok" \
                    or len(payload) % 2:
                self._count("resyncs")
                log.warning("peer %d: its new run's first events are gone (%s)", self.node,
                            header.get("status"))
                return
            progressed = False
            for i in range(0, len(payload), 2):
                try:
                    event = decode(payload[i:i + 2])
                except FrameError as exc:
                    self._count(f"dropped.{exc.code}")
                    continue
                if event.seq <= after or event.seq > snap.seq:
                    continue
                after, progressed = event.seq, True
                self.counters["backfilled"] += 1
                self.deliver(event)
            if not progressed or not header.get("more"):
                return

    @property
    def last_event(self) -> dict[str, Any] | None:
        """``topic``, ``origin`` and ``seq`` of the last event delivered (None: none)."""
        e = self._last
        return None if e is None else {"topic": e.topic, "origin": e.origin, "seq": e.seq}

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def status(self) -> dict[str, Any]:
        """Plain data for ``status``: this peer's link."""
        sub = self.sub
        hb = sub.last_heartbeat
        return {
            "node": self.node,
            "publish": self.publish,
            "snapshot": self.snapshot,
            "connected": hb is not None,
            "alive": self.liveness.up,
            "epoch": hb.epoch if hb is not None else None,
            "seq": sub.seq,
            "since_heartbeat": round(sub.since_heartbeat, 3),
            "last_event": self.last_event,
            "counters": {**self.counters,
                         **{f"director.{k}": v for k, v in self.liveness.counters.items()},
                         **{f"stream.{k}": v for k, v in sub.counters.items()}},
        }


class PeersService:
    """The daemon service of ``[[cluster.peer]]``: one :class:`PeerLink` per peer.

    :raises ConfigError: a key file cannot be used (checked at configuration time too).
    """

    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        certificate = str(config["bus"]["certificate"])
        self.links = {int(p["node"]): PeerLink(p, certificate, engine)
                      for p in config["cluster"]["peer"]}
        self.counters: dict[str, int] = {}
        self.started = time.monotonic()
        engine.director_sources["peers"] = self.directors

    def directors(self) -> list[int]:
        """The peers that are up."""
        return [node for node, link in self.links.items() if link.liveness.up]

    async def run(self) -> None:
        """Follow every peer until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                for node, link in self.links.items():
                    link.sub.open()
                    tg.create_task(link.follow(), name=f"peer{node}")
                    tg.create_task(link.watch(), name=f"peer{node}.watch")
                log.info("following %d peer director(s): %s", len(self.links),
                         ", ".join(str(n) for n in self.links))
        finally:
            for link in self.links.values():
                link.sub.close()

    def status(self) -> dict[str, Any]:
        """Per peer (by node number): connected, alive, epoch, seq and counters."""
        peers = {str(node): link.status() for node, link in self.links.items()}
        total: dict[str, int] = {}
        for p in peers.values():
            for k in ("events.delivered", "backfilled", "dropped.wrong_origin"):
                total[k] = total.get(k, 0) + p["counters"].get(k, 0)
        return {"peers": peers, "alive": sorted(self.directors()), **total}
