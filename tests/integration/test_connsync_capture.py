"""conn-sync's Capture, Injector and commit check on the host kernel (no IPVS needed).

A namespace with a ``sync0`` interface; a user-space sender stands in for the kernel's master
daemon (UDP to 224.0.0.81:8848, multicast loop off), a socket joined to the group stands in
for the backup daemon. The real kernel daemons are exercised in tests/kernel (UML).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from netns import Topology, is_root

from clusterbus.errors import ConfigError
from clusterbus.plugins.connsync import kernel

CLONE_NEWNET = 0x40000000
ADDR = "10.91.0.1"
GROUP6 = "ff02::8848"

_libc = ctypes.CDLL(None, use_errno=True)


# -- pure helpers (no root) ----------------------------------------------------------


def _ipv4_udp(payload: bytes, *, dst: str = kernel.SYNC_GROUP4, dport: int = 8848,
              frag: int = 0, proto: int = 17) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, frag, 1, proto, 0,
                     socket.inet_aton(ADDR), socket.inet_aton(dst))
    return ip + udp


GROUP = socket.inet_aton(kernel.SYNC_GROUP4)


def test_udp_payload_keeps_only_sync_datagrams() -> None:
    assert kernel.udp_payload(_ipv4_udp(b"abc"), group=GROUP, port=8848) == b"abc"
    for bad in (_ipv4_udp(b"abc", dport=8849), _ipv4_udp(b"abc", dst="224.0.0.82"),
                _ipv4_udp(b"abc", frag=0x2000), _ipv4_udp(b"abc", frag=5),
                _ipv4_udp(b"abc", proto=6), b"", b"\x45", _ipv4_udp(b"abc")[:27],
                b"\x60" + bytes(60)):
        assert kernel.udp_payload(bad, group=GROUP, port=8848) is None
    # a UDP length beyond the packet is refused, a shorter one trims the payload
    pkt = bytearray(_ipv4_udp(b"abcdef"))
    struct.pack_into("!H", pkt, 24, 8 + 20)
    assert kernel.udp_payload(bytes(pkt), group=GROUP, port=8848) is None
    struct.pack_into("!H", pkt, 24, 8 + 2)
    assert kernel.udp_payload(bytes(pkt), group=GROUP, port=8848) == b"ab"


def test_proc_udp_parsing() -> None:
    text = [
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops",
        "  1: 510000E0:2290 00000000:0000 07 00000000:00000300 00:00000000 00000000     0  "
        "      0 0 2 0000000000000000 4",
        "  2: 0100007F:2291 00000000:0000 07 00000000:00000010 00:00000000 00000000     0  "
        "      0 0 2 0000000000000000 1",
        "  3: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0  "
        "      0 0 2 0000000000000000 9",
        "garbage",
    ]
    assert kernel._proc_udp(text, range(8848, 8849)) == (1, 0x300, 4)
    assert kernel._proc_udp(text, range(8848, 8850)) == (2, 0x310, 5)


@pytest.mark.parametrize("maxlen,threshold,key", [
    (0, (2, 50), "kernel_maxlen"), (70000, (2, 50), "kernel_maxlen"),
    (1, (1, 1), "sync_threshold"), (1, (50, 50), "sync_threshold"),
    (1, (-1, 50), "sync_threshold"),
])
def test_knobs_the_kernel_would_refuse(maxlen: int, threshold: tuple[int, int],
                                       key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        kernel.set_sync_knobs(kernel_maxlen=maxlen, sync_threshold=threshold)


def test_bpf_programs_assemble() -> None:
    for group in (kernel.SYNC_GROUP4, GROUP6):
        prog = kernel.sync_filter(group, 8848)
        assert len(prog) % 8 == 0
        n = len(prog) // 8
        for i in range(n):  # every jump lands inside the program
            code, jt, jf, _k = struct.unpack_from("=HBBI", prog, 8 * i)
            if code & 0x07 == 0x05:  # BPF_JMP
                assert i + 1 + max(jt, jf) < n


# -- real sockets in a namespace (root) ----------------------------------------------

needs_root = pytest.mark.skipif(not is_root(), reason="needs root (network namespaces)")


@contextmanager
def inside(ns: str) -> Iterator[None]:
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        assert _libc.setns(target, CLONE_NEWNET) == 0
        yield
    finally:
        assert _libc.setns(orig, CLONE_NEWNET) == 0
        os.close(target)
        os.close(orig)


@pytest.fixture
def ns() -> Iterator[str]:
    with Topology() as t:
        name = t.netns("cs")
        # a veth pair (the host may have no dummy module); its far end just swallows
        t.exec(name, ["ip", "link", "add", "sync0", "type", "veth", "peer", "name", "sink0"])
        t.exec(name, ["ip", "link", "set", "sink0", "up"])
        t.exec(name, ["ip", "link", "set", "sync0", "up"])
        t.exec(name, ["ip", "addr", "add", f"{ADDR}/24", "dev", "sync0"])
        t.exec(name, ["ip", "addr", "add", "fe80::91/64", "dev", "sync0", "nodad"])
        t.exec(name, ["ip", "link", "add", "bare0", "type", "veth", "peer", "name", "bare1"])
        yield name


def _master_socket() -> socket.socket:
    """Like the kernel's master: multicast out of sync0, loop off, TTL 1."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ADDR))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return s


