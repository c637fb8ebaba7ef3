"""connsync: replicate the IPVS connection table between directors (built-in plugin).

Every director runs the kernel's IPVS master *and* backup sync daemons (active/active).
This plugin sits between them and the other directors:

* **capture**: the datagrams the local kernel's master daemon sends on
  ``[connsync] interface`` (``kernel.Capture``, an fd on the loop) are decoded
  (``codec.decode``), kept in the table as this director's own entries and relayed;
* **relay**: to every peer director over a dedicated CURVE channel
  (:mod:`~clusterbus.plugins.connsync.channel`), reliably (the FTFW-like
  :mod:`~clusterbus.plugins.connsync.relay`: acknowledgements, resend, gap repair, a full
  resync of the table for a peer that (re)starts);
* **inject**: the peers' entries are kept in the table under their origin and handed to
  the local kernel's backup daemon as sync datagrams (``codec.encode_many`` ->
  ``kernel.Injector``), so IPVS holds them exactly as if the kernel had synced them;
* **takeover barrier**: ``clusterbus_vrrp_prepare_master`` returns an awaitable that
  waits until every entry received so far is injected and the backup daemon consumed it
  (``kernel.committed``), within ``barrier_timeout``; a timeout is logged (rate-limited),
  counted (``barrier.timeouts``) and, per ``on_barrier_timeout``, proceeds or vetoes.

Inert without a ``[connsync]`` section: no socket, no kernel access, and the barrier
answers at once. The codec, table and kernel modules are imported only when the section
is there. See docs/connsync.md.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from clusterbus import (
    Cluster,
    Config,
    ConfigError,
    DecodeError,
    hookimpl,
)
from clusterbus.config import REQUIRED, Key, between, parse_endpoint, validate_table
from clusterbus.ratelimit import LogLimiter

from .channel import SHOW, Channel, RelayLink, peers_from_config
from .relay import Deliver, Effect, Relay, ResyncDone, ResyncStarted

__all__ = ["ConnSync", "ConnsyncPlugin", "ConnsyncConfig", "plugin", "parse", "SCHEMA",
           "conn_to_wire", "conn_from_wire"]

log = logging.getLogger(__name__)

PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
#: most rows ``clusterbus connsync show`` gets from the daemon by default
SHOW_LIMIT = 10_000
#: most received entries waiting for injection (beyond: dropped, counted)
INJECT_QUEUE = 500_000
#: entries per injection round; the backup daemon is given time to consume each round
INJECT_CHUNK = 1024
#: the longest wait for the backup daemon after each injection round
INJECT_PACE = 0.05


def _listen(v: str) -> str:
    ep = parse_endpoint(v)
    if ep.transport != "tcp" or ep.port is None:
        raise ValueError("expected tcp://ADDRESS:PORT (the peers connect to it)")
    return str(ep)


def _threshold(v: list[Any]) -> str | None:
    if len(v) != 2 or not all(type(x) is int and 0 <= x <= 65535 for x in v):
        return "expected two integers [threshold, period], e.g. [2, 50]"
    return None


def _nonempty(v: str) -> str | None:
    return None if v and v.isprintable() and len(v) < 16 else "expected an interface name"


SCHEMA: dict[str, Key] = {
    "interface": Key(str, REQUIRED, _nonempty,
                     "the interface of the kernel's sync daemons (capture and injection)"),
    "listen": Key(str, REQUIRED, None, "this director's conn-sync endpoint, tcp://ADDR:PORT "
                  "(the peers' [[cluster.peer]] connsync)", convert=_listen),
    "syncid": Key(int, 0, between(0, 255), "the kernel sync daemons' --syncid"),
    "kernel_maxlen": Key(int, 1, between(1, 65507),
                         "the kernel master daemon's sync_maxlen (small: sent sooner)"),
    "sync_threshold": Key(list, [2, 50], _threshold,
                          "net.ipv4.vs.sync_threshold as [threshold, period]"),
    "barrier_timeout": Key(float, 0.5, between(0.0, 60.0),
                           "seconds the takeover waits for synced entries to be committed"),
    "on_barrier_timeout": Key(str, "proceed",
                              lambda v: None if v in ("proceed", "veto")
                              else 'expected "proceed" or "veto"',
                              "what a barrier timeout does: take over anyway, or stay BACKUP"),
    "conntrack": Key(bool, False, None, "also sync netfilter conntrack entries"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnsyncConfig:
    """The validated ``[connsync]`` section (see :data:`SCHEMA`)."""

    interface: str
    listen: str
    syncid: int
    kernel_maxlen: int
    sync_threshold: tuple[int, int]
    barrier_timeout: float
    on_barrier_timeout: str
    conntrack: bool


def parse(config: Config, section: Mapping[str, Any]) -> ConnsyncConfig:
    """Validate ``[connsync]`` against the rest of the file.

    :raises ConfigError: naming the file and the key.
    """
    v = validate_table(section, SCHEMA, file=config.file, prefix="connsync")
    if v["conntrack"]:
        raise ConfigError("conntrack sync is not available in this version (only IPVS "
                          "entries are synced); set conntrack = false", file=config.file,
                          key="connsync.conntrack")
    if not config["bus"]["certificate"]:
        raise ConfigError("conn-sync is CURVE-only: set [bus] certificate (and list the "
                          "peers in [[cluster.peer]])", file=config.file, key="connsync")
    peers = config["cluster"]["peer"]
    if not peers:
        raise ConfigError("no [[cluster.peer]] to sync with", file=config.file,
                          key="connsync")
    for i, p in enumerate(peers):
        if p.get("connsync") == v["listen"]:
            raise ConfigError("the same endpoint as [connsync] listen", file=config.file,
                              key=f"cluster.peer[{i}].connsync")
    return ConnsyncConfig(**{**v, "sync_threshold": tuple(v["sync_threshold"])})


# -- the wire form of an entry --------------------------------------------------------------

def conn_to_wire(c: Any) -> list[Any]:
    """A ``codec.SyncConn`` as a msgpack-able list."""
    def seq(s: Any) -> list[int] | None:
        return None if s is None else [s.init_seq, s.delta, s.previous_delta]

    return [c.af, c.protocol, c.flags, c.state, c.cport, c.vport, c.dport, c.caddr, c.vaddr,
            c.daddr, c.fwmark, c.timeout, seq(c.in_seq), seq(c.out_seq), c.pe_name, c.pe_data]


def conn_from_wire(v: Any, codec: ModuleType) -> Any:
    """The list :func:`conn_to_wire` made, as a ``codec.SyncConn``.

    :raises DecodeError: anything else.
    """
    if not isinstance(v, list) or len(v) != 16:
        raise DecodeError("an entry is an array of 16 fields")
    af, proto, flags, state, cport, vport, dport, caddr, vaddr, daddr, fwmark, timeout, \
        in_seq, out_seq, pe_name, pe_data = v
    u32 = (flags, state, fwmark, timeout)
    if af not in (2, 10) or type(proto) is not int or not 0 <= proto <= 255 \
            or not all(type(x) is int and 0 <= x < 2**32 for x in u32) \
            or not all(type(p) is int and 0 <= p <= 65535 for p in (cport, vport, dport)):
        raise DecodeError("an entry's numbers are out of range")
    family = socket.AF_INET if af == 2 else socket.AF_INET6
    for a in (caddr, vaddr, daddr):
        try:
            socket.inet_pton(family, a)  # C: a tenth of ipaddress's cost per entry
        except (OSError, TypeError, ValueError):
            raise DecodeError(f"an entry's address {str(a)[:45]!r} is not an "
                              f"IPv{4 if af == 2 else 6} address") from None

    def seq(s: Any) -> Any:
        if s is None:
            return None
        if not isinstance(s, list) or len(s) != 3 \
                or not all(type(x) is int and 0 <= x < 2**32 for x in s):
            raise DecodeError("an entry's sequence option is not three u32")
        return codec.SeqOpt(init_seq=s[0], delta=s[1], previous_delta=s[2])

    for b in (pe_name, pe_data):
        if b is not None and (not isinstance(b, bytes) or len(b) > 255):
            raise DecodeError("an entry's persistence-engine field is not bytes (<= 255)")
    try:
        return codec.SyncConn(af=af, protocol=proto, flags=flags, state=state, cport=cport,
                              vport=vport, dport=dport, caddr=caddr, vaddr=vaddr, daddr=daddr,
                              fwmark=fwmark, timeout=timeout, in_seq=seq(in_seq),
                              out_seq=seq(out_seq), pe_name=pe_name, pe_data=pe_data)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"not a sync entry: {exc}") from None


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _part(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


# -- the service --------------------------------------------------------------------------

class ConnSync:
    """Capture, relay, inject and the barrier, for one cluster (one engine).

    :param cfg: the validated section.
    :param config: the whole configuration (``[bus] certificate``, ``[[cluster.peer]]``).
    :param cluster: the cluster (``local_node``).
    :param clock: monotonic seconds.
    """

    def __init__(self, cfg: ConnsyncConfig, config: Config, cluster: Cluster, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.local = cluster.local_node
        self.clock = clock
        self.codec = _part("codec")
        self.kernel = _part("kernel")
        self.table = _part("table").ConnTable()
        peers = peers_from_config(config["cluster"]["peer"])
        self.peer_nodes = [p.node for p in peers]
        for p in peers:
            if not p.endpoint:
                log.warning("connsync: [[cluster.peer]] node %d has no connsync endpoint: "
                            "nothing flows until it connects here", p.node)
        self.relay = Relay(run=time.time_ns(), peers=self.peer_nodes,
                           snapshot=lambda: self.table.snapshot(self.local, self.clock()),
                           encode=conn_to_wire,
                           decode=lambda v: conn_from_wire(v, self.codec))
        self.channel = Channel(listen=cfg.listen, certificate=str(config["bus"]["certificate"]),
                               peers=peers)
        self.link = RelayLink(self.relay, self.channel, self._effect, request=self._request,
                              clock=clock)
        self.limited = LogLimiter(log, interval=10.0)
        #: dotted counters: capture.*, inject.*, barrier.*
        self.counters: dict[str, int] = dict.fromkeys((
            "capture.datagrams", "capture.entries", "capture.dropped.bad_datagram",
            "capture.dropped.other_syncid", "inject.entries", "inject.datagrams",
            "inject.dropped.queue_full", "inject.dropped.encode", "inject.errors.send",
            "inject.commit_waits", "barrier.passed", "barrier.timeouts", "barrier.vetoes",
            "barrier.startup_vetoes", "knobs.failed"), 0)
        # per peer: entries received / injected (or given up), inject lag, resyncs
        self.received = dict.fromkeys(self.peer_nodes, 0)
        self.injected = dict.fromkeys(self.peer_nodes, 0)
        self.settled = dict.fromkeys(self.peer_nodes, 0)  # injected + dropped
        self.lag_ms: dict[int, float] = dict.fromkeys(self.peer_nodes, 0.0)
        self.lag_max_ms: dict[int, float] = dict.fromkeys(self.peer_nodes, 0.0)
        self.resync_done: dict[int, float | None] = dict.fromkeys(self.peer_nodes, None)
        self.last_barrier: dict[str, Any] | None = None
        self.started = clock()
        self._queue: deque[tuple[int, Any, float]] = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._capture: Any = None
        self._injector: Any = None
        self.running = False

    # -- capture --------------------------------------------------------------------------

    def _on_capture(self) -> None:
        """The capture fd is readable: decode, keep as ours, relay."""
        try:
            datagrams = self._capture.read()
        except OSError as exc:
            self.limited.error(("capture",), "connsync: capture read failed: %s", exc)
            return
        now = self.clock()
        conns: list[Any] = []
        for data in datagrams:
            self.counters["capture.datagrams"] += 1
            try:
                msg = self.codec.decode(data)
            except DecodeError as exc:
                self.counters["capture.dropped.bad_datagram"] += 1
                self.limited.warning(("bad_datagram",), "connsync: undecodable sync datagram "
                                     "from the local kernel: %s", exc)
                continue
            if msg.syncid != self.cfg.syncid:
                self.counters["capture.dropped.other_syncid"] += 1
                continue
            for conn in msg.conns:
                self.table.apply(self.local, conn, now)
            conns.extend(msg.conns)
        if conns:
            self.counters["capture.entries"] += len(conns)
            self.link.originate(conns)

    # -- received entries -------------------------------------------------------------------

    def _effect(self, e: Effect) -> None:
        now = self.clock()
        if isinstance(e, Deliver):
            self.received[e.peer] += len(e.entries)
            for conn in e.entries:
                self.table.apply(e.peer, conn, now)
            room = INJECT_QUEUE - len(self._queue)
            if room < len(e.entries):
                lost = len(e.entries) - max(room, 0)
                self.counters["inject.dropped.queue_full"] += lost
                self.settled[e.peer] += lost
                self.limited.warning(("inject_queue",), "connsync: injection queue full: "
                                     "%d entries of node %d not injected", lost, e.peer)
            self._queue.extend((e.peer, c, now) for c in e.entries[:max(room, 0)])
            self._wake.set()
            self._progress.set()
        elif isinstance(e, ResyncStarted):
            log.info("connsync: node %d sends its full table%s", e.peer,
                     " (it restarted)" if e.restarted else "")
        elif isinstance(e, ResyncDone):
            self.resync_done[e.peer] = now
            self._progress.set()
            log.info("connsync: node %d's full table received", e.peer)

    async def _inject_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                n = min(INJECT_CHUNK, len(self._queue))
                chunk = [self._queue.popleft() for _ in range(n)]
                self._inject(chunk)
                self._progress.set()
                # let the backup daemon consume the round (and the loop run the rest)
                self.counters["inject.commit_waits"] += 1
                await self.kernel.committed(timeout=INJECT_PACE)

    def _inject(self, chunk: list[tuple[int, Any, float]]) -> None:
        try:
            datagrams = self.codec.encode_many([c for _, c, _ in chunk], syncid=self.cfg.syncid)
        except (ValueError, TypeError) as exc:
            self.counters["inject.dropped.encode"] += len(chunk)
            self.limited.error(("encode",), "connsync: cannot encode entries: %s", exc)
            datagrams = []
        sent_ok = True
        for d in datagrams:
            try:
                self._injector.send(d)
                self.counters["inject.datagrams"] += 1
            except OSError as exc:
                sent_ok = False
                self.counters["inject.errors.send"] += 1
                self.limited.error(("send",), "connsync: injection failed: %s", exc)
        now = self.clock()
        for peer, _c, t in chunk:
            self.settled[peer] += 1
            if datagrams and sent_ok:
                self.injected[peer] += 1
            lag = (now - t) * 1000
            self.lag_ms[peer] = lag
            self.lag_max_ms[peer] = max(self.lag_max_ms[peer], lag)
        if datagrams and sent_ok:
            self.counters["inject.entries"] += len(chunk)

    # -- the barrier ---------------------------------------------------------------------------

    async def barrier(self, instance: str) -> str | None:
        """Wait, within ``barrier_timeout``, until every entry received so far is injected
        and committed, and until every peer heard from lately has sent its full table
        (a director that just started takes no VIP before it has the peers' tables).

        :returns: ``None``, or the veto (``on_barrier_timeout = "veto"``).
        """
        start = self.clock()
        target = dict(self.received)
        timeout = self.cfg.barrier_timeout
        fresh = 3 * self.relay.keepalive
        if start - self.started < fresh:
            # Just started: a peer may be alive without having reached us yet, and the
            # speaker's deadline (one advert interval) is too short to wait for its table.
            # Stay BACKUP this time (the next advert or timer asks again); a peer still
            # silent after the grace counts as down.
            missing = [p for p in self.peer_nodes if self.resync_done[p] is None]
            if missing:
                self.counters["barrier.startup_vetoes"] += 1
                self.last_barrier = {"instance": instance, "seconds": 0.0, "passed": False,
                                     "entries": sum(target.values()), "waiting": 0,
                                     "startup": missing}
                return f"starting: no full table yet from node(s) {missing}"
        resyncing = set(self.relay.incomplete(start, fresh))
        ok = False
        try:
            async with asyncio.timeout(timeout):
                while True:
                    still = set(self.relay.incomplete(self.clock(), fresh)) & resyncing
                    for p in resyncing - still:  # its full table arrived: wait for it too
                        target[p] = max(target[p], self.received[p])
                    resyncing = still
                    if not resyncing and all(self.settled[p] >= n for p, n in target.items()):
                        break
                    self._progress.clear()
                    try:  # also look again now and then: a peer may have gone quiet
                        async with asyncio.timeout(0.1):
                            await self._progress.wait()
                    except TimeoutError:
                        pass
            left = max(0.0, timeout - (self.clock() - start))
            ok = bool(await self.kernel.committed(timeout=left)) if self.running else True
        except TimeoutError:
            ok = False
        took = self.clock() - start
        waiting = sum(max(0, n - self.settled[p]) for p, n in target.items())
        self.last_barrier = {"instance": instance, "seconds": round(took, 4), "passed": ok,
                             "entries": sum(target.values()), "waiting": waiting}
        if ok:
            self.counters["barrier.passed"] += 1
            return None
        self.counters["barrier.timeouts"] += 1
        veto = self.cfg.on_barrier_timeout == "veto"
        self.limited.warning(("barrier", instance), "connsync: %s: synced entries not "
                             "committed within %.3f s (%d still queued); %s", instance,
                             timeout, waiting, "staying BACKUP" if veto else "taking over")
        if veto:
            self.counters["barrier.vetoes"] += 1
            return f"synced connections not committed within {timeout:g} s"
        return None

    # -- local requests ------------------------------------------------------------------------

    def _request(self, message: Any) -> Any:
        if not isinstance(message, list) or not message or message[0] != SHOW:
            return ["ERROR", "unknown request"]
        limit = message[1] if len(message) > 1 and type(message[1]) is int else SHOW_LIMIT
        return ["TABLE", self.show(limit)]

    def show(self, limit: int = SHOW_LIMIT) -> dict[str, Any]:
        """The synced table as plain rows (``clusterbus connsync show``)."""
        now = self.clock()
        rows: list[dict[str, Any]] = []
        total = 0
        for origin in (self.local, *self.peer_nodes):
            for c in self.table.snapshot(origin, now):
                total += 1
                if len(rows) >= limit:
                    continue
                rows.append({"origin": origin, "protocol": PROTOCOLS.get(c.protocol,
                                                                          str(c.protocol)),
                             "client": _hostport(c.caddr, c.cport),
                             "virtual": _hostport(c.vaddr, c.vport),
                             "real": _hostport(c.daddr, c.dport), "state": c.state,
                             "flags": c.flags, "fwmark": c.fwmark, "timeout": c.timeout,
                             "template": bool(c.flags & 0x1000)})
        return {"node": self.local, "total": total, "rows": rows, "truncated": total > len(rows)}

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Set the kernel's knobs, capture, relay and inject until cancelled."""
        loop = asyncio.get_running_loop()
        # pyroute2's synchronous sockets cannot be made on a running loop: a worker thread
        try:
            await asyncio.to_thread(self.kernel.set_sync_knobs,
                                    kernel_maxlen=self.cfg.kernel_maxlen,
                                    sync_threshold=self.cfg.sync_threshold)
        except OSError as exc:
            self.counters["knobs.failed"] += 1
            log.error("connsync: cannot set the kernel's sync knobs: %s (the kernel sends "
                      "with its own delays)", exc)
        try:  # master and backup together, all the time (nothing else starts them)
            await asyncio.to_thread(self.kernel.ensure_daemons, self.cfg.interface,
                                    syncid=self.cfg.syncid,
                                    kernel_maxlen=self.cfg.kernel_maxlen)
        except OSError as exc:
            self.counters["knobs.failed"] += 1
            log.error("connsync: cannot start the kernel's sync daemons: %s (nothing is "
                      "captured or injected until they run)", exc)
        self._capture = self.kernel.Capture(self.cfg.interface)
        self._injector = self.kernel.Injector(self.cfg.interface)
        self._capture.open()
        fd = self._capture.fileno()
        try:
            self._injector.open()
            loop.add_reader(fd, self._on_capture)
            self.running = True
            log.info("connsync: capturing and injecting on %s (syncid %d); %d peer(s)",
                     self.cfg.interface, self.cfg.syncid, len(self.peer_nodes))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.link.run(), name="connsync-link")
                tg.create_task(self._inject_loop(), name="connsync-inject")
                tg.create_task(self._expire_loop(), name="connsync-expire")
        finally:
            self.running = False
            loop.remove_reader(fd)
            self._capture.close()
            self._injector.close()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.table.expire(self.clock())

    def status(self) -> dict[str, Any]:
        """Per peer: entries sent/received/injected, resends, lag, last resync; counters."""
        now = self.clock()
        relay = self.relay.status(now)
        peers: dict[str, Any] = {}
        for node in self.peer_nodes:
            r = relay[node]
            c = r["counters"]
            done = self.resync_done[node]
            peers[str(node)] = {
                "entries.sent": c["entries.sent"],
                "entries.received": self.received[node],
                "entries.injected": self.injected[node],
                "inject.queued": self.received[node] - self.settled[node],
                "resends": c["resends"],
                "lag_ms": round(self.lag_ms[node], 3),
                "lag_max_ms": round(self.lag_max_ms[node], 3),
                "send_lag_s": r["oldest_unacked_s"],
                "last_resync_s": None if done is None else round(now - done, 3),
                "resync_receiving": r["resync_receiving"],
                "resync_sending": r["resync_sending"],
                "since_heard_s": r["since_heard_s"],
                "relay": c,
            }
        return {"node": self.local, "listen": self.channel.bound or self.cfg.listen,
                "table": len(self.table), "peers": peers, "last_barrier": self.last_barrier,
                "counters": {**self.counters,
                             **{f"channel.{k}": v for k, v in self.channel.counters.items()}}}


