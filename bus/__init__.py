"""clusterbus.bus: everything ZeroMQ.

The msgpack wire codec, the publisher (with heartbeats and a declared slow-subscriber
policy), the ingest endpoint for external emitters, the snapshot/replay endpoint and the
subscriber client library that repairs sequence gaps (the ZeroMQ guide's Clone pattern).
This package never imports a concrete plugin. See docs/wire-protocol.md.
"""

from __future__ import annotations

from .client import (
    PublisherLost,
    Requester,
    RequestFailed,
    RequestTimeout,
    Snapshot,
    Subscriber,
    emit,
    fetch_snapshot,
    fetch_status,
    item_to_dict,
)
from .codec import FrameError, Heartbeat, decode, encode
from .service import BusService

__all__ = [
    "BusService",
    "FrameError",
    "Heartbeat",
    "PublisherLost",
    "RequestFailed",
    "RequestTimeout",
    "Requester",
    "Snapshot",
    "Subscriber",
    "decode",
    "emit",
    "encode",
    "fetch_snapshot",
    "fetch_status",
    "item_to_dict",
]
