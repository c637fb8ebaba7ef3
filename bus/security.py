"""CURVE security for the bus: certificates, the server side (pyzmq's ZAP authenticator)
and the client side.

* ``[bus] certificate = "PATH/NAME.key_secret"`` makes the publish, snapshot and ingest
  sockets CURVE servers; ``[bus] authorized_keys = "DIR"`` is a directory of public
  ``.key`` files whose holders may connect. The daemon's own public key is always
  authorized (whoever holds its secret file is the daemon's administrator), so on one
  host ``clusterbus status`` run as root just works.
* Authentication is pyzmq's :class:`zmq.auth.asyncio.AsyncioAuthenticator` on the
  daemon's loop, with a credentials provider over the loaded keys; nothing here decides
  on a ZAP request beyond "is this key in the set".
* A refused handshake (unknown key, a client without CURVE, garbage) is seen through a
  socket monitor, counted as ``auth_denied`` and ``auth_denied.<socket>`` in the bus
  counters, and logged once per peer address (rate-limited, never a traceback).

:func:`check_bus_security` holds the start-up rules ("secure by default"): ingest on TCP,
or any socket on a non-loopback address, needs a certificate. Certificate files are
exactly those :func:`zmq.auth.create_certificates` writes (``clusterbus keygen``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from ..errors import ConfigError
from ..ratelimit import LogLimiter

__all__ = [
    "ServerKeys",
    "ClientKeys",
    "BusSecurity",
    "load_secret_certificate",
    "load_public_key",
    "load_authorized_keys",
    "load_client_keys",
    "check_bus_security",
    "is_loopback_endpoint",
    "ZAP_DOMAIN",
    "DEFAULT_INGEST",
    "KEYGEN_HINT",
]

log = logging.getLogger(__name__)

#: The ZAP domain of every bus socket.
ZAP_DOMAIN = "clusterbus"
#: The default ingest endpoint: a Unix socket in a root-only directory.
DEFAULT_INGEST = "ipc:///run/clusterbus/ingest.sock"
#: How to fix a missing certificate, in every such error.
KEYGEN_HINT = ("create keys with `clusterbus keygen --dir /etc/clusterbus --name NODE` and set "
               "[bus] certificate = \"/etc/clusterbus/NODE.key_secret\" (and authorized_keys)")

_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


# -- certificates -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ServerKeys:
    """A daemon's key pair (Z85 text as bytes) and the public keys it lets in."""

    public: bytes
    secret: bytes
    authorized: frozenset[bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientKeys:
    """A client's key pair and the daemon's public key (Z85 text as bytes)."""

    public: bytes
    secret: bytes
    server: bytes

    def sockopts(self) -> dict[int, int | bytes]:
        """ZeroMQ options that make a socket a CURVE client of the daemon."""
        return {int(zmq.CURVE_SERVERKEY): self.server, int(zmq.CURVE_PUBLICKEY): self.public,
                int(zmq.CURVE_SECRETKEY): self.secret}


def _load(path: str | Path, *, file: str | None, key: str | None) -> tuple[bytes, bytes | None]:
    where = f"{path}: " if key is not None else ""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{where}no such file", file=file or str(path), key=key) from None
    except OSError as exc:
        raise ConfigError(f"{where}cannot read: {exc.strerror or exc}", file=file or str(path),
                          key=key) from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{where}not a file", file=file or str(path), key=key)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except OSError as exc:
        raise ConfigError(f"{where}cannot read: {exc.strerror or exc}", file=file or str(path),
                          key=key) from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{where}not a ZeroMQ certificate (no public-key line)",
                          file=file or str(path), key=key) from None
    if not _is_z85_key(public) or (secret is not None and not _is_z85_key(secret)):
        raise ConfigError(f"{where}the certificate's keys are not 40-character Z85 CURVE keys",
                          file=file or str(path), key=key)
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    return len(key) == 40 and re.fullmatch(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}",
                                           key) is not None


