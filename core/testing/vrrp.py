"""A fake link and a fake clock for VRRP routers: no sockets, no sleeps.

:class:`FakeLink` connects sans-IO :class:`clusterbus.vrrp.Router` objects the way a
shared Ethernet segment would: every multicast ``Transmit`` reaches every other running
router after :attr:`FakeLink.delay` seconds, a unicast one only the router whose primary
address it is sent to. Time (:class:`FakeClock`) moves only when the simulation moves it:
to the next router deadline or packet delivery, so a test of minutes of protocol runs in
milliseconds and lands exactly on the deadlines the RFC formulas give.

Every effect is recorded (:attr:`FakeLink.trace`), so a test can ask who became MASTER
when (:meth:`FakeLink.changes`), what was advertised (:meth:`FakeLink.adverts`) and how
many masters there ever were at once (:attr:`FakeLink.max_masters`).

>>> from clusterbus.vrrp import RouterConfig
>>> link = FakeLink()
>>> for name, prio, addr in (("A", 200, "10.0.0.1"), ("B", 100, "10.0.0.2")):
...     _ = link.add(RouterConfig(name=name, vrid=7, priority=prio, primary_address=addr,
...                               virtual_addresses=("10.0.0.100/24",)))
...     link.start(name)
>>> link.run_for(10)
>>> link.masters()
['A']

A router that asks before taking over (``RouterConfig.ask_prepare``) gets its
``PrepareMaster`` answered by :attr:`FakeLink.prepare` (``None``: agree; a string: veto),
or not at all when :attr:`FakeLink.prepare` is ``FakeLink.SILENT``.

Nothing here is used by the daemon itself.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from ..vrrp.machine import PrepareMaster, Router, RouterConfig, State, StateChanged, Transmit
from ..vrrp.packet import Advertisement, multicast_group

__all__ = ["FakeClock", "FakeLink", "Record"]


@dataclass
class FakeClock:
    """A monotonic clock that only moves when told to.

    :param now: the current time in seconds.
    """

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance_to(self, t: float) -> None:
        """Move to ``t`` (never backwards)."""
        self.now = max(self.now, t)


@dataclass(frozen=True)
class Record:
    """One effect a router produced, and when."""

    time: float
    router: str
    effect: object


_SILENT: Final = object()


@dataclass
class FakeLink:
    """Routers on one lossless link with a fixed delivery delay.

    :param delay: seconds from a ``Transmit`` to its delivery.
    :param clock: the shared clock (a new one by default).
    :param prepare: how ``PrepareMaster`` is answered: a function of the router's name
        returning ``None`` (agree) or a veto reason, or :attr:`SILENT` (never answered:
        the router's deadline decides). Default: agree.
    """

    #: ``prepare`` value: never answer PrepareMaster
    SILENT: ClassVar[object] = _SILENT

    delay: float = 0.0
    clock: FakeClock = field(default_factory=FakeClock)
    prepare: Callable[[str], str | None] | object = lambda name: None
    routers: dict[str, Router] = field(default_factory=dict)
    #: started and not crashed
    running: set[str] = field(default_factory=set)
    trace: list[Record] = field(default_factory=list)
    #: the most routers in MASTER at one time
    max_masters: int = 0
    _queue: list[tuple[float, int, str, Transmit]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _asked: list[tuple[float, int, str]] = field(default_factory=list)

    @property
    def now(self) -> float:
        """The clock's current time."""
        return self.clock.now

    # -- building ---------------------------------------------------------------------

    def add(self, config: RouterConfig) -> Router:
        """Add a router (INITIALIZE; :meth:`start` it)."""
        router = Router(config, now=self.now)
        self.routers[config.name] = router
        return router

    def start(self, name: str) -> None:
        """The router's Startup event."""
        self.routers[name].start(self.now)
        self.running.add(name)
        self._collect(name)

    def shutdown(self, name: str) -> None:
        """A graceful stop (a MASTER sends priority 0)."""
        self.routers[name].shutdown(self.now)
        self._collect(name)
        self.running.discard(name)

    def crash(self, name: str) -> None:
        """The router vanishes: it sends nothing more and hears nothing. Restarted, it
        comes back as a new router in INITIALIZE."""
        self.running.discard(name)
        self.routers[name].drain()
        cfg = self.routers[name].config
        self.routers[name] = Router(cfg, now=self.now)

    def set_priority(self, name: str, priority: int) -> None:
        """``Router.set_priority`` now."""
        self.routers[name].set_priority(priority, self.now)
        self._collect(name)

    # -- running ----------------------------------------------------------------------

    def masters(self) -> list[str]:
        """The running routers in MASTER, sorted."""
        return sorted(n for n in self.running if self.routers[n].state is State.MASTER)

    def run_until(self, end: float, *, max_steps: int = 1_000_000) -> None:
        """Process every delivery, answer and timer up to ``end`` (inclusive), then move
        the clock to ``end``.

        :raises AssertionError: more than ``max_steps`` steps (a router that never settles).
        """
        for _ in range(max_steps):
            t = self._next_event()
            if t is None or t > end:
                break
            self.clock.advance_to(t)
            while self._queue and self._queue[0][0] <= t:
                _, _, sender, tx = heapq.heappop(self._queue)
                for n in sorted(self.running):
                    r = self.routers[n]
                    if n == sender or (tx.dst != multicast_group(r.config.family)
                                       and tx.dst != r.config.primary_address):
                        continue
                    r.receive(tx.data, source=tx.src, dst=tx.dst, ttl=255, now=t)
                    self._collect(n)
            while self._asked and self._asked[0][0] <= t:
                _, _, n = heapq.heappop(self._asked)
                if n in self.running and callable(self.prepare):
                    self.routers[n].answer_prepare(self.prepare(n), t)
                    self._collect(n)
            for n in sorted(self.running):
                d = self.routers[n].next_deadline()
                if d is not None and d <= t:
                    self.routers[n].handle_timer(t)
                    self._collect(n)
        else:
            raise AssertionError("simulation did not settle")
        self.clock.advance_to(end)

    def run_for(self, seconds: float) -> None:
        """:meth:`run_until` ``now + seconds``."""
        self.run_until(self.now + seconds)

    # -- looking at the trace ---------------------------------------------------------

    def changes(self, name: str | None = None) -> list[tuple[float, str, State, State, str]]:
        """``(time, router, old, new, reason)`` for every state change (of ``name``)."""
        return [(r.time, r.router, r.effect.old, r.effect.new, r.effect.reason)
                for r in self.trace if isinstance(r.effect, StateChanged)
                and (name is None or r.router == name)]

    def adverts(self, name: str) -> list[tuple[float, Advertisement]]:
        """``(time, advert)`` for every advert ``name`` sent."""
        out = []
        for r in self.trace:
            if r.router == name and isinstance(r.effect, Transmit):
                e = r.effect
                out.append((r.time, Advertisement.from_bytes(e.data, src=e.src, dst=e.dst)))
        return out

    # -- internals --------------------------------------------------------------------

    def _collect(self, name: str) -> None:
        for effect in self.routers[name].drain():
            self.trace.append(Record(self.now, name, effect))
            if isinstance(effect, Transmit):
                heapq.heappush(self._queue, (self.now + self.delay, next(self._seq), name,
                                             effect))
            elif isinstance(effect, PrepareMaster) and self.prepare is not _SILENT:
                # answered on the next step, at the same time (as an adapter would)
                heapq.heappush(self._asked, (self.now, next(self._seq), name))
        self.max_masters = max(self.max_masters, len(self.masters()))

    def _next_event(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        if self._asked:
            times.append(self._asked[0][0])
        for n in self.running:
            d = self.routers[n].next_deadline()
            if d is not None:
                times.append(d)
        return min(times) if times else None
