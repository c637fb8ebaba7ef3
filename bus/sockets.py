"""ZeroMQ on the asyncio loop: the plain-int socket constants and :class:`Reader`, the one
way the bus drains a socket.

pyzmq's constants are enum members: ``&`` on them and passing them as options run enum
code in Python, several microseconds per message. Every bus module takes them from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["EVENTS", "POLLIN", "NOBLOCK", "SNDMORE", "FD", "Reader", "TURN_BUDGET"]

EVENTS, POLLIN, NOBLOCK, FD = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK), int(zmq.FD)
SNDMORE, RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)

#: Messages :meth:`Reader.serve` handles per loop turn before it lets the loop run the
#: rest (heartbeats, requests, timers): a flood costs latency elsewhere of at most this
#: many messages' work, never a stall.
TURN_BUDGET = 256


class Reader:
    """Reads a (synchronous) ZeroMQ socket from an asyncio loop.

    The socket's ZMQ_FD only signals that ``EVENTS`` may have changed (reading
    ``EVENTS`` re-arms it), so it is watched directly on the loop and :meth:`_wake` reads
    ``EVENTS`` on every wake-up, completing a wait only when a message is there: one
    future per wait, no pyzmq asyncio machinery on the per-message path. Or, with
    :meth:`drain` (what :meth:`serve` and ``Subscriber.follow`` use), the wake-up
    callback reads and handles the messages itself: no future and no task switch at all.
    The fd stays registered until :meth:`close` (registering per wait costs two
    epoll_ctl calls).

    :param sock: the socket (a ``zmq.asyncio`` socket's ``Socket.shadow`` works too).
    """

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self._waiter: asyncio.Future[None] | None = None
        self._reader: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._callback: Callable[[], object] | None = None

    def poll(self) -> list[bytes] | None:
        """The next queued message, or ``None`` when there is none (never waits)."""
        sock = self.sock
        # EVENTS first: a refused non-blocking recv costs an exception
        if int(sock.getsockopt(EVENTS)) & POLLIN:
            try:
                return sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                pass
        return None

    def take(self) -> list[bytes] | None:
        """:meth:`poll` for a drain in progress: while messages are queued, reading
        ``EVENTS`` before each one costs more than the message (libzmq processes its
        command queue for it), so this receives first and reads ``EVENTS`` (through
        :meth:`poll`, which also re-arms the fd) only once a receive found nothing.
        ``recv_multipart``'s own loop is inlined with the plain-int ``RCVMORE``."""
        sock = self.sock
        try:
            frames = [sock.recv(NOBLOCK)]
        except zmq.Again:
            return self.poll()
        get, recv = sock.get, sock.recv
        while get(RCVMORE):  # the parts of a message arrive together: never EAGAIN here
            frames.append(recv(NOBLOCK))
        return frames

    async def recv(self) -> list[bytes]:
        """The next message, waiting for one."""
        while True:
            frames = self.poll()
            if frames is not None:
                return frames
            await self.readable()

    async def readable(self) -> None:
        """Wait until a wake-up finds a message.

        Call it only after :meth:`poll` found nothing on this loop turn (that read of
        ``EVENTS`` is what re-arms the fd).
        """
        loop = self._watch()
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def watch(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback`` on every wake-up of the fd, on the running loop, instead of
        completing :meth:`readable`'s wait (``None``: back to that).

        The fd is edge-triggered: the callback must read until :meth:`poll` (or
        :meth:`take`) finds nothing, or arrange to go on later (``call_soon``). Messages
        already queued when it is set give no wake-up: read them once after setting it.
        """
        if callback is not None:
            self._watch()
        self._callback = callback

    def _watch(self) -> asyncio.AbstractEventLoop:
        """Register the fd on the running loop (once per loop)."""
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader[0] is not loop:
            self.close()
            fd = int(self.sock.getsockopt(FD))
            loop.add_reader(fd, self._wake)
            self._reader = (loop, fd)
        return loop

    def _wake(self) -> None:
        if self.sock.closed:
            return
        callback = self._callback
        if callback is not None:
            callback()  # it reads the socket (and EVENTS) itself
            return
        # Reading EVENTS also drains the socket's command queue, which is what makes the
        # fd stop being readable: without it the loop would call us again and again.
        ready = int(self.sock.getsockopt(EVENTS)) & POLLIN
        waiter = self._waiter
        if ready and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drain(self, handle: Callable[[list[bytes]], object], *,
              budget: int = TURN_BUDGET) -> asyncio.Future[None]:
        """Hand every message to ``handle`` from the fd's wake-up callback (:meth:`watch`:
        no future and no task switch per wake-up), at most ``budget`` messages per loop
        turn: after that many it goes on at the next turn, so a flood on this socket
        delays the loop's other work by one budget's worth, never starves it. Messages
        already queued are read at once.

        :returns: a future that completes once ``handle`` returns something true, or
            holds what ``handle`` raised; cancel it to stop. Either way the callback is
            removed.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            if done.done():
                return
            try:
                for _ in range(budget):
                    frames = self.take()
                    if frames is None:
                        return  # EVENTS read, nothing queued: the fd signals the next one
                    if handle(frames):
                        done.set_result(None)
                        return
                loop.call_soon(run)  # budget used up: the rest at the next turn
            except BaseException as exc:  # noqa: BLE001 - handed to the future's owner
                done.set_exception(exc)

        def unwatch(_: object) -> None:
            if self._callback is run:
                self.watch(None)

        self.watch(run)
        done.add_done_callback(unwatch)
        run()  # what was queued before the callback was set gives no wake-up
        return done

    async def serve(self, handle: Callable[[list[bytes]], object], *,
                    budget: int = TURN_BUDGET) -> None:
        """Hand every message to ``handle`` (:meth:`drain`), forever, until cancelled or
        until ``handle`` raises (then with that exception)."""
        def forever(frames: list[bytes]) -> bool:
            handle(frames)
            return False

        done = self.drain(forever, budget=budget)
        try:
            await done
        finally:
            done.cancel()

    def close(self) -> None:
        """Stop watching the fd (the socket itself belongs to the caller)."""
        self._callback = None
        if self._reader is not None:
            loop, fd = self._reader
            self._reader = None
            if not loop.is_closed():
                loop.remove_reader(fd)
