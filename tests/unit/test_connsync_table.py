"""The synced connection table (clusterbus.plugins.connsync.table): per origin, expiry from
the entries' timeouts, snapshots with the remaining timeouts; checked against a plain model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus import errors
from clusterbus.plugins.connsync.codec import AF_INET, F_TEMPLATE, SyncConn
from clusterbus.plugins.connsync.table import DEFAULT_TIMEOUT, ConnTable


def _conn(cport: int = 40000, **kw: object) -> SyncConn:
    base: dict[str, object] = dict(af=AF_INET, protocol=6, flags=3, state=1, cport=cport, vport=80,
                                   dport=80, caddr="10.0.0.9", vaddr="10.0.0.100", daddr="10.0.1.1",
                                   timeout=900)
    base.update(kw)
    return SyncConn(**base)  # type: ignore[arg-type]


def test_apply_update_and_per_origin() -> None:
    t = ConnTable()
    assert t.apply("a", _conn(), 0.0) is True
    assert t.apply("a", _conn(), 5.0) is False               # a refresh, same fields
    assert t.apply("a", _conn(state=5, timeout=120), 6.0) is True
    assert t.apply("b", _conn(), 6.0) is True                # the same connection from another origin
    assert len(t) == 2 and t.count("a") == 1 and sorted(t.origins()) == ["a", "b"]
    assert t.get("a", _conn().key()) == _conn(state=5, timeout=120)
    assert t.expiry("a", _conn().key()) == 126.0
    assert list(t.entries("b")) == [_conn()]
    assert len(list(t.entries())) == 2 and list(t.entries("zz")) == []
    tpl = _conn(cport=0, flags=F_TEMPLATE | 0x183, timeout=60)
    t.apply("a", tpl, 6.0)
    assert t.count("a") == 2                                 # template is its own entry


def test_expire_uses_each_timeout() -> None:
    t = ConnTable()
    t.apply("a", _conn(cport=1, timeout=10), 100.0)
    t.apply("a", _conn(cport=2, timeout=60), 100.0)
    t.apply("b", _conn(cport=3, timeout=10), 100.5)
    assert t.expire(109.9) == 0
    assert t.expire(110.0) == 1                              # expiry <= now
    assert t.expire(110.4) == 0
    assert t.expire(110.5) == 1
    assert [c.cport for c in t.entries()] == [2] and t.origins() == ["a"]
    assert t.expire(1e9) == 1 and len(t) == 0 and t.origins() == []


def test_a_refresh_postpones_expiry() -> None:
    t = ConnTable()
    t.apply("a", _conn(timeout=10), 0.0)
    t.apply("a", _conn(timeout=10), 8.0)
    assert t.expire(12.0) == 0 and len(t) == 1
    assert t.expire(18.0) == 1


def test_no_timeout_means_the_default() -> None:
    t = ConnTable()
    t.apply("a", _conn(timeout=0), 0.0)
    assert t.expiry("a", _conn().key()) == DEFAULT_TIMEOUT
    t2 = ConnTable(default_timeout=30)
    t2.apply("a", _conn(timeout=0), 0.0)
    assert t2.expire(29.0) == 0 and t2.expire(30.0) == 1


def test_snapshot_gives_remaining_timeouts() -> None:
    t = ConnTable()
    t.apply("a", _conn(cport=1, timeout=900), 0.0)
    t.apply("a", _conn(cport=2, timeout=60), 0.0)
    t.apply("a", _conn(cport=3, timeout=10), 0.0)
    t.apply("b", _conn(cport=4), 0.0)
    snap = {c.cport: c for c in t.snapshot("a", 9.5)}
    assert {p: c.timeout for p, c in snap.items()} == {1: 891, 2: 51, 3: 1}   # rounded up, never 0
    assert snap[1] == _conn(cport=1, timeout=891)
    assert {c.cport for c in t.snapshot("a", 10.0)} == {1, 2}                # expired: left out
    assert t.snapshot("nobody", 0.0) == []
    assert t.get("a", _conn(cport=1).key()) == _conn(cport=1, timeout=900)  # table unchanged


def test_remove_and_clear() -> None:
    t = ConnTable()
    for i in range(5):
        t.apply("a", _conn(cport=i), 0.0)
    t.apply("b", _conn(), 0.0)
    assert t.remove("a", _conn(cport=0).key()) is True
    assert t.remove("a", _conn(cport=0).key()) is False
    assert t.remove("zz", _conn().key()) is False
    assert t.clear("a") == 4 and t.clear("a") == 0
    assert len(t) == 1
    t.apply("a", _conn(cport=9, timeout=5), 0.0)             # after a clear, expiry still works
    assert t.expire(5.0) == 1 and len(t) == 1


def test_with_timeout_checks_the_timeout() -> None:
    c = _conn()
    assert c.with_timeout(5) == _conn(timeout=5)
    with pytest.raises(errors.LocalProtocolError):
        c.with_timeout(-1)
    with pytest.raises(errors.LocalProtocolError):
        c.with_timeout(1 << 32)


# -- hypothesis: the table against a plain dict model -------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("apply"), st.sampled_from(["a", "b", 3]), st.integers(0, 6),
              st.integers(0, 40), st.floats(0, 5, allow_nan=False)),
    st.tuples(st.just("expire"), st.floats(0, 8, allow_nan=False)),
    st.tuples(st.just("remove"), st.sampled_from(["a", "b", 3]), st.integers(0, 6)),
    st.tuples(st.just("clear"), st.sampled_from(["a", "b", 3])),
), max_size=60)


@given(ops)
@settings(max_examples=300, deadline=None)
def test_table_matches_a_model(steps: list[tuple]) -> None:
    table = ConnTable(default_timeout=7)
    model: dict[tuple, tuple[SyncConn, float]] = {}
    now = 0.0
    for step in steps:
        if step[0] == "apply":
            _, origin, port, timeout, dt = step
            now += dt
            conn = _conn(cport=port, timeout=timeout)
            table.apply(origin, conn, now)
            model[(origin, conn.key())] = (conn, now + (timeout or 7))
        elif step[0] == "expire":
            now += step[1]
            gone = [k for k, (_, exp) in model.items() if exp <= now]
            for k in gone:
                del model[k]
            assert table.expire(now) == len(gone)
        elif step[0] == "remove":
            _, origin, port = step
            key = _conn(cport=port).key()
            assert table.remove(origin, key) == ((origin, key) in model)
            model.pop((origin, key), None)
        else:
            n = sum(1 for o, _ in model if o == step[1])
            assert table.clear(step[1]) == n
            model = {k: v for k, v in model.items() if k[0] != step[1]}
        assert len(table) == len(model)
        for origin in ("a", "b", 3):
            want = {c.key(): max(1, math.ceil(exp - now))
                    for (o, _), (c, exp) in model.items() if o == origin and exp > now}
            got = {c.key(): c.timeout for c in table.snapshot(origin, now)}
            assert got == want


@given(ops)
@settings(max_examples=100, deadline=None)
def test_apply_many_is_apply_raw_in_order(steps: list[tuple]) -> None:
    """The batch path (inline keys, one bucket per timeout) holds what one call per entry
    holds, expiry included."""
    from clusterbus.plugins.connsync import codec
    one, many = ConnTable(default_timeout=7), ConnTable(default_timeout=7)
    now = 0.0
    batch: list[bytes] = []
    for step in steps:
        if step[0] != "apply":
            continue
        _, _origin, port, timeout, dt = step
        raw = codec.encode_conn(_conn(cport=port, timeout=timeout,
                                      flags=F_TEMPLATE if port == 3 else 3))
        one.apply_raw("a", raw, now)
        batch.append(raw)
    many.apply_many("a", batch, now)
    for t in (0.0, 5.0, 7.0, 20.0, 41.0):
        assert sorted(one.snapshot_raw("a", t)) == sorted(many.snapshot_raw("a", t))
        assert one.expire(t) == many.expire(t) and len(one) == len(many)
