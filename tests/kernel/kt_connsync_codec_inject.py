"""The conn-sync codec against the kernel's own sync receiver (inside UML).

Datagrams built by ``clusterbus.plugins.connsync.codec`` (version 1: IPv4, IPv6, sequence
data, fwmark, a persistence template, a SIP persistence-engine template; version 0: plain,
with sequence data, INACTIVE TIME_WAIT) are sent to a real backup sync daemon in a
namespace (multicast loop, TTL 0); ``/proc/net/ip_vs_conn`` must then hold exactly those
connections with the timeouts sent (v0 carries none: the kernel's state defaults). A
datagram with a sequence option of the wrong length is dropped by the kernel and refused
by the codec alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

PAYLOAD = r'''
import json, socket, sys, time
from clusterbus.plugins.connsync import codec
from clusterbus.plugins.connsync.codec import SeqOpt, SyncConn, SyncMessage, encode

def C(**kw):
    base = dict(af=2, protocol=6, flags=3, state=1, cport=40001, vport=80, dport=80,
                caddr="10.51.0.7", vaddr="10.52.0.100", daddr="10.53.0.3", timeout=777)
    base.update(kw)
    return SyncConn(**base)

seq = (SeqOpt(init_seq=1000, delta=5, previous_delta=0), SeqOpt(init_seq=2000, delta=0, previous_delta=0))
v1 = SyncMessage(version=1, syncid=5, conns=(
    C(),
    C(cport=40002, flags=0x600, in_seq=seq[0], out_seq=seq[1], timeout=666),
    C(af=10, cport=40003, caddr="2001:db8:51::7", vaddr="2001:db8:52::100", daddr="2001:db8:53::3",
      timeout=555),
    C(cport=0, vport=443, dport=443, flags=0x1183, state=0, timeout=333),
    C(cport=0, vport=5060, dport=5060, protocol=17, flags=0x1183, state=0, timeout=222,
      pe_data=b"call-id-xyz", pe_name=b"sip"),
    C(cport=40006, fwmark=7, timeout=444),
))
v0 = SyncMessage(version=0, syncid=5, conns=(
    C(cport=40010, timeout=0),
    C(cport=40011, flags=0x400, in_seq=seq[0], out_seq=seq[1], timeout=0),
    C(cport=40012, state=5, flags=0x103, timeout=0),
))
bad = bytearray(encode(SyncMessage(version=1, syncid=5, conns=(
    C(cport=40020, flags=0x600, in_seq=seq[0], out_seq=seq[1]),))))
bad[8 + 36 + 1] = 16
try:
    codec.decode(bytes(bad))
    refused = None
except codec.DecodeError as exc:
    refused = str(exc)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.50.0.1"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
for g in (encode(v1), encode(v0), bytes(bad)):
    s.sendto(g, ("224.0.0.81", 8848))
rows = []
for _ in range(50):                       # the backup applies within milliseconds; bounded wait
    time.sleep(0.1)
    rows = open("/proc/net/ip_vs_conn").read().splitlines()[1:]
    if len(rows) >= 8:
        time.sleep(0.3)
        rows = open("/proc/net/ip_vs_conn").read().splitlines()[1:]
        break
print(json.dumps({"rows": rows, "refused": refused}))
'''


def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def test_codec_datagrams_land_in_the_kernel_exactly() -> None:
    ns = f"cbcs{uuid.uuid4().hex[:6]}"
    assert _sh("ip", "netns", "add", ns).returncode == 0
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["ip", "addr", "add", "10.50.0.1/24", "dev", "v0"],
                    ["ip", "link", "set", "v0", "up"], ["ip", "link", "set", "v1", "up"],
                    ["ipvsadm", "--start-daemon", "backup", "--mcast-interface", "v0", "--syncid", "5"]):
            p = _sh("ip", "netns", "exec", ns, *cmd)
            assert p.returncode == 0, (cmd, p.stderr)
        p = _sh("ip", "netns", "exec", ns, sys.executable, "-c", PAYLOAD)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        _sh("ip", "netns", "exec", ns, "ipvsadm", "--stop-daemon", "backup")
        _sh("ip", "netns", "del", ns)
    assert out["refused"] and "sequence option of 16 bytes" in out["refused"]
    with open("/proc/modules") as f:
        sip = any(line.split()[0] == "ip_vs_pe_sip" for line in f)
    got = {}
    for row in out["rows"]:
        f = row.split()
        got[(f[0], f[2], f[4])] = (f[1], f[3], f[5], f[7], int(f[8]), f[9:])
    # (protocol, client port, virtual port) -> client, virtual, dest, state, expires, PE
    c, v, d = "0A330007", "0A340064", "0A350003"
    want = {
        ("TCP", "9C41", "0050"): (c, v, d, "ESTABLISHED", 777, []),
        ("TCP", "9C42", "0050"): (c, v, d, "ESTABLISHED", 666, []),
        ("TCP", "9C43", "0050"): ("2001:0db8:0051:0000:0000:0000:0000:0007",
                                  "2001:0db8:0052:0000:0000:0000:0000:0100",
                                  "2001:0db8:0053:0000:0000:0000:0000:0003", "ESTABLISHED", 555, []),
        ("TCP", "0000", "01BB"): (c, v, d, "NONE", 333, []),
        ("TCP", "9C46", "0050"): (c, v, d, "ESTABLISHED", 444, []),
        ("TCP", "9C4A", "0050"): (c, v, d, "ESTABLISHED", 900, []),      # v0: the state's default
        ("TCP", "9C4B", "0050"): (c, v, d, "ESTABLISHED", 900, []),
        ("TCP", "9C4C", "0050"): (c, v, d, "TIME_WAIT", 120, []),
    }
    if sip:   # without the SIP engine the kernel drops that one entry ("no sip engine")
        want[("UDP", "0000", "13C4")] = (c, v, d, "NONE", 222, ["sip", "call-id-xyz"])
    assert set(got) == set(want), out["rows"]
    for k, (ca, va, da, state, expires, pe) in want.items():
        g = got[k]
        assert g[:4] == (ca, va, da, state) and g[5] == pe, (k, g)
        assert expires - 10 <= g[4] <= expires, (k, g)          # counting down since it landed
