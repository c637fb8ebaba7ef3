"""The Linux IPVS sync protocol (versions 0 and 1), as bytes in and values out. Sans-IO.

The layouts are those of ``net/netfilter/ipvs/ip_vs_sync.c`` (``struct ip_vs_sync_mesg``,
``ip_vs_sync_mesg_v0``, ``ip_vs_sync_v4``, ``ip_vs_sync_v6``, ``ip_vs_sync_conn_v0``,
``ip_vs_sync_conn_options``) and ``include/uapi/linux/ip_vs.h`` (``IP_VS_CONN_F_*``,
``IP_VS_PENAME_MAXLEN``). Big-endian, except the version 0 sequence option, which the
kernel copies from ``struct ip_vs_conn`` as it sits in memory (host order; this codec
uses this machine's order, as the local kernel does).

:func:`decode` accepts exactly what :func:`encode` produces, so every accepted datagram
re-encodes to the same bytes. Everything else raises :class:`DecodeError` with one line
saying what was wrong and where, including things the kernel receiver tolerates but would
not round-trip (padding that is not zero, bytes after the last entry, options out of the
kernel's order, an optional option of an unknown type).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from clusterbus import errors

__all__ = [
    "AF_INET", "AF_INET6", "F_TEMPLATE", "F_INACTIVE", "F_SEQ_MASK", "F_FWD_MASK",
    "PENAME_MAXLEN", "DecodeError", "SeqOpt", "SyncConn", "SyncMessage",
    "decode", "encode", "encode_many", "encode_conn",
    "split", "check_entries", "entry_key", "key_bytes", "entry_timeout", "entry_with_timeout",
    "decode_entry", "assemble",
]

#: Linux address families (the values of ``socket.AF_INET``/``AF_INET6`` on Linux).
AF_INET = 2
AF_INET6 = 10

# include/uapi/linux/ip_vs.h
F_FWD_MASK = 0x0007
F_INACTIVE = 0x0100
F_SEQ_MASK = 0x0600     #: IP_VS_CONN_F_OUT_SEQ | IP_VS_CONN_F_IN_SEQ
F_TEMPLATE = 0x1000
PENAME_MAXLEN = 16      #: IP_VS_PENAME_MAXLEN; the PE data length is a u8 on the wire

# ip_vs_sync.c
SYNC_PROTO_VER = 1
STYPE_F_INET6 = 0x01
SVER_SHIFT, SVER_MASK = 12, 0x0FFF
OPT_SEQ_DATA, OPT_PE_DATA, OPT_PE_NAME = 1, 2, 3

_HDR1 = struct.Struct(">BBHBBH")        # reserved, syncid, size, nr_conns, version, spare
_HDR0 = struct.Struct(">BBH")           # nr_conns, syncid, size
_ENT1 = struct.Struct(">BBHIHHHHII")    # type, protocol, ver_size, flags, state, ports, fwmark, timeout
_ENT0 = struct.Struct(">BBHHH4s4s4sHH")  # reserved, protocol, ports, addrs, flags, state
_SEQ1 = struct.Struct(">6I")            # in_seq, out_seq (struct ip_vs_seq, network order)
_SEQ0 = struct.Struct("=6I")            # the same, copied raw from the kernel's memory
_SIZE = struct.Struct(">H")
_BASE4 = _ENT1.size + 12                # 36: sizeof(struct ip_vs_sync_v4)
_BASE6 = _ENT1.size + 48                # 72: sizeof(struct ip_vs_sync_v6)
_ZEROS = bytes(4)
_U32 = 0xFFFFFFFF


class DecodeError(errors.DecodeError):
    """A datagram that is not a well-formed IPVS sync message (version 0 or 1)."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise errors.LocalProtocolError(what)


@dataclass(frozen=True, slots=True, kw_only=True)
class SeqOpt:
    """``struct ip_vs_seq``: TCP sequence adjustment of a NAT connection (u32 each)."""

    init_seq: int
    delta: int
    previous_delta: int

    def __post_init__(self) -> None:
        for name in ("init_seq", "delta", "previous_delta"):
            v = getattr(self, name)
            _check(type(v) is int and 0 <= v <= _U32, f"SeqOpt.{name} must be a u32, not {v!r}")


