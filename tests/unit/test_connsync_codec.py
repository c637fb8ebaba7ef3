"""The IPVS sync protocol codec (clusterbus.plugins.connsync.codec): the captured kernel
datagrams round-trip byte for byte, built messages round-trip, and bad bytes raise only the
typed DecodeError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectors import VECTORS

from clusterbus import errors
from clusterbus.plugins.connsync import codec
from clusterbus.plugins.connsync.codec import (
    AF_INET,
    AF_INET6,
    DecodeError,
    SeqOpt,
    SyncConn,
    SyncMessage,
    decode,
    encode,
    encode_many,
)


def _vectors() -> list[bytes]:
    lines = (VECTORS / "ipvs_sync" / "sync_v1.hex").read_text().split()
    assert len(lines) == 2
    return [bytes.fromhex(line) for line in lines]


def _conn(**kw: object) -> SyncConn:
    base: dict[str, object] = dict(af=AF_INET, protocol=6, flags=3, state=1, cport=40000, vport=80,
                                   dport=80, caddr="10.0.0.9", vaddr="10.0.0.100", daddr="10.0.1.1",
                                   timeout=900)
    base.update(kw)
    return SyncConn(**base)  # type: ignore[arg-type]


SEQ = (SeqOpt(init_seq=1, delta=2, previous_delta=3), SeqOpt(init_seq=0xFFFFFFFF, delta=0, previous_delta=7))


# -- the captured vectors -----------------------------------------------------------------------

def test_vectors_round_trip_byte_for_byte() -> None:
    for raw in _vectors():
        assert encode(decode(raw)) == raw


def test_vector_values_match_the_capture_notes() -> None:
    d0, d1 = (decode(raw) for raw in _vectors())
    assert (len(_vectors()[0]), len(_vectors()[1])) == (404, 296)
    assert (d0.version, d0.syncid, len(d0.conns)) == (1, 1, 11)
    assert (d1.version, d1.syncid, len(d1.conns)) == (1, 1, 8)
    e0, e1 = d0.conns[0], d0.conns[1]
    assert e0 == SyncConn(af=AF_INET, protocol=6, flags=0x3, state=1, cport=45762, vport=80, dport=80,
                          caddr="10.78.0.18", vaddr="10.78.0.100", daddr="127.0.0.1", timeout=900)
    assert (e1.flags, e1.cport, e1.vport, e1.dport, e1.timeout, e1.template) == (0x1183, 0, 443, 443, 60, True)
    assert not e0.template
    states = {c.state for c in d1.conns if not c.template}
    assert states == {7, 5}
    assert all(c.flags & codec.F_INACTIVE for c in d1.conns if not c.template)


@pytest.mark.parametrize("index", [0, 1])
def test_every_truncated_vector_prefix_is_a_decode_error(index: int) -> None:
    raw = _vectors()[index]
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode(raw[:cut])


@pytest.mark.parametrize("index", [0, 1])
def test_every_truncated_prefix_with_a_fixed_size_field_is_a_decode_error(index: int) -> None:
    """The size field patched to the cut length: the entry parser itself must catch it."""
    raw = _vectors()[index]
    for cut in range(8, len(raw)):
        short = bytearray(raw[:cut])
        short[2:4] = cut.to_bytes(2, "big")
        with pytest.raises(DecodeError):
            decode(bytes(short))


def test_decode_error_is_the_project_decode_error() -> None:
    assert issubclass(DecodeError, errors.DecodeError)
    with pytest.raises(errors.DecodeError) as info:
        decode(b"\x00")
    assert "\n" not in str(info.value) and info.value.offset == 0


# -- every kind of bad input, one line each ---------------------------------------------------------

def _v1(*conns: SyncConn, syncid: int = 1) -> bytearray:
    return bytearray(encode(SyncMessage(version=1, syncid=syncid, conns=conns)))


def _fix_size(buf: bytearray) -> bytes:
    buf[2:4] = len(buf).to_bytes(2, "big")
    return bytes(buf)


def _expect(data: bytes, words: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_short_and_size_mismatch() -> None:
    _expect(b"", "short message")
    _expect(b"\x00\x01\x00", "short message")
    _expect(b"\x00\x01\x00\x07\x00\x01\x00", "short message")
    raw = bytearray(_vectors()[0])
    raw[2:4] = (len(raw) + 1).to_bytes(2, "big")
    _expect(bytes(raw), "size field says")
    _expect(_vectors()[0] + b"\0", "size field says")


def test_header_version_spare_and_count() -> None:
    raw = _v1(_conn())
    raw[5] = 2
    _expect(bytes(raw), "unsupported sync protocol version 2")
    raw = _v1(_conn())
    raw[6] = 1
    _expect(bytes(raw), "spare field")
    raw = _v1(_conn())
    raw[4] = 2                       # says two entries, holds one
    _expect(bytes(raw), "entry 1 of 2: truncated")
    raw = _v1(_conn(), _conn(cport=1))
    raw[4] = 1                       # says one entry, holds two
    _expect(bytes(raw), "bytes after the last of 1 entries")


def test_trailing_garbage() -> None:
    _expect(_fix_size(_v1(_conn()) + b"\0\0\0\0"), "4 bytes after the last")
    v0 = bytearray(encode(SyncMessage(version=0, syncid=1, conns=(_conn(timeout=0),))))
    _expect(_fix_size(v0 + b"x"), "1 bytes after the last")


def test_entry_type_version_and_size() -> None:
    raw = _v1(_conn())
    raw[8] = 2                       # neither IPv4 (0) nor IPv6 (bit 0)
    _expect(bytes(raw), "unknown entry type 0x2")
    raw = _v1(_conn())
    raw[10] |= 0x10                  # entry version 1
    _expect(bytes(raw), "unknown entry version 1")
    raw = _v1(_conn())
    raw[10:12] = (35).to_bytes(2, "big")
    _expect(bytes(raw), "below the 36-byte entry")
    raw = _v1(_conn())
    raw[10:12] = (40).to_bytes(2, "big")
    _expect(bytes(raw), "runs past the datagram")
    raw = _v1(_conn(af=AF_INET6, caddr="2001:db8::9", vaddr="2001:db8::100", daddr="fe80::1"))
    raw[10:12] = (71).to_bytes(2, "big")
    _expect(bytes(raw), "below the 72-byte entry")
    raw = _v1(_conn())
    raw[8] = 1                       # an IPv4-sized entry claiming IPv6
    _expect(bytes(raw), "below the 72-byte entry")


def test_padding_must_be_zero() -> None:
    raw = _v1(_conn(pe_data=b"abc", pe_name=b"sip"), _conn())
    size = int.from_bytes(raw[10:12], "big")
    assert size % 4                  # there is padding after entry 0
    raw[8 + size] = 1
    _expect(bytes(raw), "padding is not zero")


def _with_options(opts: bytes) -> bytes:
    entry = bytearray(codec.encode_conn(_conn()))
    entry += opts
    entry[2:4] = len(entry).to_bytes(2, "big")
    return bytes(_fix_size(bytearray(struct.pack(">BBHBBH", 0, 1, 0, 1, 1, 0)) + entry))


def test_option_errors() -> None:
    seq = bytes(24)
    assert decode(_with_options(b"\x01\x18" + seq)).conns[0].in_seq == SeqOpt(
        init_seq=0, delta=0, previous_delta=0)
    _expect(_with_options(b"\x01"), "truncated option header")
    _expect(_with_options(b"\x02\x00"), "bad length 0")
    _expect(_with_options(b"\x02\x05abc"), "bad length 5")
    _expect(_with_options(b"\x01\x10" + bytes(16)), "sequence option of 16 bytes")
    _expect(_with_options(b"\x03\x11" + b"x" * 17), "PE name of 17 bytes")
    _expect(_with_options(b"\x07\x01x"), "unknown option type 0x7")
    _expect(_with_options(b"\x42\x01x"), "unknown option type 0x42")   # optional: not round-trippable
    _expect(_with_options(b"\x02\x01x\x02\x01y"), "repeated or out of order")
    _expect(_with_options(b"\x03\x01x\x02\x01y"), "repeated or out of order")


def test_v0_errors() -> None:
    good = encode(SyncMessage(version=0, syncid=3, conns=(_conn(timeout=0),)))
    assert decode(good).version == 0
    raw = bytearray(good)
    raw[4] = 1
    _expect(bytes(raw), "reserved byte is 1")
    raw = bytearray(good)
    raw[0] = 2
    _expect(bytes(raw), "entry 1 of 2: truncated")
    seq = bytearray(encode(SyncMessage(version=0, syncid=3, conns=(
        _conn(timeout=0, flags=0x600, in_seq=SEQ[0], out_seq=SEQ[1]),))))
    _expect(_fix_size(seq[:-4]), "sequence data truncated")


# -- building, v0 and v1 ---------------------------------------------------------------------------

def test_v1_layout_matches_the_kernel_structs() -> None:
    v4 = codec.encode_conn(_conn())
    v6 = codec.encode_conn(_conn(af=AF_INET6, caddr="::1", vaddr="::2", daddr="::3"))
    assert (len(v4), len(v6)) == (36, 72)                    # sizeof ip_vs_sync_v4 / _v6
    assert v6[0] == 1 and v4[0] == 0
    full = codec.encode_conn(_conn(in_seq=SEQ[0], out_seq=SEQ[1], pe_data=b"\x01\x02", pe_name=b"sip"))
    assert len(full) == 36 + 2 + 24 + 2 + 2 + 2 + 3
    assert full[36:38] == b"\x01\x18" and full[38:42] == b"\0\0\0\x01"   # seq data in network order
    assert full[62:66] == b"\x02\x02\x01\x02" and full[66:] == b"\x03\x03sip"


def test_v0_layout_and_sequence_data_in_host_order() -> None:
    raw = encode(SyncMessage(version=0, syncid=9, conns=(
        _conn(timeout=0, flags=0x400, in_seq=SEQ[0], out_seq=SEQ[1]),)))
    assert raw[:4] == bytes([1, 9]) + (4 + 24 + 24).to_bytes(2, "big")
    assert raw[4:6] == b"\x00\x06" and raw[6:8] == (40000).to_bytes(2, "big")
    assert raw[28:40] == struct.pack("=3I", 1, 2, 3)


def test_v0_refuses_what_it_cannot_carry() -> None:
    six = _conn(af=AF_INET6, caddr="::1", vaddr="::2", daddr="::3", timeout=0)
    for bad in (six, _conn(), _conn(timeout=0, fwmark=5), _conn(timeout=0, flags=0x10000),
                _conn(timeout=0, pe_data=b"x", pe_name=b"sip"), _conn(timeout=0, flags=0x200),
                _conn(timeout=0, in_seq=SEQ[0], out_seq=SEQ[1])):
        with pytest.raises(errors.LocalProtocolError):
            SyncMessage(version=0, syncid=0, conns=(bad,))
        with pytest.raises(errors.LocalProtocolError):
            codec.encode_conn(bad, version=0)


def test_conn_validation() -> None:
    for kw in (dict(af=3), dict(cport=70000), dict(protocol=-1), dict(flags=1 << 32),
               dict(caddr="10.0.0.01"), dict(caddr="::1"), dict(vaddr="x"), dict(daddr=None),
               dict(in_seq=SEQ[0]), dict(pe_data=b""), dict(pe_name=b"x" * 17), dict(timeout=True),
               dict(af=AF_INET6, caddr="2001:DB8::1", vaddr="::2", daddr="::3")):
        with pytest.raises(errors.LocalProtocolError):
            _conn(**kw)
    with pytest.raises(errors.LocalProtocolError):
        SeqOpt(init_seq=-1, delta=0, previous_delta=0)
    with pytest.raises(errors.LocalProtocolError):
        SyncMessage(version=2, syncid=0, conns=())
    with pytest.raises(errors.LocalProtocolError):
        SyncMessage(version=1, syncid=0, conns=(_conn(),) * 256)


def test_key_identity() -> None:
    a = _conn()
    assert a.key() == _conn(state=5, timeout=60, flags=0x103).key()
    assert a.key() != _conn(flags=0x1003).key()                # a template is another entry
    assert a.key() != _conn(daddr="10.0.1.2").key()
    assert hash(a.key()) == hash(_conn().key())


def test_empty_messages() -> None:
    for version in (0, 1):
        m = SyncMessage(version=version, syncid=7, conns=())
        assert decode(encode(m)) == m
    assert len(encode(SyncMessage(version=0, syncid=7, conns=()))) == 4
    assert len(encode(SyncMessage(version=1, syncid=7, conns=()))) == 8


# -- encode_many ----------------------------------------------------------------------------------

def test_encode_many_respects_maxlen_and_order() -> None:
    conns = [_conn(cport=1000 + i, pe_data=b"d" * (i % 7 + 1), pe_name=b"sip") for i in range(300)]
    grams = encode_many(conns, syncid=4, maxlen=600)
    assert len(grams) > 1
    assert all(len(g) <= 600 for g in grams)
    back = [c for g in grams for c in decode(g).conns]
    assert back == conns
    assert all(decode(g).syncid == 4 for g in grams)


def test_encode_many_caps_entries_at_255_and_sends_an_oversize_entry_alone() -> None:
    conns = [_conn(cport=i) for i in range(600)]
    grams = encode_many(conns, syncid=1, maxlen=65535)
    assert [len(decode(g).conns) for g in grams] == [255, 255, 90]
    big = _conn(in_seq=SEQ[0], out_seq=SEQ[1], pe_data=b"x" * 255, pe_name=b"sip")
    grams = encode_many([_conn(), big, _conn(cport=2)], syncid=1, maxlen=100)
    assert [len(decode(g).conns) for g in grams] == [1, 1, 1]
    assert len(grams[1]) > 100
    assert encode_many([], syncid=1) == []


def test_encode_many_v0_and_the_kernel_default_maxlen() -> None:
    conns = [_conn(timeout=0, cport=i) for i in range(100)]
    grams = encode_many(conns, syncid=1, version=0)
    assert all(len(g) <= 1472 for g in grams)
    assert len(grams) == 2 and len(decode(grams[0]).conns) == (1472 - 4) // 24
    assert [c for g in grams for c in decode(g).conns] == conns


# -- hypothesis: built -> encode -> decode == built ------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
seqs = st.builds(SeqOpt, init_seq=u32, delta=u32, previous_delta=u32)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@st.composite
def v1_conns(draw: st.DrawFn) -> SyncConn:
    six = draw(st.booleans())
    addr = v6 if six else v4
    seq = draw(st.none() | st.tuples(seqs, seqs))
    return SyncConn(af=AF_INET6 if six else AF_INET, protocol=draw(st.sampled_from([6, 17, 132, 0, 255])),
                    flags=draw(u32), state=draw(u16), cport=draw(u16), vport=draw(u16),
                    dport=draw(u16), caddr=draw(addr), vaddr=draw(addr), daddr=draw(addr),
                    fwmark=draw(u32), timeout=draw(u32),
                    in_seq=seq[0] if seq else None, out_seq=seq[1] if seq else None,
                    pe_data=draw(st.none() | st.binary(min_size=1, max_size=255)),
                    pe_name=draw(st.none() | st.binary(min_size=1, max_size=16)))


@st.composite
def v0_conns(draw: st.DrawFn) -> SyncConn:
    flags = draw(u16)
    seq = draw(st.tuples(seqs, seqs)) if flags & codec.F_SEQ_MASK else None
    return SyncConn(af=AF_INET, protocol=draw(st.integers(0, 255)), flags=flags, state=draw(u16),
                    cport=draw(u16), vport=draw(u16), dport=draw(u16), caddr=draw(v4),
                    vaddr=draw(v4), daddr=draw(v4),
                    in_seq=seq[0] if seq else None, out_seq=seq[1] if seq else None)


messages = st.one_of(
    st.builds(SyncMessage, version=st.just(1), syncid=st.integers(0, 255),
              conns=st.lists(v1_conns(), max_size=12).map(tuple)),
    st.builds(SyncMessage, version=st.just(0), syncid=st.integers(0, 255),
              conns=st.lists(v0_conns(), max_size=12).map(tuple)))


@given(messages)
@settings(max_examples=300, deadline=None)
def test_built_messages_round_trip(msg: SyncMessage) -> None:
    raw = encode(msg)
    assert decode(raw) == msg
    assert encode(decode(raw)) == raw


@given(st.lists(v1_conns(), max_size=40), st.integers(120, 3000))
@settings(max_examples=100, deadline=None)
def test_encode_many_round_trips(conns: list[SyncConn], maxlen: int) -> None:
    grams = encode_many(conns, syncid=2, maxlen=maxlen)
    assert [c for g in grams for c in decode(g).conns] == conns
    for g in grams:
        assert len(g) <= maxlen or len(decode(g).conns) == 1


# -- hypothesis fuzz: random and mutated bytes raise only DecodeError -----------------------------

def _decode_or_typed_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except DecodeError as exc:
        assert "\n" not in str(exc)
        return
    # whatever decodes is canonical: it re-encodes to the very same bytes
    assert encode(msg) == data


@given(st.binary(max_size=600))
@settings(max_examples=500, deadline=None)
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_typed_error(data)


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_fuzz_random_bytes_with_a_plausible_header(body: bytes) -> None:
    data = bytes([0, 1]) + (8 + len(body)).to_bytes(2, "big") + bytes([body[0] if body else 0, 1, 0, 0])
    _decode_or_typed_error(data + body)
    v0 = bytes([len(body) // 24 or 1, 1]) + (4 + len(body)).to_bytes(2, "big")
    _decode_or_typed_error(v0 + body)


@given(messages, st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 40), st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_messages(msg: SyncMessage, edits: list[tuple[int, int]], cut: int, fix: bool) -> None:
    raw = bytearray(encode(msg))
    for pos, byte in edits:
        if raw:
            raw[pos % len(raw)] = byte
    if cut and cut < len(raw):
        del raw[-cut:]
    if fix and len(raw) >= 4:
        raw[2:4] = len(raw).to_bytes(2, "big")
    _decode_or_typed_error(bytes(raw))


@given(st.integers(0, 1), st.integers(0, 403), st.integers(0, 255))
@settings(max_examples=300, deadline=None)
def test_fuzz_mutated_vectors(index: int, pos: int, byte: int) -> None:
    raw = bytearray(_vectors()[index])
    raw[pos % len(raw)] = byte
    _decode_or_typed_error(bytes(raw))


# -- raw entries: what the relay carries ---------------------------------------------------------

@given(messages)
@settings(max_examples=200, deadline=None)
def test_split_gives_each_entry_as_v1_bytes(msg: SyncMessage) -> None:
    syncid, raws = codec.split(encode(msg))
    assert syncid == msg.syncid
    assert raws == [codec.encode_conn(c) for c in msg.conns]
    codec.check_entries(raws)
    for raw, c in zip(raws, msg.conns):
        assert codec.decode_entry(raw) == c
        assert codec.entry_key(raw) == codec.key_bytes(c.key())
        assert codec.entry_timeout(raw) == c.timeout
        assert codec.decode_entry(codec.entry_with_timeout(raw, 7)) == c.with_timeout(7)


def test_split_of_the_vectors_and_of_plain_entries() -> None:
    for raw in _vectors():
        syncid, raws = codec.split(raw)
        assert (syncid, raws) == (1, [codec.encode_conn(c) for c in decode(raw).conns])
    plain = [_conn(cport=i) for i in range(40)]  # the fast path: 36-byte entries only
    (gram,) = encode_many(plain, syncid=9)
    assert codec.split(gram) == (9, [codec.encode_conn(c) for c in plain])
    bad = bytearray(gram)
    bad[8 + 36 * 5 + 2] = 0x10  # an entry version in the size field
    with pytest.raises(DecodeError):
        codec.split(bytes(bad))


@given(st.lists(v1_conns(), max_size=60), st.integers(120, 3000))
@settings(max_examples=100, deadline=None)
def test_assemble_packs_as_encode_many(conns: list[SyncConn], maxlen: int) -> None:
    raws = [codec.encode_conn(c) for c in conns]
    assert codec.assemble(raws, syncid=4, maxlen=maxlen) == encode_many(conns, syncid=4,
                                                                         maxlen=maxlen)


def test_assemble_plain_entries_fill_datagrams() -> None:
    raws = [codec.encode_conn(_conn(cport=i)) for i in range(100)]
    grams = codec.assemble(raws, syncid=4)
    assert [len(decode(g).conns) for g in grams] == [40, 40, 20]  # 8 + 40 * 36 <= 1472
    assert grams == encode_many([_conn(cport=i) for i in range(100)], syncid=4)


@pytest.mark.parametrize("bad", [
    [b""], [b"\x00" * 35], [b"\x00" * 37], ["text"], [None], [[1, 2]],
    [codec.encode_conn(_conn())[:-1]],
    [b"\x02" + codec.encode_conn(_conn())[1:]],                         # unknown entry type
    [codec.encode_conn(_conn())[:2] + b"\x10\x24" + codec.encode_conn(_conn())[4:]],  # version
    [codec.encode_conn(_conn(in_seq=SEQ[0], out_seq=SEQ[1]))[:-1]],   # option cut short
    [codec.encode_conn(_conn())] * 3 + [b"\x00" * 36 + b"\x00"],        # one bad in a batch
    [codec.encode_conn(_conn())[:35], codec.encode_conn(_conn()) + b"\x00"],  # lengths sum up
])
def test_check_entries_refuses_what_is_not_an_entry(bad: list[object]) -> None:
    with pytest.raises(DecodeError):
        codec.check_entries(bad)


@given(st.lists(st.binary(min_size=30, max_size=120), min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_fuzz_check_entries_accepts_only_entries(raws: list[bytes]) -> None:
    try:
        codec.check_entries(raws)
    except DecodeError as exc:
        assert "\n" not in str(exc)
        return
    for raw in raws:  # what passes is an entry, exactly as the encoder makes it
        assert codec.encode_conn(codec.decode_entry(raw)) == raw
