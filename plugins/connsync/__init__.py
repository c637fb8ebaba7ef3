"""connsync: replicate the IPVS connection table between directors (built-in plugin).

Every director runs the kernel's IPVS master *and* backup sync daemons (active/active).
This plugin sits between them and the other directors:

* **capture**: the datagrams the local kernel's master daemon sends on
  ``[connsync] interface`` (``kernel.Capture``, an fd on the loop) are split into their
  entries (``codec.split``: the bytes of each version 1 entry, nothing decoded), kept in
  the table as this director's own entries and relayed as they are;
* **relay**: to every peer director over a dedicated CURVE channel
  (:mod:`~clusterbus.plugins.connsync.channel`), reliably (the FTFW-like
  :mod:`~clusterbus.plugins.connsync.relay`: acknowledgements, resend, gap repair, a full
  resync of the table for a peer that (re)starts);
* **inject**: the peers' entries (checked per batch: ``codec.check_entries``) are kept in
  the table under their origin and handed to the local kernel's backup daemon as sync
  datagrams (``codec.assemble`` -> ``kernel.Injector``), so IPVS holds them exactly as if
  the kernel had synced them;
* **takeover barrier**: ``clusterbus_vrrp_prepare_master`` returns an awaitable that
  waits until every entry received so far is injected and the backup daemon consumed it
  (``kernel.committed``), within ``barrier_timeout``; a timeout is logged (rate-limited),
  counted (``barrier.timeouts``) and, per ``on_barrier_timeout``, proceeds or vetoes.

Inert without a ``[connsync]`` section: no socket, no kernel access, and no barrier
hook at all (it is registered at configure time only when the section is there, so the
speaker does not cross to the daemon's loop before a takeover on conn-sync's behalf).
The codec, table, kernel and conntrack modules are imported only when the section is
there. See docs/connsync.md.
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
from dataclasses import dataclass, fields, replace
from types import ModuleType
from typing import Any

from clusterbus import (
    Cluster,
    ClusterbusError,
    Config,
    ConfigError,
    DecodeError,
    hookimpl,
)
from clusterbus.config import REQUIRED, Key, between, parse_endpoint, validate_table
from clusterbus.ratelimit import LogLimiter

from .channel import SHOW, Channel, RelayLink, peers_from_config
from .relay import Deliver, Effect, Relay, ResyncDone, ResyncStarted

__all__ = ["ConnSync", "ConnsyncPlugin", "ConnsyncConfig", "CtOp", "plugin", "parse", "SCHEMA",
           "conn_to_wire", "conn_from_wire", "entry_to_wire", "entry_from_wire"]

log = logging.getLogger(__name__)

PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
#: most rows ``clusterbus connsync show`` gets from the daemon by default
SHOW_LIMIT = 10_000
#: most received entries waiting for injection (beyond: dropped, counted)
INJECT_QUEUE = 500_000
#: the name the takeover barrier's hook is registered under while configured
BARRIER_HOOKS = "connsync.barrier"
#: fewest entries per injection round (4 datagrams of 255 entries with the backup
#: daemon's receive size raised); a round is as many datagrams as fill INJECT_SHARE of the
#: backup socket's receive buffer (``kernel.backup_capacity``), the daemon is given time
#: to consume each round
INJECT_CHUNK = 1020
#: the share of the backup socket's receive buffer one injection round may fill (the
#: next round goes once the daemon has consumed it)
INJECT_SHARE = 0.4
#: the longest wait for the backup daemon after each injection round
INJECT_PACE = 0.05
#: seconds between two looks at the backup socket's queue while it has no room for the
#: next round
INJECT_POLL = 0.001
#: entries/s the backup daemon is assumed to apply at most: after a round the injection
#: sleeps that long before it looks at the daemon's queue (each look is system calls,
#: expensive in a VM, and would take the CPU from the daemon itself). UML's daemon
#: applied 125,000-165,000/s with a CPU of its own; a slower one is polled for the rest
INJECT_RATE = 200_000
#: most received conntrack entries waiting to be created (beyond: dropped, counted)
CT_QUEUE = 500_000
#: conntrack entries per ctnetlink round (pipelined requests)
CT_CHUNK = 1024
#: seconds between two sweeps of the peers' conntrack entries past their timeout
CT_EXPIRE_EVERY = 10.0
#: the tag of a conntrack entry in the relay's batches: ``["ct", "u"|"d", CtEntry wire]``
CT_TAG = "ct"
#: entries per relay batch (one frame): 36 bytes each for IPv4, so 36 KB; per batch the
#: channel, the relay and the acknowledgement cost system calls (expensive in a VM),
#: per entry only a few slices and a dict update
BATCH_MAX = 1024
#: most frames the channel handles per loop turn: one, so the injection task runs between
#: any two (a frame of 1024 entries is checked and tabled in ~1.5 ms on the host, ~8 ms in
#: UML; four per turn delayed each injection round by a receive turn of ~30 ms there)
TURN_FRAMES = 1
#: the shortest resend timeout (TCP's 200 ms on Linux): a link measured idle at a few
#: milliseconds would otherwise resend batches whenever the peer's process is not
#: scheduled for 50 ms (seen under load: 5 of 20 batches of a burst); a gap the receiver
#: sees is repaired at once by its NACK, not by this timeout
RTO_MIN = 0.2
#: the longest resend timeout: a receiver working through a full window of batches
#: during a resync answers in seconds, not in a round trip
RTO_MAX = 4.0
#: most unacknowledged batches per peer: 8 x 1024 entries; more only queue up in front
#: of a busy receiver (its acknowledgements, and so the resend timeout, come later)
WINDOW = 8
#: seconds the capture is read on a timer, not on readiness, after a read found datagrams
#: (until a read finds none): at a steady stream every datagram of the master daemon
#: (one entry each with kernel_maxlen 1) would wake the loop, and each wake-up costs
#: system calls; this bounds the wake-ups to one per CAPTURE_LINGER, at that much lag
CAPTURE_LINGER = 0.003
#: longest seconds captured entries short of a full batch wait for the acknowledgement of
#: the batches in flight to a peer (Nagle): at 50,000 entries/s a batch (and its
#: acknowledgement) per capture wake-up was ~400 frames/s each way, and each frame costs
#: both directors system calls (ZeroMQ's I/O thread, the loop's wake-up); held, a round
#: trip carries one batch. An entry with nothing in flight leaves at once
BATCH_HOLD = 0.02
#: entries that go as a batch without waiting for the acknowledgement: at 50,000/s 5 ms
#: of them, so a slow acknowledgement delays entries that much, not a round trip
HOLD_SIZE = 256


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


#: the ``[connsync]`` keys a reload applies at run time (``kernel_maxlen`` while its
#: datagrams fit the capture's frames); the others (the interface, the listen endpoint,
#: the syncid, conntrack) need a restart
RELOAD_LIVE = frozenset({"barrier_timeout", "on_barrier_timeout", "sync_threshold",
                         "kernel_maxlen"})


def parse(config: Config, section: Mapping[str, Any]) -> ConnsyncConfig:
    """Validate ``[connsync]`` against the rest of the file.

    :raises ConfigError: naming the file and the key.
    """
    v = validate_table(section, SCHEMA, file=config.file, prefix="connsync")
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
    # one expression, no generators: this runs for every entry received
    if not (af in (2, 10) and type(proto) is int and 0 <= proto <= 255
            and type(flags) is int and 0 <= flags < 2**32
            and type(state) is int and 0 <= state < 2**32
            and type(fwmark) is int and 0 <= fwmark < 2**32
            and type(timeout) is int and 0 <= timeout < 2**32
            and type(cport) is int and 0 <= cport <= 65535
            and type(vport) is int and 0 <= vport <= 65535
            and type(dport) is int and 0 <= dport <= 65535):
        raise DecodeError("an entry's numbers are out of range")
    family = socket.AF_INET if af == 2 else socket.AF_INET6
    a = caddr
    try:
        socket.inet_pton(family, a)  # C: a tenth of ipaddress's cost per entry
        a = vaddr
        socket.inet_pton(family, a)
        a = daddr
        socket.inet_pton(family, a)
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
                              fwmark=fwmark, timeout=timeout,
                              in_seq=None if in_seq is None else seq(in_seq),
                              out_seq=None if out_seq is None else seq(out_seq),
                              pe_name=pe_name, pe_data=pe_data)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"not a sync entry: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class CtOp:
    """A conntrack entry in the relay's batches, beside the IPVS entries: created or
    updated (``destroy`` False) or removed on the peers.

    :param entry: a ``conntrack.CtEntry`` (the original tuple is its identity).
    """

    entry: Any
    destroy: bool = False


def entry_to_wire(e: Any) -> Any:
    """An entry of the relay's batches as a msgpack-able value: an IPVS entry as the bytes
    of one version 1 sync entry (``codec.encode_conn``; the bytes themselves when it is
    already), a :class:`CtOp` as ``["ct", "u"|"d", CtEntry wire]``."""
    if type(e) is bytes:
        return e
    if isinstance(e, CtOp):
        return [CT_TAG, "d" if e.destroy else "u", e.entry.to_wire()]
    return _part("codec").encode_conn(e)


def entry_from_wire(v: Any, codec: ModuleType, conntrack: ModuleType) -> Any:
    """The value :func:`entry_to_wire` made, back: an IPVS entry stays bytes (checked), a
    conntrack entry becomes a :class:`CtOp`. The list form of :func:`conn_to_wire` (an
    older sender's) is accepted too, as bytes.

    :raises DecodeError: anything else.
    """
    if type(v) is bytes:
        codec.check_entries((v,))
        return v
    if isinstance(v, list) and len(v) == 3 and v[0] == CT_TAG:
        if v[1] not in ("u", "d"):
            raise DecodeError(f"a conntrack entry's operation is {str(v[1])[:20]!r}, "
                              "not 'u' or 'd'")
        return CtOp(entry=conntrack.CtEntry.from_wire(v[2]), destroy=v[1] == "d")
    return codec.encode_conn(conn_from_wire(v, codec))


def encode_batch(items: list[Any]) -> list[Any]:
    """A batch's entries as msgpack-able values (:func:`entry_to_wire` each): IPVS entries
    are bytes already, so a batch of them goes as it is."""
    if set(map(type, items)) == {bytes}:
        return items
    return [entry_to_wire(e) for e in items]


def decode_batch(raw: list[Any], codec: ModuleType, conntrack: ModuleType) -> tuple[Any, ...]:
    """A batch's values back (:func:`entry_from_wire` each), the IPVS entries checked
    together.

    :raises DecodeError: any value that is not an entry (the whole batch is refused).
    """
    if set(map(type, raw)) == {bytes}:
        codec.check_entries(raw)
        return tuple(raw)
    return tuple(entry_from_wire(v, codec, conntrack) for v in raw)


#: IPv4 and UDP headers: a sync datagram of ``n`` bytes is a frame of ``n + 28`` bytes
SYNC_HEADERS = 28
def fitting_maxlen(kernel_maxlen: int, mtu: int | None) -> int:
    """``kernel_maxlen`` lowered to what one frame of an interface with ``mtu`` carries.
    The kernel bounds the master's sync_maxlen by 65,535 bytes only, not by the MTU: a
    larger datagram would leave in IP fragments, which the capture cannot reassemble."""
    if mtu is None or mtu <= SYNC_HEADERS:
        return kernel_maxlen
    return min(kernel_maxlen, mtu - SYNC_HEADERS)


def _check_barrier_deadlines(cfg: ConnsyncConfig, config: Config) -> None:
    """Warn about each VRRP instance whose takeover stops waiting for the plugins before
    the barrier can veto (``on_barrier_timeout = "veto"``): its deadline then decides."""
    if cfg.on_barrier_timeout != "veto":
        return
    from clusterbus.vrrp.config import instances

    try:
        found = instances(config)
    except ConfigError:
        return  # reported by the VRRP section's own validation
    for inst in found:
        deadline = inst.prepare_timeout or inst.advert_interval
        if cfg.barrier_timeout >= deadline:
            log.warning("connsync: VRRP instance %s stops waiting for the barrier after "
                        "%g s (prepare_timeout, else advert_interval), before "
                        "barrier_timeout = %g s: a late barrier cannot veto; set its "
                        "prepare_timeout above %g", inst.name, deadline,
                        cfg.barrier_timeout, cfg.barrier_timeout)


def _local_only(e: Any) -> bool:
    """A loopback conntrack entry: this host's own, never synced."""
    return e.src.startswith("127.") or e.dst.startswith("127.") or "::1" in (e.src, e.dst)


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
        self.conntrack = _part("conntrack")
        self.relay = Relay(run=time.time_ns(), peers=self.peer_nodes,
                           snapshot=self._snapshot, encode=entry_to_wire,
                           decode=lambda v: entry_from_wire(v, self.codec, self.conntrack),
                           batch_max=BATCH_MAX, window=WINDOW, rto_min=RTO_MIN,
                           rto_max=RTO_MAX, hold=BATCH_HOLD, hold_size=HOLD_SIZE,
                           encode_batch=encode_batch,
                           decode_batch=lambda raw: decode_batch(raw, self.codec,
                                                                 self.conntrack))
        self.channel = Channel(listen=cfg.listen, certificate=str(config["bus"]["certificate"]),
                               peers=peers, turn_frames=TURN_FRAMES)
        self.link = RelayLink(self.relay, self.channel, self._effect, request=self._request,
                              clock=clock)
        self.limited = LogLimiter(log, interval=10.0)
        #: dotted counters: capture.*, inject.*, barrier.*
        self.counters: dict[str, int] = dict.fromkeys((
            "capture.datagrams", "capture.entries", "capture.dropped.bad_datagram",
            "capture.dropped.other_syncid", "inject.entries", "inject.datagrams",
            "inject.dropped.queue_full", "inject.dropped.encode", "inject.dropped.kernel",
            "inject.errors.send",
            "inject.commit_waits", "inject.room_waits", "barrier.passed", "barrier.timeouts",
            "barrier.vetoes",
            "barrier.startup_vetoes", "knobs.failed", "conntrack.events", "conntrack.originated",
            "conntrack.skipped.local", "conntrack.skipped.peer_owned", "conntrack.dumps",
            "conntrack.errors.dump", "conntrack.errors.apply", "conntrack.dropped.queue_full",
            "conntrack.ignored.disabled", "conntrack.expired", "conntrack.stale_removed"), 0)
        # per peer: entries received / injected (or given up), inject lag, resyncs
        self.received = dict.fromkeys(self.peer_nodes, 0)
        self.injected = dict.fromkeys(self.peer_nodes, 0)
        self.settled = dict.fromkeys(self.peer_nodes, 0)  # injected + dropped
        self.lag_ms: dict[int, float] = dict.fromkeys(self.peer_nodes, 0.0)
        self.lag_max_ms: dict[int, float] = dict.fromkeys(self.peer_nodes, 0.0)
        self.resync_done: dict[int, float | None] = dict.fromkeys(self.peer_nodes, None)
        self.last_barrier: dict[str, Any] | None = None
        self.started = clock()
        # received entries to inject: (peer, entry bytes, when received) per batch
        self._queue: deque[tuple[int, list[bytes], float]] = deque()
        self._queued = 0  # entries in _queue
        # conntrack (``conntrack = true``): our own entries (dump, then events), the
        # peers' (key -> entry, when received), and the ones still to create/remove
        self.ct: Any = None
        self.ct_own: dict[Any, Any] = {}
        self.ct_peer: dict[int, dict[Any, tuple[Any, float]]] = {p: {} for p in self.peer_nodes}
        self.ct_resync: dict[int, set[Any]] = {}
        self.ct_stats: dict[int, dict[str, int]] = {p: dict.fromkeys((
            "received", "created", "updated", "deleted", "failed"), 0) for p in self.peer_nodes}
        self.ct_enqueued = dict.fromkeys(self.peer_nodes, 0)
        self.ct_done = dict.fromkeys(self.peer_nodes, 0)
        self._ct_queue: deque[tuple[int, CtOp]] = deque()
        self._ct_wake = asyncio.Event()
        self._ct_redump = asyncio.Event()
        self._ct_out: list[CtOp] = []
        self._ct_touched: set[Any] | None = None  # keys events changed during a dump
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._capture: Any = None
        #: the capture's next timed read while datagrams keep coming (None: on readiness)
        self._capture_timer: asyncio.TimerHandle | None = None
        self._injector: Any = None
        #: the longest datagram the local backup daemon takes (read once it runs; until
        #: then the kernel's default for a 1500-byte MTU: 40 IPv4 entries)
        self._inject_maxlen: int = self.kernel.BACKUP_MAXLEN_DEFAULT
        # entries per injection round (sized by the backup socket's buffer at start)
        self._inject_round = INJECT_CHUNK
        #: the backup socket's receive buffer in bytes (0 until the daemon runs)
        self._inject_capacity = 0
        #: the sync daemons' ports, read once they run (None: read at each look)
        self._ports: range | None = None
        #: the master daemon's sync_maxlen in use: ``kernel_maxlen``, fitted to the MTU
        self.kernel_maxlen = cfg.kernel_maxlen
        #: the backup socket's drop count when last read (it counts since it was opened)
        self._drops_read = 0
        self.running = False
        #: keys of a reloaded ``[connsync]`` that were not applied: key -> "old -> new"
        self.restart_needed: dict[str, str] = {}
        #: the largest datagram the capture's ring frames hold (set when it opens)
        self._capture_max = 0
        self._knob_tasks: set[asyncio.Task[None]] = set()

    # -- capture --------------------------------------------------------------------------

    def _capture_ready(self) -> None:
        """The capture fd is readable: read it, then on a timer while datagrams come."""
        if self._on_capture() and CAPTURE_LINGER > 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._capture.fileno())
            self._capture_timer = loop.call_later(CAPTURE_LINGER, self._capture_due)

    def _capture_due(self) -> None:
        """The capture's timer: read again; once a read finds nothing, back to readiness
        (also when the read raised: the loop logs it, and the capture goes on)."""
        loop = asyncio.get_running_loop()
        got = False
        try:
            got = self._on_capture()
        finally:
            if got:
                self._capture_timer = loop.call_later(CAPTURE_LINGER, self._capture_due)
            else:
                self._capture_timer = None
                loop.add_reader(self._capture.fileno(), self._capture_ready)

    def _on_capture(self) -> bool:
        """Read the capture: split into entries, keep as ours, relay.

        :returns: whether any datagram was read."""
        try:
            datagrams = self._capture.read()
        except OSError as exc:
            self.limited.error(("capture",), "connsync: capture read failed: %s", exc)
            return False
        if not datagrams:
            return False
        now = self.clock()
        conns: list[bytes] = []
        split = self.codec.split
        for data in datagrams:
            try:
                syncid, raws = split(data)
            except DecodeError as exc:
                self.counters["capture.dropped.bad_datagram"] += 1
                self.limited.warning(("bad_datagram",), "connsync: undecodable sync datagram "
                                     "from the local kernel: %s", exc)
                continue
            if syncid != self.cfg.syncid:
                self.counters["capture.dropped.other_syncid"] += 1
                continue
            conns.extend(raws)
        self.counters["capture.datagrams"] += len(datagrams)
        if conns:
            self.table.apply_many(self.local, conns, now)
            self.counters["capture.entries"] += len(conns)
            self.link.originate(conns, now)
        return True

    # -- received entries -------------------------------------------------------------------

    def _effect(self, e: Effect) -> None:
        now = self.clock()
        if isinstance(e, Deliver):
            if set(map(type, e.entries)) == {bytes}:
                conns: list[bytes] = list(e.entries)
            else:
                conns = [c for c in e.entries if type(c) is bytes]
                self._ct_received(e.peer, [c for c in e.entries if isinstance(c, CtOp)],
                                  e.snapshot, now)
            if not conns:
                return
            self.received[e.peer] += len(conns)
            self.table.apply_many(e.peer, conns, now)
            room = max(INJECT_QUEUE - self._queued, 0)
            if room < len(conns):
                lost = len(conns) - room
                self.counters["inject.dropped.queue_full"] += lost
                self.settled[e.peer] += lost
                self.limited.warning(("inject_queue",), "connsync: injection queue full: "
                                     "%d entries of node %d not injected", lost, e.peer)
                conns = conns[:room]
            if conns:
                self._queue.append((e.peer, conns, now))
                self._queued += len(conns)
            self._wake.set()
            self._progress.set()
        elif isinstance(e, ResyncStarted):
            self.ct_resync[e.peer] = set()
            log.info("connsync: node %d sends its full table%s", e.peer,
                     " (it restarted)" if e.restarted else "")
        elif isinstance(e, ResyncDone):
            self.resync_done[e.peer] = now
            self._ct_resync_done(e.peer)
            self._progress.set()
            log.info("connsync: node %d's full table received", e.peer)

    async def _inject_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                chunk = self._take(self._inject_round)
                self._inject(chunk)
                self._progress.set()
                # let the backup daemon consume the round (and the loop run the rest)
                await asyncio.sleep(sum(len(c) for _, c, _ in chunk) / INJECT_RATE)
                if self._queue:
                    # more waiting: the next round goes as soon as the daemon's socket has
                    # room for it, not after a full commit check (a backlog would then
                    # wait for the settle time and two looks per round)
                    self.counters["inject.room_waits"] += 1
                    await self._backup_room(timeout=INJECT_PACE)
                else:
                    self.counters["inject.commit_waits"] += 1
                    await self._drained(timeout=INJECT_PACE)

    async def _drained(self, *, timeout: float) -> None:
        """After the last round: the kernel module's commit check (the backup daemon has
        applied everything injected), at most ``timeout``, cut short as soon as more
        entries arrive, which then go at once (the look for room paces them): a whole
        check held every entry arriving meanwhile back (up to 28 ms under load)."""
        self._wake.clear()  # the queue is empty: whatever sets it now is new
        await self.kernel.committed(timeout=timeout, ports=self._ports, look=self._look,
                                    interrupt=self._wake)

    async def _backup_room(self, *, timeout: float) -> bool:
        """Wait until the backup socket's queue leaves room for another round (it holds
        at most :data:`INJECT_SHARE` of its buffer), or ``timeout``; True when it does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        limit = self._inject_capacity * INJECT_SHARE  # a round more: 2 x INJECT_SHARE
        while True:
            try:
                q = self._look()
            except OSError:
                return bool(await self.kernel.committed(
                    timeout=max(0.0, deadline - loop.time()), ports=self._ports))
            if q.rx_queue <= limit:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(INJECT_POLL)

    def _look(self) -> Any:
        """The backup daemon's socket as the kernel's socket diagnostics show it (IPv4:
        the daemons run on the IPv4 sync group); its drops are counted."""
        q = self.kernel.backup_queue(group=self.kernel.SYNC_GROUP4, ports=self._ports)
        self._seen_drops(q.drops)
        return q

    def _seen_drops(self, drops: int) -> None:
        """The backup socket's drop count as last read: a growth means the kernel threw
        injected datagrams away (its receive buffer was full): counted, warned about."""
        if drops < self._drops_read:  # the daemon's socket was opened again
            self._drops_read = 0
        if drops > self._drops_read:
            self.counters["inject.dropped.kernel"] += drops - self._drops_read
            self.limited.warning(("backup_drops",), "connsync: the kernel's backup daemon "
                                 "socket dropped %d injected datagram(s) (receive buffer "
                                 "full); those entries are not in the kernel until their "
                                 "next update", drops - self._drops_read)
            self._drops_read = drops

    def _backup_buffer(self) -> int:
        """The backup socket's receive buffer: as the kernel reports it, else worked out
        from the sysctls."""
        try:
            q = self.kernel.backup_queue(group=self.kernel.SYNC_GROUP4)
            got = q.rcvbuf
            self._drops_read = q.drops  # what it dropped before is not ours
        except OSError:
            got = 0
        return got if got > 0 else int(self.kernel.backup_capacity())

    def _size_inject_rounds(self, capacity: int) -> None:
        """Rounds of as many full datagrams as fill INJECT_SHARE of the backup socket's
        ``capacity`` bytes (IPv4 entries of 36 bytes; at least INJECT_CHUNK entries)."""
        per_datagram = max(1, min(255, (self._inject_maxlen - 8) // 36))
        truesize = self.kernel.datagram_truesize(8 + 36 * per_datagram)
        self._inject_capacity = capacity
        datagrams = max(1, int(capacity * INJECT_SHARE) // truesize)
        self._inject_round = max(INJECT_CHUNK, datagrams * per_datagram)
        log.debug("connsync: injection rounds of %d entries (backup socket buffer %d bytes)",
                  self._inject_round, capacity)

    def _take(self, most: int) -> list[tuple[int, list[bytes], float]]:
        """Up to ``most`` queued entries, in order, as (peer, entries, when received)."""
        chunk: list[tuple[int, list[bytes], float]] = []
        q = self._queue
        n = 0
        while q and n < most:
            peer, conns, t = q[0]
            if n + len(conns) > most:  # split the batch: the rest stays first in line
                take = most - n
                q[0] = (peer, conns[take:], t)
                conns = conns[:take]
            else:
                q.popleft()
            chunk.append((peer, conns, t))
            n += len(conns)
        self._queued -= n
        return chunk

    def _inject(self, chunk: list[tuple[int, list[bytes], float]]) -> None:
        raws = [c for _, conns, _ in chunk for c in conns] if len(chunk) > 1 else chunk[0][1]
        try:
            datagrams = self.codec.assemble(raws, syncid=self.cfg.syncid,
                                            maxlen=self._inject_maxlen)
        except (ValueError, TypeError) as exc:
            self.counters["inject.dropped.encode"] += len(raws)
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
        for peer, conns, t in chunk:
            self.settled[peer] += len(conns)
            if datagrams and sent_ok:
                self.injected[peer] += len(conns)
            lag = (now - t) * 1000
            self.lag_ms[peer] = lag
            self.lag_max_ms[peer] = max(self.lag_max_ms[peer], lag)
        if datagrams and sent_ok:
            self.counters["inject.entries"] += len(raws)

    def _snapshot(self) -> list[Any]:
        """Our own table for a peer's full resync: IPVS entries, then conntrack entries."""
        out: list[Any] = self.table.snapshot_raw(self.local, self.clock())
        out.extend(CtOp(entry=e) for e in self.ct_own.values())
        return out

    # -- conntrack ---------------------------------------------------------------------------

    def _on_ct_event(self, ev: Any) -> None:
        """A local conntrack event: ours are relayed; the peers' entries we created (their
        own events here) and loopback entries are not."""
        self.counters["conntrack.events"] += 1
        e = ev.entry
        if _local_only(e):
            self.counters["conntrack.skipped.local"] += 1
            return
        key = e.key()
        if self._ct_touched is not None:
            self._ct_touched.add(key)  # newer than what the running dump may say
        if ev.kind == "destroy":
            if self.ct_own.pop(key, None) is not None:
                self._ct_originate(CtOp(entry=e, destroy=True))
            return
        if any(key in t for t in self.ct_peer.values()):
            self.counters["conntrack.skipped.peer_owned"] += 1
            return
        self.ct_own[key] = e
        self._ct_originate(CtOp(entry=e))

    def _ct_originate(self, op: CtOp) -> None:
        # events come in bursts: relay them together, once the burst was read
        if not self._ct_out:
            asyncio.get_running_loop().call_soon(self._ct_flush)
        self._ct_out.append(op)

    def _ct_flush(self) -> None:
        out, self._ct_out = self._ct_out, []
        if out:
            self.counters["conntrack.originated"] += len(out)
            self.link.originate(out)

    async def _ct_dump_loop(self) -> None:
        """Dump the local table at start, and again when the events overran."""
        while True:
            await self._ct_redump.wait()
            self._ct_redump.clear()
            touched: set[Any] = set()
            self._ct_touched = touched
            try:
                entries = await self.ct.dump()
            except (OSError, TimeoutError) as exc:
                self._ct_touched = None
                self.counters["conntrack.errors.dump"] += 1
                self.limited.error(("ct_dump",), "connsync: conntrack dump failed: %s (again "
                                   "in 1 s)", exc)
                await asyncio.sleep(1.0)
                self._ct_redump.set()
                continue
            self._ct_touched = None
            self.counters["conntrack.dumps"] += 1
            fresh: dict[Any, Any] = {}
            for e in entries:
                key = e.key()
                if _local_only(e):
                    self.counters["conntrack.skipped.local"] += 1
                    continue
                if key in touched or any(key in t for t in self.ct_peer.values()):
                    continue
                fresh[key] = e
            for key, e in list(self.ct_own.items()):
                if key not in fresh and key not in touched:
                    del self.ct_own[key]
                    self._ct_originate(CtOp(entry=e, destroy=True))
            for key, e in fresh.items():
                if self.ct_own.get(key) != e:
                    self.ct_own[key] = e
                    self._ct_originate(CtOp(entry=e))

    def _ct_received(self, peer: int, ops: list[CtOp], snapshot: bool, now: float) -> None:
        if not self.cfg.conntrack:
            self.counters["conntrack.ignored.disabled"] += len(ops)
            return
        self.ct_stats[peer]["received"] += len(ops)
        held = self.ct_peer[peer]
        seen = self.ct_resync.get(peer) if snapshot else None
        for op in ops:
            key = op.entry.key()
            if op.destroy:
                held.pop(key, None)
            else:
                held[key] = (op.entry, now)
                if seen is not None:
                    seen.add(key)
        self._ct_enqueue(peer, ops)

    def _ct_enqueue(self, peer: int, ops: list[CtOp]) -> None:
        room = max(CT_QUEUE - len(self._ct_queue), 0)
        self.ct_enqueued[peer] += len(ops)
        if room < len(ops):
            lost = len(ops) - room
            self.counters["conntrack.dropped.queue_full"] += lost
            self.ct_done[peer] += lost
            self.limited.warning(("ct_queue",), "connsync: conntrack queue full: %d entries "
                                 "of node %d not created", lost, peer)
        self._ct_queue.extend((peer, op) for op in ops[:room])
        self._ct_wake.set()
        self._progress.set()

    def _ct_resync_done(self, peer: int) -> None:
        """A peer's full table arrived: what we hold of it that it no longer has goes."""
        seen = self.ct_resync.pop(peer, None)
        if seen is None or not self.cfg.conntrack:
            return
        held = self.ct_peer[peer]
        stale = [CtOp(entry=held.pop(k)[0], destroy=True) for k in list(held) if k not in seen]
        if stale:
            self.counters["conntrack.stale_removed"] += len(stale)
            self._ct_enqueue(peer, stale)

    async def _ct_apply_loop(self) -> None:
        """Create, update and remove the peers' entries in the local table, in order."""
        while True:
            await self._ct_wake.wait()
            self._ct_wake.clear()
            while self._ct_queue:
                chunk = [self._ct_queue.popleft()
                         for _ in range(min(CT_CHUNK, len(self._ct_queue)))]
                i = 0
                while i < len(chunk):  # runs of one operation, so a key's order holds
                    j = i
                    while j < len(chunk) and chunk[j][1].destroy == chunk[i][1].destroy:
                        j += 1
                    await self._ct_apply(chunk[i:j])
                    i = j
                self._progress.set()

    async def _ct_apply(self, run: list[tuple[int, CtOp]]) -> None:
        by_peer: dict[int, list[Any]] = {}
        for peer, op in run:
            by_peer.setdefault(peer, []).append(op.entry)
        destroy = run[0][1].destroy
        for peer, entries in by_peer.items():
            st = self.ct_stats[peer]
            try:
                if destroy:
                    for e in entries:
                        try:
                            st["deleted"] += bool(await self.ct.delete(e))
                        except OSError:
                            st["failed"] += 1
                else:
                    got = await self.ct.apply_many(entries)
                    st["created"] += got["created"]
                    st["updated"] += got["updated"]
                    st["failed"] += got["failed"]
                    if got["failed"]:
                        self.limited.warning(("ct_apply",), "connsync: %d conntrack entries of "
                                             "node %d refused by the kernel", got["failed"], peer)
            except (OSError, TimeoutError) as exc:
                self.counters["conntrack.errors.apply"] += 1
                st["failed"] += len(entries)
                self.limited.error(("ct_apply_error",), "connsync: conntrack requests "
                                   "failed: %s", exc)
            finally:
                self.ct_done[peer] += len(entries)

    def _ct_expire(self, now: float) -> None:
        for held in self.ct_peer.values():
            gone = [k for k, (e, t) in held.items() if now > t + max(e.timeout, 1)]
            for k in gone:
                del held[k]
            self.counters["conntrack.expired"] += len(gone)

    # -- the barrier ---------------------------------------------------------------------------

    async def barrier(self, instance: str) -> str | None:
        """Wait, within ``barrier_timeout``, until every entry received so far is injected
        and committed, and until every peer heard from lately has sent its full table
        (a director that just started takes no VIP before it has the peers' tables).

        :returns: ``None``, or the veto (``on_barrier_timeout = "veto"``).
        """
        start = self.clock()
        target = dict(self.received)
        ct_target = dict(self.ct_enqueued)
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
                        ct_target[p] = max(ct_target[p], self.ct_enqueued[p])
                    resyncing = still
                    if not resyncing and all(self.settled[p] >= n for p, n in target.items()) \
                            and all(self.ct_done[p] >= n for p, n in ct_target.items()):
                        break
                    self._progress.clear()
                    try:  # also look again now and then: a peer may have gone quiet
                        async with asyncio.timeout(0.1):
                            await self._progress.wait()
                    except TimeoutError:
                        pass
            left = max(0.0, timeout - (self.clock() - start))
            ok = bool(await self.kernel.committed(timeout=left, ports=self._ports)) \
                if self.running else True
        except TimeoutError:
            ok = False
        took = self.clock() - start
        waiting = sum(max(0, n - self.settled[p]) for p, n in target.items())
        ct_waiting = sum(max(0, n - self.ct_done[p]) for p, n in ct_target.items())
        self.last_barrier = {"instance": instance, "seconds": round(took, 4), "passed": ok,
                             "entries": sum(target.values()), "waiting": waiting,
                             "conntrack.entries": sum(ct_target.values()),
                             "conntrack.waiting": ct_waiting}
        if ok:
            self.counters["barrier.passed"] += 1
            return None
        self.counters["barrier.timeouts"] += 1
        veto = self.cfg.on_barrier_timeout == "veto"
        self.limited.warning(("barrier", instance), "connsync: %s: synced entries not "
                             "committed within %.3f s (%d still queued); %s", instance,
                             timeout, waiting + ct_waiting, "staying BACKUP" if veto else "taking over")
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
            raws = self.table.snapshot_raw(origin, now)
            total += len(raws)
            for raw in raws[:max(0, limit - len(rows))]:
                c = self.codec.decode_entry(raw)
                rows.append({"origin": origin, "protocol": PROTOCOLS.get(c.protocol,
                                                                          str(c.protocol)),
                             "client": _hostport(c.caddr, c.cport),
                             "virtual": _hostport(c.vaddr, c.vport),
                             "real": _hostport(c.daddr, c.dport), "state": c.state,
                             "flags": c.flags, "fwmark": c.fwmark, "timeout": c.timeout,
                             "template": bool(c.flags & 0x1000)})
        ct_rows: list[dict[str, Any]] = []
        ct_total = 0
        held = [(self.local, e) for e in self.ct_own.values()]
        held += [(p, e) for p in self.peer_nodes for e, _ in self.ct_peer[p].values()]
        for origin, e in held:
            ct_total += 1
            if len(ct_rows) >= limit:
                continue
            ct_rows.append({"origin": origin, "protocol": PROTOCOLS.get(e.proto, str(e.proto)),
                            "original": f"{_hostport(e.src, e.sport)} -> "
                                        f"{_hostport(e.dst, e.dport)}",
                            "reply": f"{_hostport(e.rsrc, e.rsport)} -> "
                                     f"{_hostport(e.rdst, e.rdport)}",
                            "state": e.tcp[0] if e.tcp else None, "status": e.status,
                            "mark": e.mark, "zone": e.zone, "timeout": e.timeout})
        return {"node": self.local, "total": total, "rows": rows, "truncated": total > len(rows),
                "conntrack": {"enabled": self.cfg.conntrack, "total": ct_total, "rows": ct_rows,
                              "truncated": ct_total > len(ct_rows)}}

    # -- reload ----------------------------------------------------------------------------------

    def reconfigure(self, new: ConnsyncConfig) -> dict[str, str]:
        """Apply a reloaded ``[connsync]``: the barrier's keys at once, the kernel's knobs
        (``sync_threshold``, ``kernel_maxlen``) in a thread; a changed key of the others
        keeps its running value and is listed in :attr:`restart_needed` (and so in the
        reload's verdict). ``kernel_maxlen`` needs a restart too when its datagrams would
        not fit the capture's frames (an interface MTU above 1500).

        :returns: :attr:`restart_needed`: key -> ``"old -> new"``.
        """
        keep: dict[str, Any] = {}
        restart: dict[str, str] = {}
        for f in fields(ConnsyncConfig):
            old, now = getattr(self.cfg, f.name), getattr(new, f.name)
            if old != now and f.name not in RELOAD_LIVE:
                keep[f.name] = old
                restart[f.name] = f"{old!r} -> {now!r}"
        maxlen = self.kernel_maxlen
        if new.kernel_maxlen != self.cfg.kernel_maxlen:
            maxlen = self._fitted(new.kernel_maxlen)
            if self.running and maxlen > self._capture_max:
                keep["kernel_maxlen"] = self.cfg.kernel_maxlen
                restart["kernel_maxlen"] = (f"{self.cfg.kernel_maxlen} -> {new.kernel_maxlen} "
                                            f"(beyond the capture's {self._capture_max}-byte "
                                            f"frames)")
                maxlen = self.kernel_maxlen
        knobs = (new.sync_threshold, maxlen) != (self.cfg.sync_threshold, self.kernel_maxlen)
        self.cfg = replace(new, **keep)
        self.restart_needed = restart
        if knobs and self.running:  # before it runs, run() sets them from self.cfg
            self.kernel_maxlen = maxlen
            task = asyncio.get_running_loop().create_task(self._set_knobs(maxlen))
            self._knob_tasks.add(task)
            task.add_done_callback(self._knob_tasks.discard)
        return restart

    def _fitted(self, kernel_maxlen: int) -> int:
        """``kernel_maxlen`` fitted to one frame of the sync interface (warned about when
        lowered)."""
        mtu = self.kernel.interface_mtu(self.cfg.interface)
        maxlen = fitting_maxlen(kernel_maxlen, mtu)
        if maxlen != kernel_maxlen:
            log.warning("connsync: kernel_maxlen %d does not fit one frame of %s (MTU %s): "
                        "the master daemon gets %d (a larger datagram would leave in IP "
                        "fragments, which the capture cannot read)", kernel_maxlen,
                        self.cfg.interface, mtu, maxlen)
        return maxlen

    async def _set_knobs(self, maxlen: int) -> None:
        """``sync_threshold`` and the master daemon's ``maxlen`` into the kernel; a failure
        is counted and logged (the kernel then sends with its own delays)."""
        # in a thread: blocking netlink calls, and pyroute2's IPVSSocket (used to find
        # the genetlink family) cannot be built on a thread whose event loop runs
        try:
            await asyncio.to_thread(self.kernel.set_sync_knobs, kernel_maxlen=maxlen,
                                    sync_threshold=self.cfg.sync_threshold)
        except (OSError, ClusterbusError) as exc:
            self.counters["knobs.failed"] += 1
            log.error("connsync: cannot set the kernel's sync knobs: %s (the kernel sends "
                      "with its own delays)", exc)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Set the kernel's knobs, capture, relay and inject until cancelled."""
        loop = asyncio.get_running_loop()
        maxlen = self.kernel_maxlen = self._fitted(self.cfg.kernel_maxlen)
        await self._set_knobs(maxlen)
        try:  # the kernel's master and backup daemons, both at once (active/active)
            await asyncio.to_thread(self.kernel.ensure_daemons, self.cfg.interface,
                                    syncid=self.cfg.syncid, kernel_maxlen=maxlen)
        except OSError as exc:
            self.counters["knobs.failed"] += 1
            log.error("connsync: cannot start the kernel's sync daemons on %s: %s",
                      self.cfg.interface, exc)
        try:  # net.ipv4.vs.sync_ports as the daemons started with it (a sysctl read)
            self._ports = await asyncio.to_thread(self.kernel.sync_ports)
        except OSError:
            self._ports = None
        try:  # inject datagrams as long as the backup daemon takes (255 entries at most)
            got = await asyncio.to_thread(self.kernel.backup_maxlen)
            if got:
                self._inject_maxlen = got
        except OSError as exc:
            log.warning("connsync: cannot read the backup daemon's receive size: %s "
                        "(injecting datagrams of %d bytes)", exc, self._inject_maxlen)
        self._size_inject_rounds(await asyncio.to_thread(self._backup_buffer))
        # ring frames for the master's datagrams: one entry each at kernel_maxlen 1
        self._capture_max = max(1500, maxlen)
        self._capture = self.kernel.Capture(self.cfg.interface,
                                            max_datagram=self._capture_max)
        self._injector = self.kernel.Injector(self.cfg.interface)
        self._capture.open()
        fd = self._capture.fileno()
        try:
            self._injector.open()
            loop.add_reader(fd, self._capture_ready)
            if self.cfg.conntrack:
                self.ct = self.conntrack.Conntrack()
                self.ct.subscribe(self._on_ct_event, on_overrun=self._ct_redump.set)
                self._ct_redump.set()  # the table as it is now, then the events
            self.running = True
            log.info("connsync: capturing and injecting on %s (syncid %d)%s; %d peer(s)",
                     self.cfg.interface, self.cfg.syncid,
                     ", conntrack too" if self.ct is not None else "", len(self.peer_nodes))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.link.run(), name="connsync-link")
                tg.create_task(self._inject_loop(), name="connsync-inject")
                tg.create_task(self._expire_loop(), name="connsync-expire")
                if self.ct is not None:
                    tg.create_task(self._ct_dump_loop(), name="connsync-ct-dump")
                    tg.create_task(self._ct_apply_loop(), name="connsync-ct-apply")
        finally:
            self.running = False
            loop.remove_reader(fd)
            if self._capture_timer is not None:
                self._capture_timer.cancel()
                self._capture_timer = None
            self._capture.close()
            self._injector.close()
            if self.ct is not None:
                self.ct.close()

    async def _expire_loop(self) -> None:
        last_ct = self.clock()
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            self.table.expire(now)
            if now - last_ct >= CT_EXPIRE_EVERY:
                last_ct = now
                self._ct_expire(now)

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
                "link_up": self.channel.link_up.get(node),
                "rto_ms": r["rto_ms"],
                "srtt_ms": r["srtt_ms"],
                **{f"conntrack.{k}": v for k, v in self.ct_stats[node].items()},
                "conntrack.queued": self.ct_enqueued[node] - self.ct_done[node],
                "conntrack.held": len(self.ct_peer[node]),
                "relay": c,
            }
        kernel_ct = self.ct.counters if self.ct is not None else {}
        return {"node": self.local, "listen": self.channel.bound or self.cfg.listen,
                "table": len(self.table), "conntrack": len(self.ct_own), "peers": peers,
                "last_barrier": self.last_barrier, "kernel_maxlen": self.kernel_maxlen,
                "barrier_timeout": self.cfg.barrier_timeout,
                "on_barrier_timeout": self.cfg.on_barrier_timeout,
                "sync_threshold": list(self.cfg.sync_threshold),
                "restart_needed": dict(self.restart_needed),
                "counters": {**{k: v for k, v in getattr(self._capture, "counters", {}).items()
                                if k.startswith("capture.dropped.")},
                             **self.counters,
                             **{f"channel.{k}": v for k, v in self.channel.counters.items()},
                             **{f"conntrack.kernel.{k}": v for k, v in kernel_ct.items()}}}


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
        """Validate ``[connsync]``; without one the plugin stays inert (and registers no
        takeover barrier: the speaker then does not ask before a takeover on its behalf)."""
        self._cfg.pop(cluster, None)
        cluster.unregister_hooks(BARRIER_HOOKS)
        if section is not None:
            cfg = parse(config, section)
            for part in ("codec", "table", "kernel", "conntrack"):
                try:
                    _part(part)
                except ImportError as exc:
                    raise ConfigError(f"conn-sync cannot run: its {part} module is missing "
                                      f"from this installation ({exc})", file=config.file,
                                      key="connsync") from None
            self._cfg[cluster] = (cfg, config)
            cluster.register_hooks(_Barrier(self), BARRIER_HOOKS)
            _check_barrier_deadlines(cfg, config)

    @hookimpl
    def clusterbus_reload(self, config: Config, section: Mapping[str, Any] | None,
                          cluster: Cluster) -> None:
        """Apply a changed ``[connsync]`` (SIGHUP, ``clusterbus reload``):
        ``barrier_timeout``, ``on_barrier_timeout``, ``sync_threshold`` and
        ``kernel_maxlen`` at run time (:meth:`ConnSync.reconfigure`); a change of the
        others needs a restart: logged, and listed in the reload's ``restart_needed``
        (through ``restart_needed`` in this plugin's status). Adding or removing the
        section, and the peers (``[cluster]``, ``[bus]``), the daemon reports as needing
        a restart itself.

        :raises ConfigError: the new section is invalid: the running one stays.
        """
        got = self._cfg.get(cluster)
        if got is None:
            if section is not None:
                parse(config, section)  # a bad new section still gets its one-line error
                log.warning("connsync: adding a [connsync] section needs a restart")
            return
        if section is None:
            log.warning("connsync: removing the [connsync] section needs a restart; keeping "
                        "the running configuration")
            return
        new = parse(config, section)
        svc = self._svc.get(cluster)
        if svc is None:  # services not started yet: they start with the new section
            self._cfg[cluster] = (new, got[1])
            return
        before = svc.cfg
        for key, change in svc.reconfigure(new).items():
            log.warning("connsync: %s changed (%s): restart the daemon to apply it",
                        key, change)
        self._cfg[cluster] = (svc.cfg, got[1])
        if svc.cfg != before:
            _check_barrier_deadlines(svc.cfg, config)
            log.info("connsync: configuration reloaded (barrier_timeout %g s, "
                     "on_barrier_timeout %s, sync_threshold %s, kernel_maxlen %d)",
                     svc.cfg.barrier_timeout, svc.cfg.on_barrier_timeout,
                     list(svc.cfg.sync_threshold), svc.cfg.kernel_maxlen)

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



class _Barrier:
    """The takeover barrier's hook, registered (as :data:`BARRIER_HOOKS`) only while
    ``[connsync]`` is configured: an install without conn-sync has no implementation of
    ``clusterbus_vrrp_prepare_master`` from it, so its speaker takes over without asking
    the daemon's loop first."""

    def __init__(self, plugin: ConnsyncPlugin) -> None:
        self.plugin = plugin

    @hookimpl
    def clusterbus_vrrp_prepare_master(self, instance: str, cluster: Cluster) -> Any:
        """The takeover barrier (an awaitable); ``None`` before the service exists."""
        svc = self.plugin.service(cluster)
        return None if svc is None else svc.barrier(instance)


#: The entry point (``clusterbus.plugins.connsync:plugin``).
plugin = ConnsyncPlugin()