_FAMILIES = (AF_INET, AF_INET6)
# Canonical address text -> its family, and -> its packed bytes: a table of 100,000
# connections holds few distinct addresses, and parsing each one again costs microseconds.
_CANONICAL: dict[str, int] = {}
_PACKED: dict[str, bytes] = {}
_TEXT: dict[bytes, str] = {}
_CACHE_MAX = 1 << 16


def _remember_canonical(name: str, text: object, af: int) -> None:
    cls = ipaddress.IPv4Address if af == AF_INET else ipaddress.IPv6Address
    try:
        addr = cls(text) if isinstance(text, str) else None
    except ValueError:
        addr = None
    _check(addr is not None and str(addr) == text,
           f"SyncConn.{name} is not a canonical {cls.__name__}: {text!r}")
    if len(_CANONICAL) >= _CACHE_MAX:
        _CANONICAL.clear()
    _CANONICAL[str(addr)] = af


def _packed(text: str) -> bytes:
    raw = _PACKED.get(text)
    if raw is None:
        raw = ipaddress.ip_address(text).packed
        if len(_PACKED) >= _CACHE_MAX:
            _PACKED.clear()
        _PACKED[text] = raw
    return raw


def _text(raw: bytes) -> str:
    """Canonical text of a packed address (4 or 16 bytes), one shared string per address."""
    text = _TEXT.get(raw)
    if text is None:
        if len(raw) == 4:
            text = f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
        else:
            text = str(ipaddress.IPv6Address(raw))
        if len(_TEXT) >= _CACHE_MAX:
            _TEXT.clear()
        _TEXT[raw] = text
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncConn:
    """One connection (or persistence template) as the sync protocol carries it.

    Addresses are canonical text (``str(ipaddress.ip_address(...))``); ``timeout`` is in
    seconds (version 0 carries none: 0, and the receiver uses its protocol default).
    ``in_seq`` and ``out_seq`` are both set or both None (one option carries both).
    """

    af: int
    protocol: int
    flags: int
    state: int
    cport: int
    vport: int
    dport: int
    caddr: str
    vaddr: str
    daddr: str
    fwmark: int = 0
    timeout: int = 0
    in_seq: SeqOpt | None = None
    out_seq: SeqOpt | None = None
    pe_name: bytes | None = None
    pe_data: bytes | None = None

    def __post_init__(self) -> None:
        # one fast test for the common case; the slow path says what is wrong
        if not (self.af in _FAMILIES and type(self.protocol) is int and 0 <= self.protocol <= 0xFF
                and type(self.flags) is int and 0 <= self.flags <= _U32
                and type(self.fwmark) is int and 0 <= self.fwmark <= _U32
                and type(self.timeout) is int and 0 <= self.timeout <= _U32
                and type(self.state) is int and 0 <= self.state <= 0xFFFF
                and type(self.cport) is int and 0 <= self.cport <= 0xFFFF
                and type(self.vport) is int and 0 <= self.vport <= 0xFFFF
                and type(self.dport) is int and 0 <= self.dport <= 0xFFFF):
            self._explain_numbers()
        af = self.af
        for name, text in (("caddr", self.caddr), ("vaddr", self.vaddr), ("daddr", self.daddr)):
            if _CANONICAL.get(text) != af:
                _remember_canonical(name, text, af)
        _check((self.in_seq is None) == (self.out_seq is None),
               "SyncConn.in_seq and out_seq go together (one option carries both)")
        if self.pe_data is not None:
            _check(isinstance(self.pe_data, bytes) and 1 <= len(self.pe_data) <= 255,
                   "SyncConn.pe_data must be 1..255 bytes")
        if self.pe_name is not None:
            _check(isinstance(self.pe_name, bytes) and 1 <= len(self.pe_name) <= PENAME_MAXLEN,
                   f"SyncConn.pe_name must be 1..{PENAME_MAXLEN} bytes")

    def _explain_numbers(self) -> None:
        _check(self.af in _FAMILIES, f"af must be AF_INET or AF_INET6, not {self.af!r}")
        for name, top in (("protocol", 0xFF), ("flags", _U32), ("state", 0xFFFF),
                          ("cport", 0xFFFF), ("vport", 0xFFFF), ("dport", 0xFFFF),
                          ("fwmark", _U32), ("timeout", _U32)):
            v = getattr(self, name)
            _check(type(v) is int and 0 <= v <= top, f"SyncConn.{name} out of range: {v!r}")

    @property
    def template(self) -> bool:
        """True for a persistence template (``IP_VS_CONN_F_TEMPLATE``)."""
        return bool(self.flags & F_TEMPLATE)

    def key(self) -> tuple[int, int, str, int, str, int, str, int, int, bool]:
        """The identity of the connection: a newer entry with this key replaces an older one."""
        return (self.af, self.protocol, self.caddr, self.cport, self.vaddr, self.vport,
                self.daddr, self.dport, self.fwmark, bool(self.flags & F_TEMPLATE))

    def with_timeout(self, timeout: int) -> SyncConn:
        """A copy with another ``timeout`` (seconds); the other fields are not checked again."""
        _check(type(timeout) is int and 0 <= timeout <= _U32, f"timeout not a u32: {timeout!r}")
        new = object.__new__(SyncConn)
        for name in _CONN_FIELDS:
            _set(new, name, getattr(self, name))
        _set(new, "timeout", timeout)
        return new

    def v0_problem(self) -> str | None:
        """Why this entry cannot be sent in a version 0 message (None when it can)."""
        if self.af != AF_INET:
            return "version 0 carries IPv4 only"
        if self.flags > 0xFFFF:
            return "version 0 flags are 16 bits"
        if self.fwmark or self.timeout or self.pe_data is not None or self.pe_name is not None:
            return "version 0 carries no fwmark, timeout or persistence-engine data"
        if bool(self.flags & F_SEQ_MASK) != (self.in_seq is not None):
            return "version 0 carries sequence data exactly when flags has IN_SEQ or OUT_SEQ"
        return None


