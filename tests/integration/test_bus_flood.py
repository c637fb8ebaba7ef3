"""A flood of ingest reports does not stop the bus service's loop: heartbeats keep being
sent and STATUS keeps being answered while the flood is being worked through (issue 8:
a 200k-report flood once stopped heartbeats for 16.8 s). A real BusService in a child
process, real sockets; the checks use seq numbers and counters, never timings."""

from __future__ import annotations

import zmq
from busproc import BusProcess

from clusterbus.bus import codec

REPORTS = 50_000
NODES = 1000


def test_heartbeats_and_status_keep_flowing_during_an_ingest_flood() -> None:
    with BusProcess(heartbeat_interval=0.05) as svc:
        ctx = zmq.Context()
        try:
            hb = ctx.socket(zmq.SUB)
            hb.setsockopt(zmq.SUBSCRIBE, codec.HEARTBEAT_TOPIC)
            hb.connect(svc.endpoints["publish"])
            push = ctx.socket(zmq.PUSH)
            push.connect(svc.endpoints["ingest"])
            req = ctx.socket(zmq.DEALER)
            req.connect(svc.endpoints["snapshot"])
            while not hb.poll(20_000):  # connected: heartbeats arrive
                raise AssertionError("no heartbeat from the service")
            first = codec.decode_heartbeat(hb.recv_multipart())
            assert first.seq == 0
            # Every report is a real change: node i goes up, then down on the next round.
            for i in range(REPORTS):
                topic = "node.up" if (i // NODES) % 2 == 0 else "node.down"
                push.send_multipart(codec.encode_ingest(topic, i % NODES + 1))
                if i % 5000 == 4999:
                    req.send_multipart(codec.encode_request("STATUS"))
            requests = REPORTS // 5000
            received = []
            for _ in range(requests):
                assert req.poll(20_000), "no STATUS reply"
                _, header, _ = codec.decode_reply(req.recv_multipart())
                received.append(header["status"]["bus"]["counters"]["ingest.received"])
            # wait for the end of the flood: its last event announced by a heartbeat
            heartbeats = [first]
            while heartbeats[-1].seq < REPORTS:
                assert hb.poll(20_000), "heartbeats stopped"
                heartbeats.append(codec.decode_heartbeat(hb.recv_multipart()))
            assert received == sorted(received)
            # STATUS was answered while reports were still queued ...
            assert any(0 < n < REPORTS for n in received), received
            # ... and heartbeats were sent while the flood was being worked through: each
            # carries the last seq sent, strictly between the flood's first and last event.
            during = {h.seq for h in heartbeats if 1 < h.seq < REPORTS}
            assert len(during) >= 3, sorted(h.seq for h in heartbeats)
        finally:
            ctx.destroy(linger=0)
