"""The VRRP speaker's own process: ``python -m clusterbus.vrrp.worker FD PARENT_PID``,
started by the daemon (:class:`clusterbus.vrrp.process.SpeakerProcess`), never by hand.

``FD`` is its end of a ``socketpair`` to the daemon (:mod:`clusterbus.vrrp.ipc`). In
order, before anything else: die with the daemon (``PR_SET_PDEATHSIG`` SIGKILL: a daemon
killed is a speaker killed, VIPs left in place, as a crash of one process was before);
ignore SIGTERM, SIGINT and SIGHUP (the daemon stops and reloads it over the link, so a
``systemctl stop`` that signals the whole cgroup does not stop it twice); unblock the
signals the daemon blocked; take a session and a scheduling class of its own
(:func:`clusterbus.vrrp.timing.tune_process`, before the imports, so that a busy host does
not slow its start either). Then it reads ``["init", ...]``, sends its log records to the
daemon and runs :meth:`VrrpSpeaker.serve <clusterbus.vrrp.speaker.VrrpSpeaker.serve>` on
a loop of its own until the daemon says stop. Exit code 0 after a stop, 1 after a failure
(reported first as ``["failed", error]``) or when the daemon closed the link unasked
(it died: the speaker exits at once, VIPs left in place, as ``PR_SET_PDEATHSIG`` would
make it a moment later).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
import time
import traceback
from typing import Any

from ..errors import ClusterbusError
from .ipc import Channel, encode_error
from .timing import RT_START_PRIORITY, die_with_parent, tune_process

__all__ = ["main"]

log = logging.getLogger(__name__)

#: seconds to wait for the daemon's ``init``, and to hand over the last messages at exit
_INIT_TIMEOUT = 30.0
_FLUSH_TIMEOUT = 5.0


class _ToDaemon(logging.Handler):
    """Log records go to the daemon, which logs them with its own handlers."""

    def __init__(self, link: Channel) -> None:
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = None
            if record.exc_info:
                exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.link.send(["log", record.name, record.levelno, record.getMessage(),
                            exc_text, record.created])
        except Exception:
            self.handleError(record)


def _read_init(link: Channel) -> tuple[dict[str, Any], list[list[Any]]]:
    """The daemon's ``init``, and the messages that came in the same read (the daemon
    sends the priorities a policy set before the process existed right after ``init``):
    the speaker handles those first."""
    end = time.monotonic() + _INIT_TIMEOUT
    while True:
        msgs, closed = link.receive_blocking(end - time.monotonic())
        if msgs:
            kind = msgs[0]
            if kind[0] != "init" or len(kind) != 2 or not isinstance(kind[1], dict):
                raise SystemExit(f"clusterbus.vrrp.worker: expected init, got {kind[0]!r}")
            return kind[1], msgs[1:]
        if closed or time.monotonic() > end:
            raise SystemExit("clusterbus.vrrp.worker: no init from the daemon")


def main(argv: list[str] | None = None) -> int:
    """Run the speaker's process. :returns: the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() for a in args):
        print("usage: python -m clusterbus.vrrp.worker FD PARENT_PID (started by the "
              "clusterbus daemon)", file=sys.stderr)
        return 2
    fd, parent = int(args[0]), int(args[1])
    if not die_with_parent(parent, signal.SIGKILL):
        return 1  # the daemon is already gone
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    # first: the imports and the set-up below then run ahead of a busy host too
    scheduling, refused = tune_process(RT_START_PRIORITY)  # raised once the routers run
    link = Channel(socket.socket(fileno=fd))
    init, early = _read_init(link)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_ToDaemon(link))
    root.setLevel(int(init.get("log_level", logging.INFO)))

    # imported after the link is up: an import failure still reaches the daemon's log
    from .process import config_from_wire
    from .speaker import VrrpSpeaker

    if refused:
        log.info("VRRP speaker process: %s; running %s", refused, scheduling)
    code = 0
    try:
        speaker = VrrpSpeaker.in_process(config_from_wire(init.get("config")), link,
                                         ask=bool(init.get("ask")), scheduling=scheduling)
        gc.collect()
        gc.freeze()  # the start-up heap is never scanned again (see clusterbus.daemon)
        asyncio.run(speaker.serve(early))
        link.send(["stopped"])
    except Exception as exc:
        if not isinstance(exc, (OSError, ClusterbusError)):  # a bug: its traceback
            log.exception("VRRP speaker process failed")
        link.send(["failed", encode_error(exc)])
        code = 1
    link.flush(_FLUSH_TIMEOUT)
    link.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
