"""Render a daemon's status (the STATUS reply) for a terminal with rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_status"]

#: the columns worth a terminal's width, per service; the rest is in ``status --json``
COLUMNS = {
    "vrrp": ("name", "interface", "vrid", "state", "priority", "master_seen",
             "advert_interval", "vips", "holding", "dropped", "vetoed", "restart_needed"),
}


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_flat(v) for v in value) or "-"
    return str(value)


def render_status(st: dict[str, Any], console: Console | None = None) -> None:
    """Print the daemon header, one table per service and the plugins."""
    console = console or Console()
    console.print(f"[bold]clusterbus node {st.get('node')}[/] pid {st.get('pid')} "
                  f"up {st.get('uptime')} s, view {st.get('view')}, seq {st.get('seq')}, "
                  f"ignored reports: {_flat(st.get('ignored', {}))}")
    sections = dict(st.get("services") or {})
    if st.get("looplag"):
        sections["event loop lag"] = st["looplag"]
    sections.update({f"plugin {k}": v for k, v in (st.get("plugin_status") or {}).items()})
    for name, svc in sections.items():
        instances = svc.get("instances") if isinstance(svc, dict) else None
        # msgpack replies decode arrays as tuples
        if isinstance(instances, (list, tuple)) and instances and isinstance(instances[0], dict):
            table = Table(title=f"{name} instances")
            cols = [c for c in COLUMNS.get(name, instances[0]) if c in instances[0]]
            for col in cols:
                table.add_column(col)
            for inst in instances:
                table.add_row(*(_flat(inst.get(c)) for c in cols))
            console.print(table)
            rest = {k: v for k, v in svc.items() if k != "instances"}
        else:
            rest = svc if isinstance(svc, dict) else {"status": svc}
        if rest:
            table = Table(title=name, show_header=False)
            table.add_column("key")
            table.add_column("value")
            for k, v in rest.items():
                table.add_row(str(k), _flat(v))
            console.print(table)
    plugins = st.get("plugins") or []
    if plugins:
        table = Table(title="plugins")
        for col in ("plugin", "calls", "slow", "worst ms", "failures", "hooks"):
            table.add_column(col)
        for p in plugins:
            table.add_row(p["name"], str(p.get("calls", "-")), str(p.get("slow", "-")),
                          str(p.get("worst_ms", "-")), str(p["failures"]), ", ".join(p["hooks"]))
        console.print(table)