_CONN_FIELDS = tuple(f.name for f in fields(SyncConn))
_set = object.__setattr__
# the slots' own setters: they skip the frozen dataclass's __setattr__ (a third faster)
_SETTERS = tuple(SyncConn.__dict__[name].__set__ for name in _CONN_FIELDS)


def _trusted(*values: object) -> SyncConn:
    """A SyncConn from fields the decoder has already checked (no second validation: it
    would cost more than the decoding). The order is that of the dataclass fields."""
    conn = object.__new__(SyncConn)
    for setter, value in zip(_SETTERS, values):
        setter(conn, value)
    return conn


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncMessage:
    """One datagram: a header and up to 255 entries."""

    version: int
    syncid: int
    conns: tuple[SyncConn, ...]

    def __post_init__(self) -> None:
        _check(self.version in (0, 1), f"version must be 0 or 1, not {self.version!r}")
        _check(type(self.syncid) is int and 0 <= self.syncid <= 0xFF, f"syncid not a u8: {self.syncid!r}")
        _check(isinstance(self.conns, tuple) and len(self.conns) <= 0xFF, "conns: a tuple of at most 255")
        if self.version == 0:
            for c in self.conns:
                problem = c.v0_problem()
                _check(problem is None, f"entry {c.key()}: {problem}")


# -- encoding ---------------------------------------------------------------------------------


