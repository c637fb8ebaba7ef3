"""The SIGCLUSTER-style signal source: membership changes delivered as queued signals.

OpenSSI told interested processes about membership changes with a signal (SIGCLUSTER).
Here a sender queues a real-time signal to the daemon with ``sigqueue(3)`` and a 32-bit
payload; the daemon reads it from a ``signalfd(2)``, an fd on the asyncio loop, so nothing
polls and the payload and the sender's uid come from the kernel (``signalfd_siginfo``).

Payload (``si_value.sival_int``, 32 bits, host order):

    bits 31..28  command: a clusterbus.events.NodeState code (1 UP, 2 DOWN, 3 COMING_UP,
                 4 GOING_DOWN)
    bits 27..0   node number (1 .. 268435455; 0 is dropped as invalid)

Only senders whose uid is in ``[sigcluster] allowed_uids`` are believed (root by default);
a plain ``kill`` (no payload, ``si_code`` is not SI_QUEUE) and unknown commands are dropped
and counted. Real-time signals queue (up to RLIMIT_SIGPENDING), so back-to-back changes
are not merged the way classic signals are.

A real-time signal's default action terminates the process, so ``clusterbus run`` sets the
default signal (SIGRTMIN+2) and the configured one to SIG_IGN before anything else
(:func:`ignore`), whether ``[sigcluster]`` is on or off: with it off the kernel discards
them on arrival (nothing queues, nothing dies); with it on the source also blocks the
signal, and a blocked signal is queued for the signalfd even though its disposition is
SIG_IGN (a thread that somehow missed the block then ignores it instead of dying).
Children the daemon starts inherit SIG_IGN for that signal.

A sender learns whether anyone will read its signal from :func:`disposition` (the target's
``/proc/PID/status`` masks): ``clusterbus emit --via signal`` refuses to send when the
daemon ignores the signal or would die of it.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import struct
from typing import Any

from ..config import Config, parse_signal
from ..engine import Engine
from ..errors import ConfigError, DecodeError
from ..view import NodeReport, NodeState

__all__ = ["SigclusterSource", "DEFAULT_SIGNAL", "encode_payload", "decode_payload",
           "parse_signal", "sigqueue", "ignore", "disposition", "signal_name"]

log = logging.getLogger(__name__)

SI_QUEUE = -1
_SIGINFO = struct.Struct("=IiiIIiIIIIii")  # the leading fields of struct signalfd_siginfo
_SIGINFO_SIZE = 128
_COMMANDS = {int(s): s for s in NodeState}  # the payload's command is the state's code
NODE_MASK = (1 << 28) - 1
#: ``[sigcluster] signal`` unless configured otherwise (the default in clusterbus.config).
DEFAULT_SIGNAL = "SIGRTMIN+2"

_libc = ctypes.CDLL(None, use_errno=True)


def encode_payload(state: NodeState, node: int) -> int:
    """The 32-bit ``sival_int`` for a state and node (as an unsigned value)."""
    if not 1 <= node <= NODE_MASK:
        raise ValueError(f"node {node} is not a node number of 28 bits (1 .. {NODE_MASK})")
    return (int(state) << 28) | node


def decode_payload(value: int) -> tuple[NodeState, int]:
    """Inverse of :func:`encode_payload`. :raises DecodeError: unknown command."""
    value &= 0xFFFFFFFF
    cmd = value >> 28
    if cmd not in _COMMANDS:
        raise DecodeError(f"unknown command {cmd} in signal payload {value:#010x}")
    if not value & NODE_MASK:
        raise DecodeError(f"node 0 in signal payload {value:#010x}")
    return _COMMANDS[cmd], value & NODE_MASK


def sigqueue(pid: int, signo: int, value: int) -> None:
    """Queue ``signo`` with ``sival_int = value`` to ``pid`` (sigqueue(3)).

    :raises OSError: the kernel refused (ESRCH, EPERM, EAGAIN).
    """
    # union sigval is passed by value; its int member is the low half on the ABIs we run on
    if _libc.sigqueue(ctypes.c_int(pid), ctypes.c_int(signo),
                      ctypes.c_void_p(value & 0xFFFFFFFF)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sigqueue({pid}, {signo}): {os.strerror(err)}")


def signal_name(signo: int) -> str:
    """``SIGRTMIN+2`` for a real-time signal, ``SIGUSR1`` for a classic one."""
    if signal.SIGRTMIN <= signo <= signal.SIGRTMAX:
        return f"SIGRTMIN+{signo - signal.SIGRTMIN}"
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def ignore(signo: int) -> None:
    """Set ``signo``'s disposition to SIG_IGN (process-wide; main thread only).

    A blocked signal still queues (the kernel never treats a blocked signal as ignored), so
    this does not stop a :class:`SigclusterSource` from reading it.
    """
    signal.signal(signo, signal.SIG_IGN)


def disposition(pid: int, signo: int) -> str:
    """How process ``pid`` treats ``signo``, from the masks in ``/proc/PID/status``.

    :returns: ``"blocked"`` (held for a signalfd or sigwait: someone reads it),
        ``"caught"`` (a handler runs), ``"ignored"`` (discarded on arrival) or
        ``"default"`` (the default action: terminate, for a real-time signal).
    :raises OSError: no such process (ENOENT), or /proc is not readable.
    """
    masks: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("SigBlk", "SigIgn", "SigCgt"):
                masks[key] = int(value.strip(), 16)
    bit = 1 << (signo - 1)
    for key, name in (("SigBlk", "blocked"), ("SigCgt", "caught"), ("SigIgn", "ignored")):
        if masks.get(key, 0) & bit:
            return name
    return "default"


def _signalfd(signo: int) -> int:
    sigset = (ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong))))()
    _libc.sigemptyset(ctypes.byref(sigset))
    _libc.sigaddset(ctypes.byref(sigset), signo)
    fd = _libc.signalfd(-1, ctypes.byref(sigset), os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"signalfd: {os.strerror(err)}")
    return int(fd)


class SigclusterSource:
    """Reads queued membership signals from a signalfd and reports them to the engine.

    The signal is blocked in the constructor, which the daemon runs before any thread
    exists (ZeroMQ's I/O threads inherit the mask): an unblocked real-time signal would
    otherwise kill the process by default.

    ``counters``: ``signals``, ``reported``, ``changes`` and the drops
    ``unauthorised_sender``, ``no_payload``, ``malformed``.
    """

    def __init__(self, engine: Engine, config: Config) -> None:
        section: dict[str, Any] = config["sigcluster"]
        self.engine = engine
        try:
            self.signo = parse_signal(section["signal"])
        except ValueError as exc:
            raise ConfigError(str(exc), file=config.file, key="sigcluster.signal") from None
        self.allowed_uids = frozenset(section["allowed_uids"])
        self.counters: dict[str, int] = dict.fromkeys(
            ("signals", "reported", "changes", "unauthorised_sender", "no_payload",
             "malformed"), 0)
        signal.pthread_sigmask(signal.SIG_BLOCK, {self.signo})
        self.fd = _signalfd(self.signo)

    def status(self) -> dict[str, Any]:
        """Signal number and name, pid to signal and counters."""
        return {"signal": self.signo, "signal_name": signal_name(self.signo),
                "pid": os.getpid(), "counters": dict(self.counters)}

    async def run(self) -> None:
        """Read the signalfd until cancelled."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self._readable)
        try:
            await asyncio.Future()
        finally:
            loop.remove_reader(self.fd)
            os.close(self.fd)

    def _readable(self) -> None:
        for _ in range(256):
            try:
                raw = os.read(self.fd, _SIGINFO_SIZE * 16)
            except BlockingIOError:
                return
            for off in range(0, len(raw) - _SIGINFO_SIZE + 1, _SIGINFO_SIZE):
                self._handle(raw[off:off + _SIGINFO_SIZE])

    def _handle(self, info: bytes) -> None:
        (signo, _errno, code, pid, uid, _fd, _tid, _band, _ovr, _trap, _status,
         value) = _SIGINFO.unpack_from(info)
        self.counters["signals"] += 1
        if uid not in self.allowed_uids:
            self.counters["unauthorised_sender"] += 1
            log.warning("sigcluster: signal from pid %d uid %d dropped: uid not allowed",
                        pid, uid)
            return
        if code != SI_QUEUE:
            self.counters["no_payload"] += 1
            log.warning("sigcluster: signal %d from pid %d has no payload (use sigqueue, "
                        "not kill); dropped", signo, pid)
            return
        try:
            state, node = decode_payload(value)
        except DecodeError as exc:
            self.counters["malformed"] += 1
            log.warning("sigcluster: from pid %d: %s; dropped", pid, exc)
            return
        self.counters["reported"] += 1
        if self.engine.report(NodeReport(state=state, node=node, reason="sigcluster")):
            self.counters["changes"] += 1