class ConnsyncPlugin:
    """The plugin object registered through the entry point (state per cluster)."""

    def __init__(self) -> None:
        self._cfg: weakref.WeakKeyDictionary[Cluster, tuple[ConnsyncConfig, Config]] = \
            weakref.WeakKeyDictionary()
        self._svc: weakref.WeakKeyDictionary[Cluster, ConnSync] = weakref.WeakKeyDictionary()

    def service(self, cluster: Cluster) -> ConnSync | None:
        """The cluster's service (``None`` without ``[connsync]`` or before services)."""
        return self._svc.get(cluster)

    @hookimpl
    def clusterbus_configure(self, config: Config, section: Mapping[str, Any] | None,
                             cluster: Cluster) -> None:
        """Validate ``[connsync]``; without one the plugin stays inert."""
        self._cfg.pop(cluster, None)
        if section is not None:
            cfg = parse(config, section)
            for part in ("codec", "table", "kernel"):
                try:
                    _part(part)
                except ImportError as exc:
                    raise ConfigError(f"conn-sync cannot run: its {part} module is missing "
                                      f"from this installation ({exc})", file=config.file,
                                      key="connsync") from None
            self._cfg[cluster] = (cfg, config)

    @hookimpl
    def clusterbus_services(self, cluster: Cluster) -> list[Callable[[], Awaitable[None]]] | None:
        """The conn-sync service, when ``[connsync]`` is configured."""
        got = self._cfg.get(cluster)
        if got is None:
            return None
        svc = self._svc[cluster] = ConnSync(got[0], got[1], cluster)
        return [svc.run]

    @hookimpl
    def clusterbus_status(self, cluster: Cluster) -> dict[str, Any] | None:
        """Per peer: entries sent/received/injected, resends, lag, last resync."""
        svc = self._svc.get(cluster)
        return None if svc is None else svc.status()

    @hookimpl
    def clusterbus_vrrp_prepare_master(self, instance: str, cluster: Cluster) -> Any:
        """The takeover barrier (an awaitable), or ``None`` at once when inert."""
        svc = self._svc.get(cluster)
        return None if svc is None else svc.barrier(instance)


#: The entry point (``clusterbus.plugins.connsync:plugin``).
plugin = ConnsyncPlugin()
