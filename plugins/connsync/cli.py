"""``clusterbus connsync show``: the synced connection table of a running daemon
(registered through the ``clusterbus.cli`` entry-point group, like ``clusterbus ipvs``).

The table is asked from the daemon's conn-sync channel (``[connsync] listen``), not from
the bus's STATUS: it may hold 100,000 entries. The request is authenticated with the
daemon's own key pair (``[bus] certificate``), so it works as root on the director.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from clusterbus import ClusterbusError, ConfigError
from clusterbus.bus.client import connectable
from clusterbus.cli import CONFIG_ENV, SYSTEM_CONFIG, BadConfig, load_cli_config

from .channel import request_show

__all__ = ["connsync"]


@click.group()
def connsync() -> None:
    """Conn-sync: the connection table synced between directors."""


@connsync.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False), default=None,
              help=f"configuration file with a [connsync] section (default: ${CONFIG_ENV}, "
                   f"else {SYSTEM_CONFIG} when it exists)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--limit", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="rows to fetch at most")
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="seconds to wait for the daemon")
@click.option("--conntrack", "conntrack", is_flag=True,
              help="list the synced netfilter conntrack entries instead ([connsync] "
                   "conntrack = true)")
def show(path: str | None, as_json: bool, limit: int, timeout: float, conntrack: bool) -> None:
    """List the synced table: every entry this director and its peers originated."""
    cfg = load_cli_config(path)
    section = cfg.plugin_sections.get("connsync")
    if section is None:
        raise BadConfig(f"{cfg.file}: no [connsync] section")
    cert = str(cfg["bus"]["certificate"])
    if not cert:
        raise BadConfig(f"{cfg.file}: key 'bus.certificate': conn-sync needs it")
    endpoint = str(section.get("listen", ""))
    try:
        reply = asyncio.run(request_show(connectable(endpoint), cert, cert, timeout=timeout,
                                         limit=limit))
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None
    except (TimeoutError, OSError, ValueError, ClusterbusError) as exc:
        raise click.ClickException(f"no daemon answered on {endpoint} "
                                   f"({str(exc) or 'timeout'})") from None
    if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == "TABLE"
            and isinstance(reply[1], dict)):
        raise click.ClickException(f"unexpected answer from {endpoint}: {str(reply)[:80]}")
    table: dict[str, Any] = reply[1]
    if conntrack:
        _show_conntrack(table, as_json)
        return
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    rows = table.get("rows", [])
    click.echo(f"node {table.get('node')}: {table.get('total', 0)} synced entries"
               + (f" (first {len(rows)} shown)" if table.get("truncated") else ""))
    fmt = "{:>6} {:<5} {:<45} {:<45} {:<45} {:>5} {:>7} {:>7}"
    click.echo(fmt.format("origin", "proto", "client", "virtual", "real", "state", "flags",
                          "timeout"))
    for r in rows:
        click.echo(fmt.format(r["origin"], r["protocol"] + ("*" if r.get("template") else ""),
                              r["client"], r["virtual"], r["real"], r["state"],
                              hex(r["flags"]), r["timeout"]))


def _show_conntrack(table: dict[str, Any], as_json: bool) -> None:
    ct = table.get("conntrack")
    if not isinstance(ct, dict):
        raise click.ClickException("the daemon sent no conntrack table (an older version)")
    if as_json:
        click.echo(json.dumps({"node": table.get("node"), **ct}, indent=2))
        return
    rows = ct.get("rows", [])
    off = "" if ct.get("enabled") else " (conntrack = false: nothing synced)"
    click.echo(f"node {table.get('node')}: {ct.get('total', 0)} synced conntrack entries{off}"
               + (f" (first {len(rows)} shown)" if ct.get("truncated") else ""))
    fmt = "{:>6} {:<5} {:<62} {:<62} {:>5} {:>7} {:>9}"
    click.echo(fmt.format("origin", "proto", "original", "reply", "state", "status",
                          "timeout"))
    for r in rows:
        click.echo(fmt.format(r["origin"], r["protocol"], r["original"], r["reply"],
                              "-" if r["state"] is None else r["state"], hex(r["status"]),
                              r["timeout"]))