def load_secret_certificate(path: str | Path, *, file: str | None = None,
                            key: str | None = None) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` file.

    :param file: the configuration file to name in errors (default: ``path`` itself).
    :param key: the configuration key to name in errors.
    :raises ConfigError: missing, unreadable, not a certificate, or only a public key.
    """
    public, secret = _load(path, file=file, key=key)
    if secret is None:
        where = f"{path}: " if key is not None else ""
        raise ConfigError(f"{where}not a secret certificate (it holds only a public key; "
                          "use the NAME.key_secret file)", file=file or str(path), key=key)
    return public, secret


def load_public_key(path: str | Path, *, file: str | None = None,
                    key: str | None = None) -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) file.

    :raises ConfigError: missing, unreadable or not a certificate.
    """
    return _load(path, file=file, key=key)[0]


def load_authorized_keys(directory: str | Path, *, file: str | None = None,
                         key: str | None = None) -> frozenset[bytes]:
    """The public keys of every ``*.key`` file in ``directory``.

    :raises ConfigError: not a readable directory, a bad ``.key`` file, or none at all.
    """
    d = Path(directory)
    where = f"{directory}: "
    try:
        if not stat.S_ISDIR(d.stat().st_mode):
            raise ConfigError(f"{where}not a directory", file=file, key=key)
        paths = sorted(p for p in d.iterdir() if p.suffix == ".key" and p.is_file())
    except FileNotFoundError:
        raise ConfigError(f"{where}no such directory", file=file, key=key) from None
    except OSError as exc:
        raise ConfigError(f"{where}cannot list: {exc.strerror or exc}", file=file,
                          key=key) from None
    if not paths:
        raise ConfigError(f"{where}holds no public .key file (copy the clients' NAME.key "
                          "files there)", file=file, key=key)
    return frozenset(load_public_key(p, file=file, key=key) for p in paths)


def load_client_keys(certificate: str | Path | None, server_key: str | Path | None
                     ) -> ClientKeys | None:
    """The keys a client needs, or ``None`` when neither file is given (no CURVE).

    :param certificate: the client's ``.key_secret`` file.
    :param server_key: the daemon's public ``.key`` file (its ``.key_secret`` works too).
    :raises ConfigError: only one of the two given, or a file that cannot be used.
    """
    if certificate is None and server_key is None:
        return None
    if certificate is None or server_key is None:
        raise ConfigError("a CURVE client needs both a certificate (its own .key_secret "
                          "file) and the server's public key (the daemon's .key file)")
    public, secret = load_secret_certificate(certificate)
    return ClientKeys(public=public, secret=secret, server=load_public_key(server_key))


# -- start-up rules -----------------------------------------------------------------------

_TCP = re.compile(r"^tcp://(?:[^;]*;)?(?P<host>\[[^\]]*\]|[^:]*):[^:]*$")


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and TCP on a loopback address (``127.0.0.0/8``,
    ``::1``, ``localhost``); false for wildcards, interface names and other addresses."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = _TCP.match(endpoint)
    if m is None:
        return False
    host = m.group("host").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bus_security(bus: Mapping[str, Any], file: str) -> None:
    """The ``[bus]`` security rules, checked before anything starts.

    * ``certificate`` must be a readable secret certificate; ``authorized_keys`` a
      directory with at least one public ``.key`` file, and only together with
      ``certificate``;
    * without ``certificate``: ``ingest`` must not be TCP (anyone who can connect could
      change membership), and no endpoint may be on a non-loopback address.

    :param bus: the validated ``[bus]`` table (``certificate`` and ``authorized_keys`` are
        ``""`` when unset).
    :raises ConfigError: naming ``file`` and the key, and how to fix it.
    """
    if not bus.get("enabled", True):
        return
    cert = bus.get("certificate", "")
    keys = bus.get("authorized_keys", "")
    if cert:
        load_secret_certificate(cert, file=file, key="bus.certificate")
    if keys:
        if not cert:
            raise ConfigError("authorized_keys needs [bus] certificate (CURVE is off without "
                              f"it); {KEYGEN_HINT}", file=file, key="bus.authorized_keys")
        load_authorized_keys(keys, file=file, key="bus.authorized_keys")
    if cert:
        return
    ingest = str(bus.get("ingest", ""))
    if ingest.startswith("tcp://"):
        raise ConfigError(
            f"{ingest}: ingest on TCP without [bus] certificate would let anyone who can "
            f"connect change membership; use the default {DEFAULT_INGEST}, or {KEYGEN_HINT}",
            file=file, key="bus.ingest")
    for name in ("publish", "snapshot"):
        ep = str(bus.get(name, ""))
        if not is_loopback_endpoint(ep):
            raise ConfigError(
                f"{ep}: a non-loopback address without [bus] certificate; bind to 127.0.0.1 "
                f"or {KEYGEN_HINT}", file=file, key=f"bus.{name}")


def prepare_ipc_dir(endpoint: str) -> None:
    """Create the directory of an ``ipc://`` endpoint when missing, mode 0700 (only the
    daemon's user may reach the socket). Existing directories are left as they are."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return
    parent = Path(endpoint[len("ipc://"):]).parent
    if not parent.exists():
        parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask


# -- the server side ------------------------------------------------------------------------

class _KeySet:
    """pyzmq credentials provider: a key is allowed when it is in the set."""

    def __init__(self, security: BusSecurity) -> None:
        self.security = security

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.security.keys.authorized
        if not allowed:
            self.security.refused_key(key)
        return allowed


class _Authenticator(AsyncioAuthenticator):
    """pyzmq's asyncio authenticator; it only remembers the peer address of the request
    being handled, so that a refusal can be logged with it."""

    address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # requests are handled one at a time, so the address is this request's
        self.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)


class BusSecurity:
    """The server side: keys, the authenticator and one monitor per bus socket.

    Lifecycle (inside :meth:`BusService.run`): :meth:`start` before binding,
    :meth:`server` on each socket before it binds, :meth:`run` in the service's task
    group, :meth:`stop` before the context is terminated.

    :param keys: the daemon's key pair and the authorized keys.
    :param counters: the bus counters (``auth_denied``, ``auth_denied.<socket>``).
    """

    def __init__(self, keys: ServerKeys, counters: MutableMapping[str, int]) -> None:
        self.keys = keys
        self.counters = counters
        self.counters.setdefault("auth_denied", 0)
        self.limited = LogLimiter(log, interval=3600.0)
        self._auth: _Authenticator | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._monitors: list[tuple[str, zmq.Socket[Any], zmq.asyncio.Socket]] = []

    @classmethod
    def from_config(cls, bus: Mapping[str, Any], counters: MutableMapping[str, int],
                    file: str = "") -> BusSecurity | None:
        """``None`` when ``[bus] certificate`` is unset (CURVE off).

        :raises ConfigError: a key file cannot be used (it changed since validation).
        """
        cert = bus.get("certificate", "")
        if not cert:
            return None
        public, secret = load_secret_certificate(cert, file=file, key="bus.certificate")
        authorized = {public}
        if bus.get("authorized_keys"):
            authorized |= load_authorized_keys(bus["authorized_keys"], file=file,
                                               key="bus.authorized_keys")
        return cls(ServerKeys(public=public, secret=secret, authorized=frozenset(authorized)),
                   counters)

    def start(self, context: zmq.asyncio.Context) -> None:
        """Start the authenticator (ZAP handler) in ``context`` on the running loop."""
        self._ctx = context
        shadow: zmq.Context[Any] = zmq.Context.shadow(context.underlying)
        auth = _Authenticator(shadow, log=logging.getLogger(f"{__name__}.zap"))
        auth.start()
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_KeySet(self))
        self._auth = auth
        log.info("bus: CURVE on; %d authorized key(s)", len(self.keys.authorized))

    def server(self, sock: zmq.Socket[Any], name: str) -> None:
        """Make ``sock`` (not bound yet) a CURVE server and watch its handshakes."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        assert self._ctx is not None, "start() first"
        addr = f"inproc://clusterbus.monitor.{name}.{id(self):x}"
        sock.monitor(addr, _HANDSHAKE_FAILED)
        mon = self._ctx.socket(zmq.PAIR)
        mon.setsockopt(zmq.LINGER, 0)
        # room for a flood of refused handshakes while the loop is busy (bounded)
        mon.setsockopt(zmq.RCVHWM, 100_000)
        mon.connect(addr)
        self._monitors.append((name, sock, mon))

    async def run(self) -> None:
        """Count refused handshakes until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for name, _sock, mon in self._monitors:
                tg.create_task(self._watch(name, mon), name=f"bus-monitor-{name}")

    async def _watch(self, name: str, mon: zmq.asyncio.Socket) -> None:
        while True:
            msg = await mon.recv_multipart()
            try:
                event = parse_monitor_message(msg)
            except (ValueError, IndexError, TypeError):  # never from libzmq; be safe
                continue
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # The peer closed the connection before the handshake finished: a client
                # that gave up, a TCP health check, or a client without CURVE that saw the
                # mismatch first. The daemon refused nothing.
                key = f"handshake_dropped.{name}"
                self.counters[key] = self.counters.get(key, 0) + 1
                self.limited.warning(("dropped", name),
                                     "bus.%s: a connection closed during the CURVE handshake "
                                     "(a client that does not speak CURVE with this daemon's "
                                     "key, one that gave up waiting, or a TCP health check; "
                                     "counted as handshake_dropped.%s)", name, name)
                continue
            self.counters["auth_denied"] = self.counters.get("auth_denied", 0) + 1
            key = f"auth_denied.{name}"
            self.counters[key] = self.counters.get(key, 0) + 1
            if kind != zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                # no ZAP request, so no address: a client without CURVE (or not ZeroMQ)
                self.limited.warning(("protocol", name),
                                     "bus.%s refused a connection that does not speak CURVE "
                                     "with this daemon's key (handshake error 0x%x)",
                                     name, int(event["value"]))

    def refused_key(self, key: bytes) -> None:
        """Called by the credentials provider for a key not in the authorized set."""
        address = self._auth.address if self._auth is not None else ""
        self.limited.warning(("key", address), "refused CURVE client key %s from %s (not in "
                             "[bus] authorized_keys)", key.decode("ascii", "replace"),
                             address or "a local socket")

    def stop(self) -> None:
        """Stop monitoring and authenticating (the sockets may still be open)."""
        for _name, sock, mon in self._monitors:
            if not sock.closed:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
            mon.close(0)
        self._monitors.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        return {"curve": True, "authorized_keys": len(self.keys.authorized),
                "public_key": self.keys.public.decode("ascii")}
