"""Render a daemon's status (the STATUS reply) for a terminal with rich.

Nested values keep their shape: a table (dict) becomes a branch of a tree, a list of
tables (VRRP instances, keepalived instances) a table with one row each, a list of scalars
one item per line. Nothing is flattened into ``a=1, b=2`` strings or wrapped at 80
columns when the output is not a terminal. The bus epoch is shown in hex, as the logs
show it (``publishing on ... (epoch 5f0c...)``).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

__all__ = ["render_status", "epoch_text", "json_safe", "JSON_SAFE_INT"]

#: the columns worth a terminal's width, per service; the rest is in ``status --json``
COLUMNS = {
    "vrrp": ("name", "interface", "vrid", "state", "priority", "master_seen",
             "advert_interval", "vips", "holding", "dropped", "vetoed", "restart_needed"),
}

#: width used when the output is not a terminal (a pipe, a file): never wrap there
PIPE_WIDTH = 1000


def epoch_text(epoch: Any) -> str:
    """A bus epoch as the logs print it: 16 hex digits."""
    return f"{epoch:016x}" if isinstance(epoch, int) and not isinstance(epoch, bool) else str(epoch)


#: the largest integer every JSON parser reads exactly (a double's 53-bit mantissa)
JSON_SAFE_INT = 2**53 - 1


def json_safe(value: Any, key: str = "") -> Any:
    """``value`` (a status or snapshot, as decoded from msgpack) ready for ``json.dumps``
    and for any JSON reader: an ``epoch`` (a random u64) and any integer beyond
    +-(2^53-1) become decimal strings (docs/wire-protocol.md, "Conventions"); tuples
    become lists; keys become strings."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return str(value) if key == "epoch" or abs(value) > JSON_SAFE_INT else value
    if isinstance(value, dict):
        return {str(k): json_safe(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, key) for v in value]
    return str(value)


def _scalar(key: str, value: Any) -> str:
    if key == "epoch":
        return epoch_text(value)
    if value is None:
        return "-"
    return str(value)


def _is_rows(value: Any) -> bool:
    # msgpack replies decode arrays as tuples
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(v, dict) for v in value))


def _cell(key: str, value: Any) -> RenderableType:
    """A table cell: lists one item per line, tables one ``k=v`` per line."""
    if isinstance(value, dict):
        return Text("\n".join(f"{k}={_scalar(str(k), v)}" for k, v in value.items()) or "-")
    if isinstance(value, (list, tuple)):
        return Text("\n".join(_scalar(key, v) for v in value) or "-")
    return Text(_scalar(key, value))


def _rows_table(title: str, rows: Any, columns: tuple[str, ...] | None = None) -> Table:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    cols = [c for c in columns if c in keys] if columns else keys
    table = Table(title=title, title_justify="left")
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_cell(c, row.get(c)) for c in cols))
    return table


def _branch(tree: Tree, key: str, value: Any) -> None:
    if isinstance(value, dict):
        if not value:
            tree.add(f"{key}: -")
            return
        sub = tree.add(f"[bold]{key}[/]")
        for k, v in value.items():
            _branch(sub, str(k), v)
    elif _is_rows(value):
        tree.add(_rows_table(key, value))
    elif isinstance(value, (list, tuple)):
        if not value:
            tree.add(f"{key}: -")
        elif all(not isinstance(v, (dict, list, tuple)) for v in value) and len(value) <= 8:
            tree.add(Text(f"{key}: {', '.join(_scalar(key, v) for v in value)}"))
        else:
            sub = tree.add(f"[bold]{key}[/]")
            for i, v in enumerate(value):
                _branch(sub, str(i), v)
    else:
        tree.add(Text(f"{key}: {_scalar(key, value)}"))


def render_status(st: dict[str, Any], console: Console | None = None) -> None:
    """Print the daemon header, its last reload, one tree per service and the plugins."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=PIPE_WIDTH)
    console.print(Text.assemble(
        (f"clusterbus node {st.get('node')}", "bold"),
        f"  pid {st.get('pid')}  up {st.get('uptime')} s  view {st.get('view')}  "
        f"seq {st.get('seq')}  config {st.get('config', '-')}"))
    ignored = st.get("ignored") or {}
    if ignored:
        tree = Tree("[bold]ignored reports[/]")
        for k, v in ignored.items():
            tree.add(Text(f"{k}: {v}"))
        console.print(tree)
    reload = st.get("reload") or {}
    if reload.get("generation"):
        tree = Tree(Text(f"last reload #{reload['generation']}: {reload.get('result')}",
                         style="bold"))
        for k in ("file", "reason", "restart_needed", "failed"):
            if reload.get(k):
                _branch(tree, k, reload[k])
        console.print(tree)
    sections = dict(st.get("services") or {})
    if st.get("looplag"):
        sections["event loop lag"] = st["looplag"]
    sections.update({f"plugin {k}": v for k, v in (st.get("plugin_status") or {}).items()})
    for name, svc in sections.items():
        tree = Tree(f"[bold]{name}[/]")
        if isinstance(svc, dict):
            for k, v in svc.items():
                if _is_rows(v):
                    cols = COLUMNS.get(name) if k == "instances" else None
                    tree.add(_rows_table(f"{name} {k}", v, cols))
                else:
                    _branch(tree, str(k), v)
        else:
            tree.add(Text(_scalar("status", svc)))
        console.print(tree)
    plugins = st.get("plugins") or []
    if plugins:
        table = Table(title="plugins", title_justify="left")
        for col in ("plugin", "calls", "slow", "worst ms", "failures", "hooks"):
            table.add_column(col)
        for p in plugins:
            table.add_row(p["name"], str(p.get("calls", "-")), str(p.get("slow", "-")),
                          str(p.get("worst_ms", "-")), str(p["failures"]), "\n".join(p["hooks"]))
        console.print(table)