def encode_conn(conn: SyncConn, *, version: int = 1) -> bytes:
    """One entry of a ``version`` message, without the padding that may follow it."""
    if version == 0:
        problem = conn.v0_problem()
        if problem is not None:
            raise errors.LocalProtocolError(problem)
        out = _ENT0.pack(0, conn.protocol, conn.cport, conn.vport, conn.dport,
                         _packed(conn.caddr), _packed(conn.vaddr), _packed(conn.daddr),
                         conn.flags, conn.state)
        if conn.in_seq is not None and conn.out_seq is not None:
            out += _seq(_SEQ0, conn.in_seq, conn.out_seq)
        return out
    addrs = _packed(conn.caddr) + _packed(conn.vaddr) + _packed(conn.daddr)
    opts = b""
    if conn.in_seq is not None and conn.out_seq is not None:
        opts += bytes((OPT_SEQ_DATA, _SEQ1.size)) + _seq(_SEQ1, conn.in_seq, conn.out_seq)
    if conn.pe_data is not None:
        opts += bytes((OPT_PE_DATA, len(conn.pe_data))) + conn.pe_data
    if conn.pe_name is not None:
        opts += bytes((OPT_PE_NAME, len(conn.pe_name))) + conn.pe_name
    size = _ENT1.size + len(addrs) + len(opts)
    kind = STYPE_F_INET6 if conn.af == AF_INET6 else 0
    return _ENT1.pack(kind, conn.protocol, size, conn.flags, conn.state, conn.cport,
                      conn.vport, conn.dport, conn.fwmark, conn.timeout) + addrs + opts


def _seq(s: struct.Struct, a: SeqOpt, b: SeqOpt) -> bytes:
    return s.pack(a.init_seq, a.delta, a.previous_delta, b.init_seq, b.delta, b.previous_delta)


def _assemble(entries: list[bytes], *, version: int, syncid: int) -> bytes:
    if version == 0:
        body = b"".join(entries)
        size = _HDR0.size + len(body)
        if size > 0xFFFF:
            raise errors.LocalProtocolError(f"message of {size} bytes exceeds the u16 size field")
        return _HDR0.pack(len(entries), syncid, size) + body
    # ip_vs_sync_conn(): each entry starts 32-bit aligned; no padding after the last one
    parts = []
    for i, e in enumerate(entries):
        parts.append(e)
        if i + 1 < len(entries):
            parts.append(_ZEROS[: -len(e) % 4])
    body = b"".join(parts)
    size = _HDR1.size + len(body)
    if size > 0xFFFF:
        raise errors.LocalProtocolError(f"message of {size} bytes exceeds the u16 size field")
    return _HDR1.pack(0, syncid, size, len(entries), SYNC_PROTO_VER, 0) + body


def encode(msg: SyncMessage) -> bytes:
    """The datagram for ``msg``; :func:`decode` gives ``msg`` back."""
    return _assemble([encode_conn(c, version=msg.version) for c in msg.conns],
                     version=msg.version, syncid=msg.syncid)


def encode_many(conns: Iterable[SyncConn], *, syncid: int, maxlen: int = 1472,
                version: int = 1) -> list[bytes]:
    """Pack ``conns`` in order into datagrams of at most ``maxlen`` bytes and 255 entries.

    As the kernel does (``ip_vs_sync_buff_create``), an entry too big for ``maxlen`` on its
    own still goes out, alone in its datagram.
    """
    _check(version in (0, 1), f"version must be 0 or 1, not {version!r}")
    _check(0 <= syncid <= 0xFF, f"syncid not a u8: {syncid!r}")
    header = _HDR0.size if version == 0 else _HDR1.size
    out: list[bytes] = []
    batch: list[bytes] = []
    used = header
    for conn in conns:
        e = encode_conn(conn, version=version)
        pad = (-used % 4) if (batch and version == 1) else 0
        if batch and (used + pad + len(e) > maxlen or len(batch) == 0xFF):
            out.append(_assemble(batch, version=version, syncid=syncid))
            batch, used, pad = [], header, 0
        batch.append(e)
        used += pad + len(e)
    if batch:
        out.append(_assemble(batch, version=version, syncid=syncid))
    return out


# -- decoding ---------------------------------------------------------------------------------


