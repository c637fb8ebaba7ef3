"""A request cancelled by the caller's own timeout (``Subscriber.next(timeout=...)``)
must not leave its reply to be read as the answer to the next request (found by
tests/integration/test_fault_restart.py: "asked REPLAY, answered SNAPSHOT")."""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from clusterbus.bus import codec
from clusterbus.bus.client import Requester


def test_a_cancelled_request_does_not_poison_the_next_one(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/snap"

    async def main() -> dict:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint)
        req = Requester(endpoint, ctx, timeout=5.0, retries=1)
        try:
            task = asyncio.ensure_future(req.request("SNAPSHOT"))
            first = await asyncio.wait_for(router.recv_multipart(), 5)
            task.cancel()  # the caller gives up before the reply
            await asyncio.gather(task, return_exceptions=True)
            # the late reply to the abandoned request
            await router.send_multipart([first[0], *codec.encode_reply(
                "SNAPSHOT", {"epoch": 1, "origin": 1, "seq": 0, "view": 0})])
            task = asyncio.ensure_future(req.request("STATUS"))
            second = await asyncio.wait_for(router.recv_multipart(), 5)
            await router.send_multipart([second[0], *codec.encode_reply(
                "STATUS", {"epoch": 1, "status": {"ok": 1}})])
            header, _ = await asyncio.wait_for(task, 5)
            return header
        finally:
            req.close()
            router.close(0)
            ctx.term()

    assert asyncio.run(main())["status"] == {"ok": 1}
