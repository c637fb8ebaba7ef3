"""The conn-sync transport: a dedicated ZeroMQ channel between directors, CURVE only.

Bulk connection entries never travel on the bus (they would fill its replay ring and reach
every outside subscriber): each director binds one ROUTER socket on ``[connsync] listen``
and connects one DEALER to every peer's ``[[cluster.peer]] connsync`` endpoint.

* Security is the bus's: this daemon's ``[bus] certificate`` is the key pair of both
  sides; the ROUTER is a CURVE server whose authorized keys are the peers' ``public_key``
  files (and the daemon's own key, for ``clusterbus connsync show`` run as root), checked
  by pyzmq's authenticator through :class:`clusterbus.bus.security.BusSecurity`; each
  DEALER is a CURVE client with the peer's public key as server key. A refused handshake
  (an unknown key) is counted as ``auth_denied`` and logged once per address.
* Who sent a message is the CURVE key that authenticated it (ZeroMQ's ``User-Id``
  property), never a field of the message.
* Frames are msgpack (:func:`pack` / :func:`unpack`); anything that is not a well-formed
  relay message is dropped and counted by reason (``dropped.<code>``), logged
  rate-limited, never a traceback.
* Sends never block: a peer that is not connected or whose queue is full loses the
  message (``dropped.send``); the relay sends it again. A peer listed without a
  ``connsync`` endpoint is answered over its own connection to us.
* A dead link is noticed: ZeroMQ heartbeats (``ZMQ_HEARTBEAT_IVL`` / ``_TIMEOUT`` /
  ``_TTL``) on every socket close a connection whose peer stopped answering (a host that
  died, a cut cable: no FIN ever comes), and TCP keepalive does the same below ZeroMQ;
  the DEALER then reconnects on its own. Each DEALER's connection events are watched
  (``link.connected``, ``link.disconnected``, a warning per lost link).

:class:`RelayLink` runs a sans-IO :class:`~clusterbus.plugins.connsync.relay.Relay` on a
:class:`Channel`: the relay's ``Send`` effects go out here, its other effects to a
callback, its timers on the loop (``next_deadline``, no polling).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from clusterbus import DecodeError
from clusterbus.bus.security import (
    BusSecurity,
    ServerKeys,
    load_public_key,
    load_secret_certificate,
)
from clusterbus.bus.sockets import EVENTS, NOBLOCK, POLLIN, Reader
from clusterbus.ratelimit import LogLimiter

from .relay import Effect, Relay, RelayError, Send

__all__ = ["Channel", "ChannelPeer", "FrameError", "RelayLink", "pack", "unpack",
           "MAX_FRAME", "SHOW", "request_show", "peers_from_config"]

log = logging.getLogger(__name__)

#: frames a socket's reader handles per loop turn by default: a relay batch carries up to
#: 256 entries, so the bus's TURN_BUDGET (256 frames) would starve the injection task
#: during a resync
TURN_FRAMES = 4

#: A frame larger than this is dropped unread (``dropped.frame_too_large``).
MAX_FRAME = 16 << 20
#: Queued messages per peer (ZeroMQ high-water mark) before sends are dropped.
SEND_HWM = 10_000
#: The local request for the synced table (``clusterbus connsync show``).
SHOW = "SHOW"
#: ZAP identity of the daemon's own key (a local administrator, not a peer).
LOCAL = 0
#: seconds between ZeroMQ heartbeats on a link, and without any traffic before it is
#: closed (then the DEALER reconnects)
HEARTBEAT_IVL = 1.0
HEARTBEAT_TIMEOUT = 5.0
#: TCP keepalive on the links' sockets: idle seconds, probe interval, probes
TCP_KEEPALIVE = (10, 2, 3)
#: the connection events of a DEALER that are watched
_MONITOR_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                   | getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0))


class FrameError(DecodeError):
    """A frame that is not a relay message; ``code`` names the counter (``dropped.<code>``)."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code