def decode(data: bytes) -> SyncMessage:
    """Parse one datagram (version 0 or 1).

    :raises DecodeError: anything :func:`encode` would not produce byte for byte.
    """
    data = bytes(data)
    n = len(data)
    if n < _HDR0.size:
        raise DecodeError(f"short message: {n} bytes, the header needs {_HDR0.size}", offset=0)
    (size,) = _SIZE.unpack_from(data, 2)
    if size != n:
        raise DecodeError(f"size field says {size} bytes, the datagram has {n}", offset=2)
    # ip_vs_process_message(): version 1 iff reserved == 0, version == 1 and spare == 0;
    # anything else is a version 0 message (whose first byte, nr_conns, is then not 0).
    if data[0] == 0 and n > _HDR0.size:
        if n < _HDR1.size:
            raise DecodeError(f"short message: {n} bytes, the version 1 header needs 8", offset=0)
        _, syncid, _, count, version, spare = _HDR1.unpack_from(data)
        if version != SYNC_PROTO_VER:
            raise DecodeError(f"unsupported sync protocol version {version}", offset=5)
        if spare:
            raise DecodeError(f"spare field is {spare:#x}, not 0", offset=6)
        return SyncMessage(version=1, syncid=syncid, conns=_decode_v1(data, count))
    count, syncid, _ = _HDR0.unpack_from(data)
    return SyncMessage(version=0, syncid=syncid, conns=_decode_v0(data, count))


def _decode_v0(data: bytes, count: int) -> tuple[SyncConn, ...]:
    off, n = _HDR0.size, len(data)
    conns = []
    for i in range(count):
        if off + _ENT0.size > n:
            raise DecodeError(f"entry {i} of {count}: truncated (v0 entries are 24 bytes)", offset=off)
        (reserved, proto, cport, vport, dport, ca, va, da, flags, state) = _ENT0.unpack_from(data, off)
        if reserved:
            raise DecodeError(f"entry {i}: reserved byte is {reserved}, not 0", offset=off)
        off += _ENT0.size
        in_seq = out_seq = None
        if flags & F_SEQ_MASK:
            if off + _SEQ0.size > n:
                raise DecodeError(f"entry {i}: sequence data truncated", offset=off)
            in_seq, out_seq = _seq_opts(_SEQ0, data, off)
            off += _SEQ0.size
        conns.append(_trusted(AF_INET, proto, flags, state, cport, vport, dport, _text(ca),
                              _text(va), _text(da), 0, 0, in_seq, out_seq, None, None))
    if off != n:
        raise DecodeError(f"{n - off} bytes after the last of {count} entries", offset=off)
    return tuple(conns)


def _seq_opts(s: struct.Struct, data: bytes, off: int) -> tuple[SeqOpt, SeqOpt]:
    a, b, c, d, e, f = s.unpack_from(data, off)
    return SeqOpt(init_seq=a, delta=b, previous_delta=c), SeqOpt(init_seq=d, delta=e, previous_delta=f)


