"""The lab's application: a small TLS-like persistent service and its clients (stdlib only).

``server NAME PORT``: on connect the server sends ``HELLO NAME SESSION`` (a fresh session
id per connection, as a TLS session would be), then answers every ``PING N`` with
``PONG NAME SESSION N`` on the same connection.

``clients EVENTS STOP TARGET...`` (TARGET = ``NAME=SRC>VIP:PORT``): one thread per client,
bound to its own source address; each keeps one connection and pings it every 0.1 s. A
reset, an end of stream or no answer for :data:`ANSWER_TIMEOUT` seconds is a *reset*: the
client records it and connects again. Every event is one JSON line appended to EVENTS
(``connect`` with server and session, ``reset`` with the error, ``stall`` when an answer
took longer than 0.3 s, ``alive`` once a second); the process ends when the file STOP
exists. Wall-clock timestamps: every namespace of the lab shares one kernel clock.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from typing import Any

__all__ = ["serve", "run_clients", "ANSWER_TIMEOUT", "PING_INTERVAL"]

#: Seconds without an answer after which a client calls its connection lost.
ANSWER_TIMEOUT = 8.0
#: Seconds between two pings of one client.
PING_INTERVAL = 0.1


def _handle(conn: socket.socket, name: str) -> None:
    session = secrets.token_hex(4)
    try:
        conn.sendall(f"HELLO {name} {session}\n".encode())
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.decode(errors="replace").split()
                if len(words) == 2 and words[0] == "PING":
                    conn.sendall(f"PONG {name} {session} {words[1]}\n".encode())
    except OSError:
        return
    finally:
        conn.close()


def serve(name: str, port: int) -> None:
    """Serve forever on ``0.0.0.0:port``; prints ``ready`` once listening."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_handle, args=(conn, name), daemon=True).start()


class _Log:
    def __init__(self, path: str) -> None:
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        record["t"] = time.time()
        with self._lock:
            self._f.write(json.dumps(record) + "\n")


def _readline(sock: socket.socket, buf: bytearray) -> str:
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("connection closed by peer")
        buf += data
    i = buf.index(b"\n")
    line = bytes(buf[:i]).decode(errors="replace")
    del buf[:i + 1]
    return line


def _client(name: str, src: str, vip: str, port: int, log: _Log, stop: str) -> None:
    n = 0
    while not os.path.exists(stop):
        sock = socket.socket()
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            sock.bind((src, 0))
            sock.connect((vip, port))
            buf = bytearray()
            words = _readline(sock, buf).split()
            if len(words) != 3 or words[0] != "HELLO":
                raise ConnectionError(f"bad greeting {words!r}")
            server, session = words[1], words[2]
            log.write(client=name, event="connect", server=server, session=session,
                      src=f"{src}:{sock.getsockname()[1]}", vip=vip)
            last_alive = time.monotonic()
            while not os.path.exists(stop):
                n += 1
                sent = time.monotonic()
                sock.sendall(f"PING {n}\n".encode())
                words = _readline(sock, buf).split()
                took = time.monotonic() - sent
                if words[:3] != ["PONG", server, session]:
                    raise ConnectionError(f"answer from another session: {words!r}")
                if took > 0.3:
                    log.write(client=name, event="stall", seconds=round(took, 3))
                if time.monotonic() - last_alive >= 1.0:
                    log.write(client=name, event="alive", server=server, session=session)
                    last_alive = time.monotonic()
                time.sleep(PING_INTERVAL)
        except (OSError, ConnectionError) as exc:
            log.write(client=name, event="reset", error=type(exc).__name__ + ": " + str(exc))
            time.sleep(0.2)
        finally:
            sock.close()


def run_clients(events: str, stop: str, targets: list[str]) -> None:
    """Run one client thread per ``NAME=SRC>VIP:PORT`` until the file ``stop`` exists."""
    log = _Log(events)
    threads = []
    for spec in targets:
        name, rest = spec.split("=", 1)
        src, dst = rest.split(">", 1)
        vip, port = dst.rsplit(":", 1)
        t = threading.Thread(target=_client, args=(name, src, vip, int(port), log, stop),
                             daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "server":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) >= 4 and argv[0] == "clients":
        run_clients(argv[1], argv[2], argv[3:])
        return 0
    sys.stderr.write("usage: app server NAME PORT | app clients EVENTS STOP NAME=SRC>VIP:PORT...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