def pack(message: Any) -> bytes:
    """One message as a frame."""
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    """A frame as a message (lists, ints, str, bytes).

    :raises FrameError: too large, not msgpack, or trailing bytes.
    """
    if len(data) > MAX_FRAME:
        raise FrameError("frame_too_large", f"frame of {len(data)} bytes (max {MAX_FRAME})")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise FrameError("bad_frame", f"not a msgpack frame: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelPeer:
    """A peer director as ``[[cluster.peer]]`` gives it.

    :param node: its node number.
    :param public_key: its public ``.key`` file.
    :param endpoint: its ``connsync`` endpoint (``""``: it connects to us only; we answer
        over that connection once it made one).
    """

    node: int
    public_key: str
    endpoint: str = ""


class _FrameReader(Reader):
    """The bus's socket reader, receiving without copy so that ``User-Id`` can be read."""

    def poll(self) -> list[Any] | None:
        sock = self.sock
        if int(sock.getsockopt(EVENTS)) & POLLIN:
            try:
                frames: list[Any] = sock.recv_multipart(NOBLOCK, copy=False)
                return frames
            except zmq.Again:
                pass
        return None


class Channel:
    """The sockets: one ROUTER we listen on, one DEALER per peer we send to.

    :param listen: ``[connsync] listen`` (``tcp://ADDR:PORT``).
    :param certificate: this daemon's ``.key_secret`` file (``[bus] certificate``).
    :param peers: the peer directors.
    :param turn_frames: most frames a socket's reader handles per loop turn.
    :param heartbeat: (interval, timeout) of the ZeroMQ heartbeats, seconds.
    :raises ConfigError: a key file cannot be used.
    """

    def __init__(self, *, listen: str, certificate: str, peers: list[ChannelPeer],
                 turn_frames: int = TURN_FRAMES,
                 heartbeat: tuple[float, float] = (HEARTBEAT_IVL, HEARTBEAT_TIMEOUT)) -> None:
        self.listen = listen
        self.turn_frames = max(1, turn_frames)
        self.heartbeat = heartbeat
        self.public, self.secret = load_secret_certificate(certificate)
        self.peers = {p.node: p for p in peers}
        self.keys: dict[bytes, int] = {load_public_key(p.public_key): p.node for p in peers}
        self.keys[self.public] = LOCAL
        #: ``frames.received``, ``frames.sent``, ``dropped.<code>``, ``auth_denied``...
        self.counters: dict[str, int] = {"frames.received": 0, "frames.sent": 0,
                                         "dropped.send": 0, "auth_denied": 0,
                                         "link.connected": 0, "link.disconnected": 0}
        #: per peer with an endpoint: whether our DEALER's connection to it is up
        self.link_up: dict[int, bool] = {}
        self.security = BusSecurity(ServerKeys(public=self.public, secret=self.secret,
                                               authorized=frozenset(self.keys)), self.counters)
        self.limited = LogLimiter(log, interval=60.0)
        self.bound = ""
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._dealers: dict[int, zmq.Socket[Any]] = {}
        #: peers without an endpoint: the routing id of their last connection to us
        self._routes: dict[int, bytes] = {}
        self._reader: _FrameReader | None = None
        self._monitors: dict[int, zmq.Socket[Any]] = {}

    def _link_options(self, sock: zmq.Socket[Any]) -> None:
        """Heartbeats and TCP keepalive: a link whose peer went silent is closed."""
        ivl, timeout = (max(1, int(x * 1000)) for x in self.heartbeat)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
        sock.setsockopt(zmq.HEARTBEAT_TTL, timeout)  # the peer's side times out too
        idle, intvl, cnt = TCP_KEEPALIVE
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, intvl)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, cnt)

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Bind and connect (on the running loop: the authenticator lives there).

        :raises zmq.ZMQError: the listen endpoint cannot be bound.
        """
        ctx: zmq.Context[Any] = zmq.Context()
        self._ctx = ctx
        self.security.start(zmq.asyncio.Context.shadow(ctx.underlying))
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.RCVHWM, SEND_HWM)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a gone client: Again, not lost
        self._link_options(router)
        self.security.server(router, "connsync")
        try:
            router.bind(self.listen)
        except zmq.ZMQError:
            router.close(0)
            self.close()
            raise
        self._router = router
        self.bound = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._reader = _FrameReader(router)
        for node, peer in self.peers.items():
            if not peer.endpoint:
                continue
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.setsockopt(zmq.SNDHWM, SEND_HWM)
            d.setsockopt(zmq.IMMEDIATE, 1)  # nothing queued for a peer that is not there
            self._link_options(d)
            self._monitors[node] = d.get_monitor_socket(_MONITOR_EVENTS)
            self.link_up[node] = False
            d.setsockopt(zmq.CURVE_SERVERKEY, load_public_key(peer.public_key))
            d.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
            d.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
            d.connect(peer.endpoint)
            self._dealers[node] = d
        log.info("connsync: listening on %s; sending to %d peer(s)", self.bound,
                 len(self._dealers))

    def close(self) -> None:
        """Close every socket (idempotent)."""
        self.security.stop()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for node, m in self._monitors.items():
            d = self._dealers.get(node)
            if d is not None:
                try:
                    d.disable_monitor()
                except zmq.ZMQError:
                    pass
            m.close(0)
        self._monitors.clear()
        for d in self._dealers.values():
            d.close(0)
        self._dealers.clear()
        if self._router is not None:
            self._router.close(0)
            self._router = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- sending --------------------------------------------------------------------------

    def send(self, peer: int, message: Any) -> bool:
        """Send one message to ``peer`` now, or drop it (counted): never waits."""
        d = self._dealers.get(peer)
        try:
            if d is not None:
                d.send(pack(message), NOBLOCK)
            else:
                # no endpoint of its own: answer over its connection to us, once it made one
                route = self._routes.get(peer)
                if route is None or self._router is None:
                    self._count("dropped.send")
                    return False
                self._router.send_multipart([route, pack(message)], NOBLOCK)
        except zmq.ZMQError:  # Again: queue full or not connected; EHOSTUNREACH: it left
            self._count("dropped.send")
            return False
        self.counters["frames.sent"] += 1
        return True

    # -- receiving ------------------------------------------------------------------------

    async def serve(self, handle: Callable[[int, Any], None],
                    request: Callable[[Any], Any] | None = None) -> None:
        """Hand every peer message to ``handle(node, message)`` until cancelled.

        Messages come on the ROUTER (the peer connected to us; the sender is the key that
        authenticated) and on the DEALERs (a peer without an endpoint of ours answering
        over our connection; the sender is the server key we connected with). Messages
        from the daemon's own key are local requests: ``request(message)`` returns the
        reply (``clusterbus connsync show``). Garbage is counted and dropped.
        """
        assert self._reader is not None, "open() first"
        readers: list[_FrameReader] = []
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._drain(self._reader,
                                           lambda f: self._one(f, handle, request)))
                for node, d in self._dealers.items():
                    r = _FrameReader(d)
                    readers.append(r)
                    tg.create_task(self._drain(r, functools.partial(
                        self._from_dealer, node, handle=handle)))
                for node, m in self._monitors.items():
                    mr = Reader(m)
                    readers.append(mr)  # type: ignore[arg-type]
                    tg.create_task(self._drain(mr, functools.partial(  # type: ignore[arg-type]
                        self._link_event, node)))
        finally:
            for r in readers:
                r.close()

    async def _drain(self, reader: _FrameReader, one: Callable[[list[Any]], None]) -> None:
        while True:
            for _ in range(self.turn_frames):
                frames = reader.poll()
                if frames is None:
                    await reader.readable()
                    break
                one(frames)
            else:
                await asyncio.sleep(0)

    def _link_event(self, node: int, frames: list[bytes]) -> None:
        """A connection event of our DEALER to ``node``."""
        try:
            event = parse_monitor_message(frames)["event"]
        except (ValueError, KeyError, IndexError, TypeError):
            return
        handshake = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0)
        if event == (handshake or zmq.EVENT_CONNECTED):
            if not self.link_up.get(node):
                self.counters["link.connected"] += 1
                log.info("connsync: link to node %d up", node)
            self.link_up[node] = True
        elif event == zmq.EVENT_DISCONNECTED:
            if self.link_up.get(node):
                self.counters["link.disconnected"] += 1
                self.limited.warning(("link_down", node), "connsync: link to node %d lost "
                                     "(closed, or silent for %.1f s); reconnecting", node,
                                     self.heartbeat[1])
            self.link_up[node] = False

    def _from_dealer(self, node: int, frames: list[Any], *,
                     handle: Callable[[int, Any], None]) -> None:
        self.counters["frames.received"] += 1

        def one() -> None:
            if len(frames) != 1:
                raise FrameError("bad_frame", f"{len(frames)} frames, expected 1")
            handle(node, unpack(frames[0].bytes))

        self._guarded(one)

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except (FrameError, RelayError) as exc:
            self._dropped(exc.code, str(exc))
        except DecodeError as exc:  # an entry the decoder refused
            self._dropped("bad_entry", str(exc))

    def _one(self, frames: list[Any], handle: Callable[[int, Any], None],
             request: Callable[[Any], Any] | None) -> None:
        self.counters["frames.received"] += 1

        def one() -> None:
            if len(frames) != 2:
                raise FrameError("bad_frame", f"{len(frames) - 1} payload frames, expected 1")
            frame = frames[1]
            try:
                user = frame.get("User-Id")
            except (zmq.ZMQError, KeyError):
                user = ""
            node = self.keys.get(user.encode("ascii", "replace") if user else b"")
            if node is None:
                raise FrameError("unknown_key", f"a frame from key {user!r}")
            message = unpack(frame.bytes)
            if node == LOCAL:
                reply = request(message) if request is not None else ["ERROR", "no requests"]
                self._reply(frames[0].bytes, reply)
                return
            if node not in self._dealers:
                self._routes[node] = frames[0].bytes
            handle(node, message)

        self._guarded(one)

    def _reply(self, ident: bytes, reply: Any) -> None:
        assert self._router is not None
        try:
            self._router.send_multipart([ident, pack(reply)], NOBLOCK)
        except zmq.ZMQError:  # the client left (ROUTER_MANDATORY) or its queue is full
            self._count("dropped.reply")

    def _dropped(self, code: str, why: str) -> None:
        self._count(f"dropped.{code}")
        self.limited.warning(("dropped", code), "connsync: dropped a frame: %s", why)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    async def run_security(self) -> None:
        """Count refused handshakes until cancelled."""
        await self.security.run()


class RelayLink:
    """A :class:`Relay` driven over a :class:`Channel` on the asyncio loop.

    :param relay: the protocol core.
    :param channel: the sockets (opened by :meth:`run`).
    :param on_effect: called with every effect that is not a ``Send`` (``Deliver``,
        ``ResyncStarted``, ``ResyncDone``), in order, on the loop.
    :param request: local requests (see :meth:`Channel.serve`).
    :param clock: monotonic seconds (the relay's ``now``).
    """

    def __init__(self, relay: Relay, channel: Channel, on_effect: Callable[[Effect], None],
                 *, request: Callable[[Any], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.channel = channel
        self.on_effect = on_effect
        self.request = request
        self.clock = clock
        self._wake: asyncio.Event | None = None
        #: when the timer task polls the relay next (None: only when kicked)
        self._until: float | None = None
        #: the timer task's wait, rescheduled in place when the relay's next deadline
        #: comes sooner (the relay's clock is the loop's: ``time.monotonic``)
        self._timeout: asyncio.Timeout | None = None
        self._loop_clock = clock is time.monotonic

    def originate(self, entries: list[Any], now: float | None = None) -> None:
        """Entries this director originated: relayed to every peer as the relay says
        (at once, or with the next acknowledgement: see the relay's ``hold``).

        :param now: the clock's time, if the caller has just read it."""
        self.relay.originate(entries)
        self._due(now)

    def _due(self, now: float | None = None) -> None:
        """After an input: send what the relay has to send now, right here, and make the
        timer task wait no longer than the relay's next deadline. (Each turn of the loop
        costs system calls and clock reads, expensive in a VM: an acknowledgement or a
        capture is handled in its own turn, not in one more for the timer task.)"""
        d = self.relay.next_deadline()
        if d == float("-inf"):
            self._apply(self.relay.poll(self.clock() if now is None else now))
            d = self.relay.next_deadline()
            if d == float("-inf"):
                self.kick()
                return
        if d is not None and (self._until is None or d < self._until):
            if self._timeout is not None and self._loop_clock:
                try:
                    self._timeout.reschedule(d)
                    self._until = d
                    return
                except RuntimeError:  # it expired meanwhile: the task is on its way
                    pass
            self.kick()

    def kick(self) -> None:
        """Make the timer task poll the relay now."""
        if self._wake is not None:
            self._wake.set()

    def _apply(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Send):
                self.channel.send(e.peer, e.message)
            else:
                self.on_effect(e)

    def _receive(self, node: int, message: Any) -> None:
        now = self.clock()
        self._apply(self.relay.receive(node, message, now))
        self._due(now)

    async def _timers(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            now = self.clock()
            self._apply(self.relay.poll(now))
            deadline = self.relay.next_deadline()
            if deadline == float("-inf"):
                self._until = now
                await asyncio.sleep(0)
                continue
            self._until = deadline
            timeout = None if deadline is None else max(0.0, deadline - now)
            try:
                async with asyncio.timeout(timeout) as cm:
                    self._timeout = cm
                    await self._wake.wait()
            except TimeoutError:
                pass
            finally:
                self._timeout = None

    async def run(self) -> None:
        """Open the channel and relay until cancelled; the sockets are closed on exit."""
        self._wake = asyncio.Event()
        self.channel.open()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.channel.serve(self._receive, self.request),
                               name="connsync-receive")
                tg.create_task(self._timers(), name="connsync-timers")
                tg.create_task(self.channel.run_security(), name="connsync-security")
        finally:
            self.channel.close()
            self._wake = None


async def request_show(endpoint: str, certificate: str, server_key: str, *,
                       timeout: float = 2.0, limit: int | None = None) -> Any:
    """Ask a daemon's conn-sync channel for its synced table (``clusterbus connsync
    show``), with the daemon's own key pair.

    :raises TimeoutError: no answer (no daemon, or the key is not the daemon's).
    :raises FrameError: an answer that is not msgpack.
    """
    public, secret = load_secret_certificate(certificate)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVERKEY, load_public_key(server_key))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.connect(endpoint)
        async with asyncio.timeout(timeout):
            await sock.send(pack([SHOW] if limit is None else [SHOW, limit]))
            data = await sock.recv()
        return unpack(data)
    finally:
        sock.close(0)
        ctx.term()


def peers_from_config(config_peers: list[Mapping[str, Any]]) -> list[ChannelPeer]:
    return [ChannelPeer(node=int(p["node"]), public_key=str(p["public_key"]),
                        endpoint=str(p.get("connsync", "") or "")) for p in config_peers]