def _backup_socket() -> socket.socket:
    """Like the kernel's backup: bound to the group and port, joined on sync0."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((kernel.SYNC_GROUP4, kernel.SYNC_PORT))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton(kernel.SYNC_GROUP4) + socket.inet_aton(ADDR))
    s.setblocking(False)
    return s


def _drain(cap: kernel.Capture, want: int, tries: int = 200) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(tries):
        got += cap.read()
        if len(got) >= want:
            break
        asyncio.run(asyncio.sleep(0.005))
    return got


@needs_root
@pytest.mark.parametrize("ring", [True, False], ids=["ring", "recvfrom"])
def test_capture_sees_outgoing_sync_only_and_never_injected(ns: str, ring: bool) -> None:
    with inside(ns), kernel.Capture("sync0", ring=ring) as cap, \
            kernel.Injector("sync0") as inj, _master_socket() as master, \
            _backup_socket() as backup:
        assert cap.mode == ("ring" if ring else "recvfrom")
        assert cap.read() == []
        master.sendto(b"M1" * 20, (kernel.SYNC_GROUP4, kernel.SYNC_PORT))
        master.sendto(b"other-port", (kernel.SYNC_GROUP4, kernel.SYNC_PORT + 1))
        master.sendto(b"other-group", ("224.0.0.82", kernel.SYNC_PORT))
        inj.send(b"I1" * 20)  # looped back to the backup socket, never transmitted
        master.sendto(b"M2", (kernel.SYNC_GROUP4, kernel.SYNC_PORT))
        got = _drain(cap, 2)
        assert got == [b"M1" * 20, b"M2"]
        assert _drain(cap, 1, tries=5) == []
        assert cap.counters["capture.datagrams"] == 2
        assert cap.counters["capture.dropped.foreign"] == 0
        assert inj.counters == {"inject.datagrams": 1, "inject.bytes": 40,
                                "inject.dropped.send_failed": 0}
        assert inj.address == ADDR
        # the stand-in backup got the injected datagram (and not the master's: loop off)
        q = kernel.backup_queue()
        assert q.sockets == 1 and q.rx_queue > 0
        assert asyncio.run(kernel.committed(timeout=0.05)) is False  # not consumed yet
        assert backup.recv(100) == b"I1" * 20
        with pytest.raises(BlockingIOError):
            backup.recv(100)
        assert asyncio.run(kernel.committed(timeout=1, drops_before=q.drops)) is True


@needs_root
def test_ring_wraps_and_keeps_order(ns: str) -> None:
    """A ring of 64 frames (two blocks of 32) taking 1,500 datagrams in bursts of 50:
    every datagram once, in order, through many wraps; a burst larger than the ring is
    dropped by the kernel and counted; a datagram longer than a frame is counted as
    truncated, never handed on cut."""
    with inside(ns), kernel.Capture("sync0", rcvbuf=1 << 17) as cap, \
            _master_socket() as master:
        assert cap.mode == "ring" and cap.frame_nr == 64 and cap.frame_size == 2048
        got: list[bytes] = []
        for burst in range(30):
            for i in range(50):
                master.sendto(b"%06d" % (burst * 50 + i) * 6,
                              (kernel.SYNC_GROUP4, kernel.SYNC_PORT))
            got += _drain(cap, 50)
        assert got == [b"%06d" % i * 6 for i in range(1500)]
        assert cap.counters["capture.datagrams"] == 1500
        assert cap.counters["capture.dropped.kernel"] == 0
        for _ in range(100):  # the ring holds 64 of these: the rest is dropped
            master.sendto(b"x" * 36, (kernel.SYNC_GROUP4, kernel.SYNC_PORT))
        late = _drain(cap, 100, tries=40)
        assert len(late) == 64 and set(late) == {b"x" * 36}
        assert cap.counters["capture.dropped.kernel"] == 100 - 64
        # a datagram over the MTU is fragmented and never captured (the filter drops
        # fragments): with jumbo frames a datagram longer than a ring frame arrives whole
        subprocess.run(["ip", "link", "set", "sync0", "mtu", "9100"], check=True)
        master.sendto(b"L" * 2000, (kernel.SYNC_GROUP4, kernel.SYNC_PORT))  # > a frame
        master.sendto(b"after", (kernel.SYNC_GROUP4, kernel.SYNC_PORT))
        assert _drain(cap, 1) == [b"after"]
        assert cap.counters["capture.dropped.truncated"] == 1
    with inside(ns), kernel.Capture("sync0", max_datagram=9000) as cap, \
            _master_socket() as master:
        assert cap.frame_size == 16384
        master.sendto(b"L" * 9000, (kernel.SYNC_GROUP4, kernel.SYNC_PORT))
        assert _drain(cap, 1) == [b"L" * 9000]


@needs_root
def test_capture_ipv6_group(ns: str) -> None:
    with inside(ns), kernel.Capture("sync0", group=GROUP6) as cap, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as master:
        idx = socket.if_nametoindex("sync0")
        master.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
        master.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        master.sendto(b"six", (GROUP6, kernel.SYNC_PORT, 0, idx))
        master.sendto(b"not-this", (GROUP6, kernel.SYNC_PORT + 1, 0, idx))
        master.sendto(b"nor-this", ("ff02::8849", kernel.SYNC_PORT, 0, idx))
        master.sendto(b"six-2", (GROUP6, kernel.SYNC_PORT, 0, idx))
        assert _drain(cap, 2) == [b"six", b"six-2"]


@needs_root
def test_typed_errors(ns: str) -> None:
    with inside(ns):
        with pytest.raises(kernel.InterfaceError, match="no interface 'nope'"):
            kernel.Capture("nope").open()
        with pytest.raises(kernel.InterfaceError, match="no interface 'nope'"):
            kernel.Injector("nope").open()
        with pytest.raises(kernel.InterfaceError, match="'bare0' has no IPv4 address"):
            kernel.Injector("bare0").open()
        with pytest.raises(kernel.SyncKernelError, match="not open"):
            kernel.Capture("sync0").read()
        with pytest.raises(kernel.SyncKernelError, match="not open"):
            kernel.Injector("sync0").send(b"x")
        assert kernel.backup_queue().sockets == 0
        assert asyncio.run(kernel.committed(timeout=0.01)) is False  # no backup daemon


@needs_root
def test_commit_check_without_a_backup_daemon_warns_once_per_interval(
        ns: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The injection checks after every round: a gone backup daemon is one line per 10 s,
    not one per round."""
    monkeypatch.setattr(kernel, "limited", kernel.LogLimiter(kernel.log, interval=10.0))
    caplog.set_level(logging.WARNING, logger=kernel.log.name)
    with inside(ns):
        for _ in range(5):
            assert asyncio.run(kernel.committed(timeout=0.01)) is False
    lines = [r.getMessage() for r in caplog.records if "no UDP socket" in r.getMessage()]
    assert lines == [f"commit check: no UDP socket on port {kernel.SYNC_PORT} (is the backup "
                     "sync daemon running?)"]


