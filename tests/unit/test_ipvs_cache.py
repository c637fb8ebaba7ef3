"""The applier's cache of the kernel table follows acknowledged operations (no kernel)."""

from __future__ import annotations

from clusterbus.plugins.ipvs.table import (
    AF_INET,
    Dest,
    Entry,
    Op,
    OpKind,
    Service,
    ServiceKey,
    Table,
    apply_ops,
    copy_table,
    diff,
)


def _table(weights: dict[int, tuple[int, ...]]) -> Table:
    out: Table = {}
    for port, ws in weights.items():
        key = ServiceKey(AF_INET, 6, "10.78.0.100", port)
        entry = Entry(Service(key=key, scheduler="rr"))
        for i, w in enumerate(ws):
            d = Dest(af=AF_INET, addr=f"10.78.0.{11 + i}", port=80, weight=w)
            entry.dests[d.ident] = d
        out[key] = entry
    return out


def test_following_a_plan_reaches_the_desired_table() -> None:
    have = _table({80: (1, 1), 81: (1,), 82: (2, 2, 2)})
    want = _table({80: (1, 0), 82: (2, 5), 83: (1, 1)})
    want[ServiceKey(AF_INET, 6, "10.78.0.100", 82)].service = Service(
        key=ServiceKey(AF_INET, 6, "10.78.0.100", 82), scheduler="wlc")
    cache = copy_table(have)
    assert apply_ops(cache, diff(have, want).ops) == set()
    assert cache == want
    assert diff(cache, want).ops == []


def test_the_cache_never_aliases_the_desired_table() -> None:
    want = _table({80: (1,)})
    cache: Table = {}
    apply_ops(cache, diff(cache, want).ops)
    key = next(iter(want))
    assert cache == want and cache[key] is not want[key]
    want[key].dests.clear()  # the next desired table is rebuilt; the cache must not move
    assert len(cache[key].dests) == 1


def test_a_dest_op_on_an_unknown_service_is_reported_lost() -> None:
    svc = Service(key=ServiceKey(AF_INET, 6, "10.78.0.100", 80), scheduler="rr")
    d = Dest(af=AF_INET, addr="10.78.0.11", port=80)
    cache: Table = {}
    assert apply_ops(cache, [Op(OpKind.SET_DEST, svc, d)]) == {svc.key}
    assert cache == {}


def test_copy_table_is_independent() -> None:
    t = _table({80: (1, 1)})
    c = copy_table(t)
    next(iter(c.values())).dests.clear()
    assert len(next(iter(t.values())).dests) == 2
