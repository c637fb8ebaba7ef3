"""The synced connection table, per origin director. Sans-IO: the caller passes the time.

The kernel has no dump of its connection table fit for a resync (``/proc/net/ip_vs_conn``
lacks flags, fwmark and sequence data, and reading it is quadratic), so conn-sync keeps
what it captured (origin = this director) and what it received (origin = the peer that
sent it) here, and a full resync sends :meth:`ConnTable.snapshot_raw`.

Entries are held as the relay carries them, the bytes of one version 1 sync entry
(``codec.encode_conn``), keyed by ``codec.entry_key``: nothing is decoded on the way from
capture to relay, or from receipt to injection; :meth:`ConnTable.entries`,
:meth:`~ConnTable.snapshot` and :meth:`~ConnTable.get` decode on demand.

Memory: one dict entry per connection holding the entry's bytes and its expiry; expiry
uses a timing wheel of one-second buckets per origin that holds references to the keys
already in the dict (8 bytes a slot): about 0.3 KB a connection. The entries of an origin
are spread over :data:`SHARDS` dicts by key hash, so that a dict's resize (CPython
compacts a dict whose deleted slots ran out, as churn does) copies a 64th of the table:
no pause of milliseconds at 100,000 entries, and no allocation of megabytes at once
(which a fragmented heap serves from fresh pages; in UML a page's first touch costs
0.1-0.2 ms).
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Hashable, Iterator

from . import codec
from .codec import SyncConn

__all__ = ["ConnTable", "DEFAULT_TIMEOUT"]

#: Lifetime of an entry that carries no timeout (a version 0 entry): the kernel's TCP
#: ESTABLISHED default (``tcp_timeouts`` in ip_vs_proto_tcp.c), its longest default.
DEFAULT_TIMEOUT = 900.0

#: a key as :meth:`SyncConn.key` gives it, or as ``codec.entry_key`` (bytes)
Key = tuple[int, int, str, int, str, int, str, int, int, bool] | bytes
_entry_key = codec.entry_key
_timeout_of = codec.entry_timeout
_floor = math.floor
_U32_FROM = struct.Struct(">I").unpack_from
#: flags byte 2 (bits 15..8) -> the key's template byte (IP_VS_CONN_F_TEMPLATE is 0x1000)
_TEMPLATE_BYTE = tuple(b"\x01" if b & 0x10 else b"\x00" for b in range(256))


#: dicts per origin (a power of two: a key's dict is ``hash(key) & (SHARDS - 1)``)
SHARDS = 64
_MASK = SHARDS - 1


class _Shards:
    """A dict from key bytes to (entry, expiry), spread over SHARDS dicts by hash; the
    hot paths (:meth:`ConnTable.apply_many`, expiry) index :attr:`dicts` themselves."""

    __slots__ = ("dicts",)

    def __init__(self) -> None:
        self.dicts: list[dict[bytes, tuple[bytes, float]]] = [{} for _ in range(SHARDS)]

    def get(self, key: bytes) -> tuple[bytes, float] | None:
        return self.dicts[hash(key) & _MASK].get(key)

    def pop(self, key: bytes, default: None = None) -> tuple[bytes, float] | None:
        return self.dicts[hash(key) & _MASK].pop(key, default)

    def __setitem__(self, key: bytes, value: tuple[bytes, float]) -> None:
        self.dicts[hash(key) & _MASK][key] = value

    def __len__(self) -> int:
        return sum(map(len, self.dicts))

    def __bool__(self) -> bool:
        return any(self.dicts)

    def values(self) -> Iterator[tuple[bytes, float]]:
        for d in self.dicts:
            yield from d.values()


def _raw_key(key: Key) -> bytes:
    return key if isinstance(key, bytes) else codec.key_bytes(key)


class _Origin:
    """The entries of one origin, and their expiry wheel."""

    __slots__ = ("entries", "buckets", "times")

    def __init__(self) -> None:
        self.entries = _Shards()                  # key -> (entry, expiry)
        self.buckets: dict[int, list[bytes]] = {}   # whole second -> keys that may expire in it
        self.times: list[int] = []                # heap of the seconds in ``buckets``

    def schedule(self, key: bytes, expires: float) -> None:
        second = math.floor(expires)
        bucket = self.buckets.get(second)
        if bucket is None:
            self.buckets[second] = bucket = []
            heapq.heappush(self.times, second)
        bucket.append(key)

    def expire(self, now: float) -> int:
        removed = 0
        carry: list[tuple[bytes, float]] = []
        times, buckets, dicts = self.times, self.buckets, self.entries.dicts
        while times and times[0] <= now:
            second = heapq.heappop(times)
            for key in buckets.pop(second):
                d = dicts[hash(key) & _MASK]
                item = d.get(key)
                if item is None:
                    continue
                expires = item[1]
                if expires <= now:
                    del d[key]
                    removed += 1
                elif math.floor(expires) == second:
                    carry.append((key, expires))  # later in this same second: look again
                # else: updated since; a later bucket holds it
        for key, expires in carry:
            self.schedule(key, expires)
        return removed


class ConnTable:
    """Connections keyed by :meth:`SyncConn.key`, one table per origin director.

    :param default_timeout: seconds an entry without a timeout (``timeout == 0``) lives.
    """

    def __init__(self, *, default_timeout: float = DEFAULT_TIMEOUT) -> None:
        self._origins: dict[Hashable, _Origin] = {}
        self._default = default_timeout

    def _origin(self, origin: Hashable) -> _Origin:
        o = self._origins.get(origin)
        if o is None:
            self._origins[origin] = o = _Origin()
        return o

    def apply(self, origin: Hashable, conn: SyncConn, now: float) -> bool:
        """Insert or update ``conn`` for ``origin``; it expires at ``now + conn.timeout``.

        :returns: True when the entry is new or differs from the one held (the timeout
            counts: a refresh with the same fields is False).
        """
        return self.apply_raw(origin, codec.encode_conn(conn), now)

    def apply_raw(self, origin: Hashable, raw: bytes, now: float) -> bool:
        """:meth:`apply` for an entry's bytes (``codec.encode_conn``, checked before)."""
        o = self._origin(origin)
        key = _entry_key(raw)
        expires = now + (_timeout_of(raw) or self._default)
        old = o.entries.get(key)
        o.entries[key] = (raw, expires)
        if old is None or _floor(old[1]) != _floor(expires):
            o.schedule(key, expires)
        return old is None or old[0] != raw

    def apply_many(self, origin: Hashable, raws: list[bytes], now: float) -> None:
        """:meth:`apply_raw` for many entries (the hot path: one call per batch; the key
        and the expiry bucket are worked out inline, the bucket once per timeout)."""
        o = self._origin(origin)
        dicts, default, buckets = o.entries.dicts, self._default, o.buckets
        unpack = _U32_FROM
        tpl = _TEMPLATE_BYTE
        by_timeout: dict[int, tuple[float, int, list[bytes]]] = {}
        for raw in raws:
            key = raw[:2] + raw[10:20] + raw[24:36 if raw[0] == 0 else 72] + tpl[raw[6]]
            timeout = unpack(raw, 20)[0]
            slot = by_timeout.get(timeout)
            if slot is None:
                expires = now + (timeout or default)
                second = _floor(expires)
                bucket = buckets.get(second)
                if bucket is None:
                    buckets[second] = bucket = []
                    heapq.heappush(o.times, second)
                slot = by_timeout[timeout] = (expires, second, bucket)
            d = dicts[hash(key) & _MASK]
            old = d.get(key)
            d[key] = (raw, slot[0])
            if old is None or _floor(old[1]) != slot[1]:
                slot[2].append(key)

    def get(self, origin: Hashable, key: Key) -> SyncConn | None:
        """The entry ``origin`` holds under ``key``, or None."""
        o = self._origins.get(origin)
        item = o.entries.get(_raw_key(key)) if o is not None else None
        return codec.decode_entry(item[0]) if item is not None else None

    def remove(self, origin: Hashable, key: Key) -> bool:
        """Forget one entry. :returns: whether it was there."""
        o = self._origins.get(origin)
        return o is not None and o.entries.pop(_raw_key(key), None) is not None

    def clear(self, origin: Hashable) -> int:
        """Forget everything ``origin`` sent (before its full resync). :returns: how many."""
        o = self._origins.pop(origin, None)
        return len(o.entries) if o is not None else 0

    def expire(self, now: float) -> int:
        """Drop the entries whose expiry is ``<= now``. :returns: how many were dropped."""
        removed = 0
        for origin, o in list(self._origins.items()):
            removed += o.expire(now)
            if not o.entries and not o.times:
                del self._origins[origin]
        return removed

    def entries(self, origin: Hashable | None = None) -> Iterator[SyncConn]:
        """The entries of ``origin``, or of every origin when None (expired ones included
        until :meth:`expire` runs)."""
        if origin is not None:
            o = self._origins.get(origin)
            origins = [o] if o is not None else []
        else:
            origins = list(self._origins.values())
        for o in origins:
            for raw, _ in list(o.entries.values()):
                yield codec.decode_entry(raw)

    def origins(self) -> list[Hashable]:
        """The origins that hold entries."""
        return [k for k, o in self._origins.items() if o.entries]

    def count(self, origin: Hashable) -> int:
        """How many entries ``origin`` holds."""
        o = self._origins.get(origin)
        return len(o.entries) if o is not None else 0

    def snapshot(self, origin: Hashable, now: float) -> list[SyncConn]:
        """``origin``'s live entries for a full resync, each with its *remaining* timeout
        (whole seconds rounded up, at least 1: a timeout of 0 would make the receiving
        kernel use its default)."""
        return [codec.decode_entry(raw) for raw in self.snapshot_raw(origin, now)]

    def snapshot_raw(self, origin: Hashable, now: float) -> list[bytes]:
        """:meth:`snapshot` as entry bytes (what the relay sends)."""
        o = self._origins.get(origin)
        if o is None:
            return []
        out = []
        with_timeout = codec.entry_with_timeout
        for raw, expires in o.entries.values():
            left = expires - now
            if left <= 0:
                continue
            remaining = min(max(1, math.ceil(left)), 0xFFFFFFFF)
            out.append(raw if _timeout_of(raw) == remaining else with_timeout(raw, remaining))
        return out

    def expiry(self, origin: Hashable, key: Key) -> float | None:
        """When the entry expires (the clock ``apply`` was given), or None."""
        o = self._origins.get(origin)
        item = o.entries.get(_raw_key(key)) if o is not None else None
        return item[1] if item is not None else None

    def __len__(self) -> int:
        return sum(len(o.entries) for o in self._origins.values())
