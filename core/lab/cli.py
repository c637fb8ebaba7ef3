"""``clusterbus lab``: the two-director cluster on one machine (see docs/lab.md)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import runner

__all__ = ["lab", "render_result", "render_status"]


def _progress(as_json: bool) -> Any:
    def show(line: str) -> None:
        # progress always on stderr with --json: stdout ends with the one JSON object
        click.echo(f"  {line}", err=as_json)
    return show


def _opts(ctx: click.Context, no_sync: bool, as_json: bool) -> tuple[bool, bool]:
    parent = ctx.find_object(dict) or {}
    return (not (no_sync or parent.get("no_sync", False)),
            as_json or parent.get("json", False))


no_sync_option = click.option("--no-sync", is_flag=True,
                              help="Run the directors without connection sync (no conn-sync, "
                                   "no kernel sync daemon).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="End with one JSON object on the last line of stdout.")


@click.group()
@no_sync_option
@json_option
@click.pass_context
def lab(ctx: click.Context, no_sync: bool, as_json: bool) -> None:
    """The original problem on one machine: two LVS directors, three app nodes, a client.

    \b
    Everything runs in network namespaces inside one User-Mode Linux kernel (for IPVS);
    each director runs the real daemon (VRRP speaker, IPVS applier, conn-sync, CVIP policy).
    Needs root and the Debian packages user-mode-linux, ipvsadm, iproute2, kmod, procps;
    it installs nothing and says what is missing.

    \b
    clusterbus lab failover            kill director 1: VIP1 moves, connections kept
    clusterbus lab --no-sync failover  the same without connection sync: resets
    clusterbus lab handoff             planned drain: clusterbus cvip drain 1
    clusterbus lab up | status | down  a lab that keeps running in the background
    """
    ctx.ensure_object(dict)
    ctx.obj["no_sync"] = no_sync
    ctx.obj["json"] = as_json


def _fail(exc: runner.LabError) -> None:
    click.echo(f"clusterbus lab: {exc}", err=True)
    sys.exit(1)


def _scenario(ctx: click.Context, mode: str, no_sync: bool, as_json: bool) -> None:
    sync, as_json = _opts(ctx, no_sync, as_json)
    if not as_json:
        click.echo(f"clusterbus lab {mode}{'' if sync else ' --no-sync'}: booting the lab "
                   "(about a minute)")
    try:
        result = runner.run_scenario(mode, sync=sync, progress=_progress(as_json))
    except runner.LabError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(render_result(result))


@lab.command()
@no_sync_option
@json_option
@click.pass_context
def failover(ctx: click.Context, no_sync: bool, as_json: bool) -> None:
    """Kill director 1 (its daemon and its link): VIP1 moves to director 2.

    Prints a timeline and, per client, whether its connection was kept or reset and
    whether its real server changed. With --json the last line is one JSON object with
    clients, resets (clients reset), reset_events, server_changed, session_lost,
    timeline and per_client.
    """
    _scenario(ctx, "failover", no_sync, as_json)


@lab.command()
@no_sync_option
@json_option
@click.pass_context
def handoff(ctx: click.Context, no_sync: bool, as_json: bool) -> None:
    """Planned drain of director 1 (clusterbus cvip drain 1): VIP1 is handed to director 2.

    Same output as failover.
    """
    _scenario(ctx, "handoff", no_sync, as_json)


@lab.command()
@no_sync_option
@json_option
@click.pass_context
def up(ctx: click.Context, no_sync: bool, as_json: bool) -> None:
    """Start a lab that keeps running in the background (until `clusterbus lab down`)."""
    sync, as_json = _opts(ctx, no_sync, as_json)
    try:
        st = runner.up(sync=sync, progress=_progress(as_json))
    except runner.LabError as exc:
        _fail(exc)
        return
    click.echo(json.dumps(st) if as_json else render_status(st))


@lab.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the running lab: who holds each VIP, each client's real server and resets."""
    _, as_json = _opts(ctx, False, as_json)
    st = runner.status()
    click.echo(json.dumps(st) if as_json else render_status(st))
    if not st["up"]:
        sys.exit(1)


@lab.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop the running lab (its UML kernel halts; killed by its recorded PID if it hangs)."""
    click.echo(runner.down())


def render_status(st: dict[str, Any]) -> str:
    """The text form of :func:`runner.status`."""
    if not st.get("up"):
        return "no lab is up (start one with `clusterbus lab up`)"
    lines = [f"lab up: UML PID {st['pid']}, directory {st['directory']}, "
             f"status {st.get('age')} s old"]
    if "vips" not in st:
        return lines[0] + " (no status yet)"
    for name, v in st["vips"].items():
        holder = " and ".join(f"director {d}" for d in v["directors"]) or "nobody"
        lines.append(f"  {name} {v['address']}: {holder}")
    daemons = ", ".join(f"{k} {'running' if alive else 'stopped'}"
                        for k, alive in st["daemons"].items())
    lines.append(f"  daemons: {daemons}; connection sync: {st['sync']}")
    for name, c in st["clients"].items():
        lines.append(f"  client {name} -> {c['vip']}: {c['server']} session {c['session']}, "
                     f"{c['resets']} resets")
    return "\n".join(lines)


def render_result(r: dict[str, Any]) -> str:
    """The readable timeline of a failover or handoff."""
    synced = r.get("connsync_entries")
    lines = [f"{r['scenario']}: connection sync {r['sync']}"
             + (f" ({synced} VIP1 connections in director 2's conn-sync table)"
                if synced is not None else "")
             + f", CVIP policy {r.get('cvip', '?')}; lab run {r.get('duration', '?')} s",
             f"how: {r.get('method', '?')}", "", "timeline:"]
    for e in r["timeline"]:
        lines.append(f"  {e['t']:+8.3f} s  {e['what']}")
    lines += ["", "clients:"]
    for c in r["per_client"]:
        server = (c["server_after"] if c["server_before"] == c["server_after"]
                  else f"{c['server_before']} -> {c['server_after']} (CHANGED)")
        if c["kept"]:
            what = f"connection kept, same session {c['session_after']}"
            if c["max_stall"]:
                what += f", longest wait for an answer {c['max_stall']:.2f} s"
        else:
            what = (f"RESET at {c['first_reset']:+.3f} s ({c['reset_error']}); reconnected, "
                    + ("same session" if c["session_before"] == c["session_after"]
                       else "session lost"))
        lines.append(f"  {c['client']} {c['source']} -> {c['vip']}  server {server}: {what}")
    lines += ["", f"{r['clients']} clients: {r['resets']} reset, {r['server_changed']} changed "
              f"real server, {r['session_lost']} lost their session"]
    return "\n".join(lines)