@needs_root
def test_kernel_maxlen_is_fitted_to_the_sync_interfaces_mtu(ns: str) -> None:
    """The plugin asks the sync interface's MTU in its own namespace and lowers
    kernel_maxlen to what one frame carries (a larger master datagram would leave in IP
    fragments, which the capture cannot read)."""
    from clusterbus.plugins.connsync import fitting_maxlen
    from clusterbus.plugins.connsync.kernel import interface_mtu

    subprocess.run(["ip", "-n", ns, "link", "set", "sync0", "mtu", "1400"], check=True)
    with inside(ns):
        mtu = interface_mtu("sync0")
        missing = interface_mtu("eth-none0")
    assert mtu == 1400 and missing is None
    assert fitting_maxlen(9000, mtu) == 1372
    assert fitting_maxlen(1, mtu) == 1


@needs_root
def test_the_kept_diagnostics_socket_follows_the_threads_namespace(ns: str) -> None:
    """The look at the backup socket keeps its netlink socket per thread between calls;
    a thread that enters another namespace gets that namespace's answer, not the one of
    the namespace the socket was made in."""
    with Topology() as t:
        other = t.netns("cs2")
        for _ in range(2):
            with inside(ns), _backup_socket():
                assert kernel.backup_queue(group=kernel.SYNC_GROUP4).sockets == 1
                with inside(other):
                    assert kernel.backup_queue(group=kernel.SYNC_GROUP4).sockets == 0
                assert kernel.backup_queue(group=kernel.SYNC_GROUP4).sockets == 1
