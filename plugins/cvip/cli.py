"""``clusterbus cvip``: show CVIP owners; planned moves, drains and re-balances.

``show`` reads the daemon's status (the ``STATUS`` request, as ``clusterbus status``);
``move``, ``drain`` and ``rebalance`` change the cluster: they go to the daemon's control
socket (``[cvip] control``, root only), which publishes them as ``cvip.command`` events
that every director applies. Registered through the ``clusterbus.cli`` entry points.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from typing import Any

import click

from clusterbus import ClusterbusError, ConfigError
from clusterbus.cli import BadConfig, config_option, load_cli_config
from clusterbus.keygen import client_key_files, curve_options

from . import DEFAULT_CONTROL

__all__ = ["cvip", "control_request"]


def _control_path(config_path: str | None, path: str | None) -> str:
    if path:
        return path
    cfg = load_cli_config(config_path)
    section = cfg.plugin_sections.get("cvip")
    if section is None:
        raise BadConfig(f"{cfg.file}: no [cvip] section")
    return str(section.get("control", DEFAULT_CONTROL))


def control_request(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a daemon's control socket; its JSON reply.

    :raises OSError: no daemon listens there, or this user may not connect.
    :raises ValueError: the reply is not JSON.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise ValueError("the reply is not a JSON object")
    return reply


def _ask(path: str, request: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = control_request(path, request)
    except PermissionError:
        raise click.ClickException(f"cannot connect to {path}: permission denied (changing "
                                   "CVIP owners needs root)") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"no daemon answered on {path}: {exc}") from None
    if not reply.get("ok"):
        raise click.ClickException(str(reply.get("error", "refused")))
    return reply


socket_option = click.option("--socket", "sock", type=click.Path(dir_okay=False), default=None,
                             metavar="PATH", help="The control socket (default: [cvip] control).")


@click.group()
def cvip() -> None:
    """Cluster virtual IPs: which director owns each; planned moves (docs/cvip.md)."""


@cvip.command()
@config_option
@curve_options
@click.option("--json", "as_json", is_flag=True, help="The plugin's status as JSON.")
@click.option("--timeout", type=float, default=2.0, show_default=True)
def show(config_path: str | None, certificate: str | None, server_key: str | None,
         as_json: bool, timeout: float) -> None:
    """Each CVIP's owner, candidates, claims and this director's VRRP priority."""
    from clusterbus.bus.client import connectable, fetch_status

    cfg = load_cli_config(config_path)
    try:
        st = asyncio.run(fetch_status(connectable(cfg["bus"]["snapshot"]), timeout=timeout,
                                      **client_key_files(cfg["bus"], certificate, server_key)))
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None
    except (TimeoutError, OSError, ClusterbusError, ValueError) as exc:
        raise click.ClickException(
            f"no daemon answered on {cfg['bus']['snapshot']} ({str(exc) or 'timeout'})") from None
    data = (st.get("plugin_status") or {}).get("cvip")
    if data is None:
        raise click.ClickException("the daemon runs no CVIP policy (no [cvip] section)")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"director {data['node']}: live {_list(data['live'])}, draining "
               f"{_list(data['draining'])}, quorate {data['quorate']}"
               + ("" if data["settled"] else " (settling: claims nothing yet)"))
    click.echo(f"{'CVIP':<24} {'owner':>5}  {'here':<8} {'prio':>4}  {'vrrp':<8} claims")
    for c in data["cvips"]:
        here = "HOLDING" if c["holding"] else ("handing" if c["handing_to"] else "-")
        claims = ",".join(f"{n}@{g}" for n, g in c["claims"].items()) or "-"
        click.echo(f"{c['cvip']:<24} {_n(c['owner']):>5}  {here:<8} {_n(c['priority']):>4}  "
                   f"{c['vrrp'] or '-':<8} {claims}")


def _n(v: Any) -> str:
    return "-" if v is None else str(v)


def _list(v: list[Any]) -> str:
    return ",".join(map(str, v)) or "-"


@cvip.command()
@click.argument("addr")
@click.argument("node", type=click.IntRange(0, 2**32 - 1))
@config_option
@socket_option
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the new owner claimed the CVIP.")
@click.option("--timeout", type=float, default=10.0, show_default=True)
def move(addr: str, node: int, config_path: str | None, sock: str | None, wait: bool,
         timeout: float) -> None:
    """Move CVIP ADDR to director NODE (priority-0 handoff, no moment of two holders)."""
    path = _control_path(config_path, sock)
    reply = _ask(path, {"op": "move", "cvip": addr, "node": node})
    click.echo(f"{reply['cvip']}: moving {_n(reply['from'])} -> {node}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        show = _ask(path, {"op": "show"})["show"]
        for c in show["cvips"]:
            if c["cvip"].split("/")[0] == reply["cvip"] and c["owner"] == node \
                    and str(node) in c["claims"]:
                click.echo(f"{reply['cvip']}: owned by {node}")
                return
        time.sleep(0.05)
    click.echo(f"{reply['cvip']}: director {node} did not claim it within {timeout} s",
               err=True)
    sys.exit(1)


@cvip.command()
@click.argument("node", type=click.IntRange(0, 2**32 - 1))
@config_option
@socket_option
@click.option("--undo", is_flag=True, help="Stop draining NODE (it may be chosen again).")
def drain(node: int, config_path: str | None, sock: str | None, undo: bool) -> None:
    """Move every CVIP off director NODE (planned handoffs); it owns none while draining."""
    _ask(_control_path(config_path, sock), {"op": "drain", "node": node, "undo": undo})
    click.echo(f"director {node}: {'no longer draining' if undo else 'draining'}")


@cvip.command()
@config_option
@socket_option
def rebalance(config_path: str | None, sock: str | None) -> None:
    """Move every CVIP to its rendezvous-hash choice among the live directors."""
    reply = _ask(_control_path(config_path, sock), {"op": "rebalance"})
    moves = reply.get("moves") or {}
    for a, n in moves.items():
        click.echo(f"{a}: moving to {n}")
    if not moves:
        click.echo("balanced: nothing to move")
