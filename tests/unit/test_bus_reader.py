"""``Reader.serve()``: messages handled from the ZeroMQ fd's wake-up callback (the
daemon's ingest and request sockets). The fd is edge-triggered: messages queued at one
wake-up must all be read then (or at the next turns, past the budget), or they wait for a
wake-up that never comes. The test blocks the loop (``time.sleep``) while it sends, so
every message is queued before the one wake-up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from clusterbus.bus.sockets import Reader
from clusterbus.testing.bus import run, until

SETTLE = 0.2


class Pair:
    def __init__(self, tmp: Path) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind(f"ipc://{tmp}/pull")
        self.push.connect(f"ipc://{tmp}/pull")

    def send(self, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            self.push.send_multipart([b"m", str(i).encode()])

    def close(self) -> None:
        self.ctx.destroy(0)


@pytest.fixture
def pair(tmp_path: Path) -> Any:
    p = Pair(tmp_path)
    yield p
    p.close()


def serve_and_collect(pair: Pair, n_before: int, n_burst: int, budget: int
                      ) -> tuple[list[int], list[int]]:
    async def main() -> tuple[list[int], list[int]]:
        reader = Reader(pair.pull)
        got: list[int] = []
        turns: list[int] = []
        pair.send(n_before)  # queued before serve() starts: no wake-up for them
        time.sleep(SETTLE)
        pair.pull.getsockopt(zmq.EVENTS)  # (as a reader before did: the fd is quiet now)
        task = asyncio.ensure_future(reader.serve(lambda f: got.append(int(f[1])),
                                                  budget=budget))
        try:
            await until(lambda: len(got) == n_before)
            pair.send(n_burst, n_before)
            time.sleep(SETTLE)  # all queued at the one wake-up
            while len(got) < n_before + n_burst:
                await asyncio.sleep(0)
                turns.append(len(got))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            reader.close()
        return got, turns

    return run(main(), limit=10)


def test_every_message_queued_at_one_wake_up_is_handled(pair: Pair) -> None:
    got, _ = serve_and_collect(pair, 3, 5, budget=256)
    assert got == list(range(8))


def test_past_the_budget_the_rest_comes_at_the_next_turns(pair: Pair) -> None:
    got, turns = serve_and_collect(pair, 0, 7, budget=2)
    assert got == list(range(7))
    steps = [b - a for a, b in zip([0, *turns], turns)]
    # a couple per turn (two, or four if a second wake-up came in the same turn)
    assert max(steps) <= 4 and sum(1 for s in steps if s) >= 2


def test_what_handle_raises_ends_serve(pair: Pair) -> None:
    async def main() -> None:
        reader = Reader(pair.pull)

        def handle(frames: list[bytes]) -> None:
            raise ValueError(f"bad {frames[1].decode()}")

        try:
            pair.send(1)
            with pytest.raises(ValueError, match="bad 0"):
                await reader.serve(handle)
        finally:
            reader.close()

    run(main(), limit=10)