def _decode_v1(data: bytes, count: int) -> tuple[SyncConn, ...]:
    off, n = _HDR1.size, len(data)
    conns = []
    for i in range(count):
        if off + _BASE4 > n:
            raise DecodeError(f"entry {i} of {count}: truncated", offset=off)
        kind, proto, ver_size, flags, state, cport, vport, dport, fwmark, timeout = \
            _ENT1.unpack_from(data, off)
        if ver_size >> SVER_SHIFT:
            raise DecodeError(f"entry {i}: unknown entry version {ver_size >> SVER_SHIFT}", offset=off + 2)
        size = ver_size & SVER_MASK
        if kind == 0:
            af, base = AF_INET, _BASE4
        elif kind == STYPE_F_INET6:
            af, base = AF_INET6, _BASE6
        else:
            raise DecodeError(f"entry {i}: unknown entry type {kind:#x}", offset=off)
        if size < base:
            raise DecodeError(f"entry {i}: size {size} is below the {base}-byte entry", offset=off + 2)
        end = off + size
        if end > n:
            raise DecodeError(f"entry {i}: size {size} runs past the datagram", offset=off + 2)
        a = off + _ENT1.size
        w = 4 if af == AF_INET else 16
        caddr, vaddr, daddr = (_text(data[a:a + w]), _text(data[a + w:a + 2 * w]),
                               _text(data[a + 2 * w:a + 3 * w]))
        in_seq = out_seq = None
        pe_data = pe_name = None
        p, last = off + base, 0
        while p < end:
            if p + 2 > end:
                raise DecodeError(f"entry {i}: truncated option header", offset=p)
            ptype, plen = data[p], data[p + 1]
            if plen == 0 or p + 2 + plen > end:
                raise DecodeError(f"entry {i}: option {ptype} has bad length {plen}", offset=p + 1)
            if ptype not in (OPT_SEQ_DATA, OPT_PE_DATA, OPT_PE_NAME):
                raise DecodeError(f"entry {i}: unknown option type {ptype:#x}", offset=p)
            if ptype <= last:
                raise DecodeError(f"entry {i}: option {ptype} repeated or out of order", offset=p)
            last = ptype
            if ptype == OPT_SEQ_DATA:
                if plen != _SEQ1.size:
                    raise DecodeError(f"entry {i}: sequence option of {plen} bytes, not 24", offset=p + 1)
                in_seq, out_seq = _seq_opts(_SEQ1, data, p + 2)
            elif ptype == OPT_PE_DATA:
                pe_data = data[p + 2:p + 2 + plen]
            else:
                if plen > PENAME_MAXLEN:
                    raise DecodeError(f"entry {i}: PE name of {plen} bytes (max {PENAME_MAXLEN})",
                                      offset=p + 1)
                pe_name = data[p + 2:p + 2 + plen]
            p += 2 + plen
        conns.append(_trusted(af, proto, flags, state, cport, vport, dport, caddr, vaddr, daddr,
                              fwmark, timeout, in_seq, out_seq, pe_name, pe_data))
        off = end
        if i + 1 < count:
            pad = -size % 4
            if end + pad > n:
                raise DecodeError(f"entry {i}: padding runs past the datagram", offset=end)
            if data[end:end + pad] != _ZEROS[:pad]:
                raise DecodeError(f"entry {i}: padding is not zero", offset=end)
            off = end + pad
    if off != n:
        raise DecodeError(f"{n - off} bytes after the last of {count} entries", offset=off)
    return tuple(conns)


# -- raw entries: what the relay carries ------------------------------------------------------
#
# The relay moves entries as the bytes of one version 1 entry each (``struct ip_vs_sync_v4``
# or ``_v6`` with its options, no padding): split from a captured datagram, checked on
# receipt, joined into datagrams for the backup daemon, with no Python object per field.
# The common entries (no options) are checked by a regular expression, in C; the others
# through :func:`decode`, so both accept exactly what :func:`encode_conn` produces.

_PLAIN4 = rb"\x00[\x00-\xff]\x00\x24[\x00-\xff]{32}"    # IPv4, no option: 36 bytes
_PLAIN6 = rb"\x01[\x00-\xff]\x00\x48[\x00-\xff]{68}"    # IPv6, no option: 72 bytes
_PLAIN_RE = re.compile(_PLAIN4 + rb"|" + _PLAIN6)
_MANY4_RE = re.compile(rb"(?:" + _PLAIN4 + rb")*")
_U32BE = struct.Struct(">I")
_KEYPORTS = struct.Struct(">HHHI")
#: the version 1 datagram header of one entry of ``n`` bytes (syncid 0)
_ONE_HDR: dict[int, bytes] = {}


def split(data: bytes) -> tuple[int, list[bytes]]:
    """A datagram's sync id and its entries as version 1 entry bytes (a version 0
    datagram's entries are converted).

    :raises DecodeError: what :func:`decode` refuses.
    """
    n = len(data)
    if n >= _HDR1.size and data[0] == 0 and data[5] == SYNC_PROTO_VER and not data[6] \
            and not data[7] and (data[2] << 8 | data[3]) == n \
            and n - _HDR1.size == 36 * data[4] and _MANY4_RE.fullmatch(data, _HDR1.size):
        data = bytes(data)
        return data[1], [data[i:i + 36] for i in range(_HDR1.size, n, 36)]
    msg = decode(data)
    return msg.syncid, [encode_conn(c) for c in msg.conns]


