"""The kernel's IPVS table as ipvsadm prints it, and the same form built from a Table.

Kernel tests compare both, so every result is cross-checked with ``ipvsadm -Ln``, a
program that talks to the kernel on its own (libipvs), not through our codec.
"""

from __future__ import annotations

import subprocess

from clusterbus.plugins.ipvs.table import (
    AF_INET6,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    SVC_F_SCHED3,
    Table,
)

FWD_WORDS = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route"}
PROTO_WORDS = {6: "TCP", 17: "UDP", 132: "SCTP"}


def ipvsadm(*args: str) -> str:
    return subprocess.run(["ipvsadm", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def parse_list(text: str) -> dict[str, dict[str, str]]:
    """``ipvsadm -Ln --thresholds`` -> {service line: {real server: "Fwd weight U L"}}."""
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(("IP Virtual Server", "Prot ", "  -> RemoteAddress")):
            continue
        if line.startswith("  -> "):
            parts = line.split()
            assert current is not None
            out[current][parts[1]] = " ".join(parts[2:5])
        elif line.strip():
            current = " ".join(line.split())
            out[current] = {}
    return out


def kernel_view() -> dict[str, dict[str, str]]:
    """What ipvsadm sees now (forward and weight with ``-Ln``; thresholds added)."""
    plain = parse_list(ipvsadm("-Ln"))
    thresholds = parse_list(ipvsadm("-Ln", "--thresholds"))
    out: dict[str, dict[str, str]] = {}
    for svc, dests in plain.items():
        out[svc] = {}
        for rs, cols in dests.items():
            fwd, weight = cols.split()[:2]
            u, low = thresholds[svc][rs].split()[:2]
            out[svc][rs] = f"{fwd} {weight} {u} {low}"
    return out


def expected_view(table: Table) -> dict[str, dict[str, str]]:
    """How ipvsadm 1.31 prints ``table``."""
    out: dict[str, dict[str, str]] = {}
    for key, entry in table.items():
        s = entry.service
        v6 = key.af == AF_INET6
        if key.fwmark:
            words = ["FWM", str(key.fwmark)] + (["IPv6"] if v6 else [])
        else:
            host = f"[{key.addr}]" if v6 else key.addr
            words = [PROTO_WORDS[key.protocol], f"{host}:{key.port}"]
        words.append(s.scheduler)
        names = {SVC_F_SCHED1: "flag-1", SVC_F_SCHED2: "flag-2", SVC_F_SCHED3: "flag-3"}
        if s.scheduler in ("sh", "mh"):
            names = {SVC_F_SCHED1: f"{s.scheduler}-fallback", SVC_F_SCHED2: f"{s.scheduler}-port"}
        flags = [n for bit, n in names.items() if s.flags & bit]
        if flags:
            words.append(f"({','.join(flags)})")
        if s.flags & SVC_F_PERSISTENT:
            words.append(f"persistent {s.timeout}")
            full = 128 if v6 else 32
            if s.netmask != full:
                mask = (str(s.netmask) if v6 else
                        ".".join(str(b) for b in ((0xFFFFFFFF << (32 - s.netmask)) & 0xFFFFFFFF)
                                 .to_bytes(4, "big")))
                words.append(f"mask {mask}")
        if s.flags & SVC_F_ONEPACKET:
            words.append("ops")
        if s.pe_name:
            words.append(f"pe {s.pe_name}")
        dests = {}
        for d in entry.dests.values():
            dests[str(d)] = f"{FWD_WORDS[d.forward]} {d.weight} {d.u_threshold} {d.l_threshold}"
        out[" ".join(words)] = dests
    return out
