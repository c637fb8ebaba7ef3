"""clusterbus.bus: everything ZeroMQ.

The msgpack wire codec, the publisher (with heartbeats and a declared slow-subscriber
policy), the ingest endpoint for external emitters, the snapshot/replay endpoint and the
subscriber client library that repairs sequence gaps (the ZeroMQ guide's Clone pattern).
This package never imports a concrete plugin. See docs/wire-protocol.md.
"""