def _one_entry(raw: bytes) -> SyncMessage:
    hdr = _ONE_HDR.get(len(raw))
    if hdr is None:
        if len(raw) > 0xFFFF - _HDR1.size:
            raise DecodeError(f"an entry of {len(raw)} bytes", offset=0)
        hdr = _HDR1.pack(0, 0, _HDR1.size + len(raw), 1, SYNC_PROTO_VER, 0)
        if len(raw) < 512:  # the sizes a real entry can have
            _ONE_HDR[len(raw)] = hdr
    return decode(hdr + raw)


def check_entries(raws: Sequence[Any]) -> None:
    """Check entries received from a peer: each must be the bytes of one version 1 entry,
    as :func:`encode_conn` makes them.

    :raises DecodeError: naming the first bad one.
    """
    if raws and set(map(type, raws)) == {bytes} and set(map(len, raws)) == {36} \
            and _MANY4_RE.fullmatch(b"".join(raws)):
        return
    for i, raw in enumerate(raws):
        if type(raw) is not bytes:
            raise DecodeError(f"entry {i}: not the bytes of a sync entry")
        if _PLAIN_RE.fullmatch(raw):
            continue
        try:
            _one_entry(raw)
        except DecodeError as exc:
            raise DecodeError(f"entry {i}: {exc}") from None


def entry_key(raw: bytes) -> bytes:
    """The identity of an entry (as :meth:`SyncConn.key`), as bytes: family, protocol,
    ports, fwmark, addresses, template flag."""
    return raw[:2] + raw[10:20] + raw[24:36 if raw[0] == 0 else 72] + (
        b"\x01" if raw[6] & 0x10 else b"\x00")


def key_bytes(key: tuple[int, int, str, int, str, int, str, int, int, bool]) -> bytes:
    """:meth:`SyncConn.key` as :func:`entry_key` gives it."""
    af, protocol, caddr, cport, vaddr, vport, daddr, dport, fwmark, template = key
    return (bytes((STYPE_F_INET6 if af == AF_INET6 else 0, protocol))
            + _KEYPORTS.pack(cport, vport, dport, fwmark)
            + _packed(caddr) + _packed(vaddr) + _packed(daddr) + (b"\x01" if template else b"\x00"))


def entry_timeout(raw: bytes) -> int:
    """An entry's timeout (seconds; 0: the receiver's default)."""
    return int(_U32BE.unpack_from(raw, 20)[0])


def entry_with_timeout(raw: bytes, timeout: int) -> bytes:
    """The entry with another timeout (a u32)."""
    return raw[:20] + _U32BE.pack(timeout) + raw[24:]


def decode_entry(raw: bytes) -> SyncConn:
    """One entry's bytes as a :class:`SyncConn`.

    :raises DecodeError: not one version 1 entry.
    """
    return _one_entry(raw).conns[0]


def assemble(raws: Sequence[bytes], *, syncid: int, maxlen: int = 1472) -> list[bytes]:
    """Entries (bytes) in order into version 1 datagrams of at most ``maxlen`` bytes and 255
    entries, as :func:`encode_many` packs them (the same bytes for the same entries)."""
    _check(0 <= syncid <= 0xFF, f"syncid not a u8: {syncid!r}")
    out: list[bytes] = []
    if not raws:
        return out
    if set(map(len, raws)) == {36}:  # the common case: no padding anywhere
        per = max(1, min(0xFF, (maxlen - _HDR1.size) // 36))
        for i in range(0, len(raws), per):
            part = raws[i:i + per]
            out.append(_HDR1.pack(0, syncid, _HDR1.size + 36 * len(part), len(part),
                                  SYNC_PROTO_VER, 0) + b"".join(part))
        return out
    batch: list[bytes] = []
    used = _HDR1.size
    for e in raws:
        pad = -used % 4 if batch else 0
        if batch and (used + pad + len(e) > maxlen or len(batch) == 0xFF):
            out.append(_assemble(batch, version=1, syncid=syncid))
            batch, used, pad = [], _HDR1.size, 0
        batch.append(e)
        used += pad + len(e)
    if batch:
        out.append(_assemble(batch, version=1, syncid=syncid))
    return out
