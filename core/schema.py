"""Declaring and checking configuration tables: :class:`Key`, :func:`validate_table` and
the checks keys use.

This is the toolkit, with no sections in it; :mod:`clusterbus.config` declares the core
sections with it (and re-exports every name here, which is what plugins import). It
imports nothing of clusterbus but the errors, so a package that declares a structured
section (``clusterbus.vrrp.config``) can use it without importing the configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["Key", "REQUIRED", "Check", "validate_table", "between", "show", "show_key"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: A check: returns an error message ("expected ...") or ``None`` when the value is good.
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Key:
    """One configuration key.

    :param types: accepted Python types after TOML parsing (``bool`` is never an ``int``).
    :param default: the default, or :data:`REQUIRED`.
    :param check: returns an error message ("expected ...") or ``None`` when the value is good.
    :param doc: one line for ``--help`` and docs.
    :param convert: applied after ``check``; returns the value to keep (e.g. the canonical
        form of an address) or raises :class:`ValueError` whose message is the reason.
    """

    types: type | tuple[type, ...]
    default: Any = REQUIRED
    check: Check | None = None
    doc: str = ""
    convert: Callable[[Any], Any] | None = None


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_key(name: str) -> str:
    """A key as it can be printed on one line (a quoted TOML key may hold anything)."""
    return name if name.isprintable() and len(name) <= 80 else show(name, 80)


def _typename(types: type | tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in ts)


def validate_table(
    table: Mapping[str, Any],
    schema: Mapping[str, Key],
    *,
    file: str,
    prefix: str,
) -> dict[str, Any]:
    """Check ``table`` against ``schema``; return it with defaults filled in.

    :param prefix: the dotted path of the table, used in error messages.
    :raises ConfigError: unknown key, missing required key, wrong type, failed check.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"expected a table, got {type(table).__name__}", file=file, key=prefix)
    out: dict[str, Any] = {}
    for name in table:
        if name not in schema:
            raise ConfigError(
                f"unknown key; known keys here: {', '.join(sorted(schema))}",
                file=file, key=f"{prefix}.{show_key(name)}",
            )
    for name, key in schema.items():
        path = f"{prefix}.{name}"
        if name not in table:
            if key.default is REQUIRED:
                raise ConfigError(f"missing; expected {_typename(key.types)}. {key.doc}".strip(),
                                  file=file, key=path)
            out[name] = key.default
            continue
        value = table[name]
        types = key.types if isinstance(key.types, tuple) else (key.types,)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and float in types and type(value) is int:
            value, ok = float(value), True
        if not ok:
            raise ConfigError(
                f"expected {_typename(key.types)}, got {type(value).__name__} {show(value)}",
                file=file, key=path,
            )
        if key.check is not None:
            problem = key.check(value)
            if problem:
                raise ConfigError(f"{problem}, got {show(value)}", file=file, key=path)
        if key.convert is not None:
            try:
                value = key.convert(value)
            except ValueError as exc:
                raise ConfigError(str(exc), file=file, key=path) from None
        out[name] = value
    return out


def between(lo: float, hi: float) -> Check:
    """Check: a number within ``lo..hi``."""
    return lambda v: None if lo <= v <= hi else f"expected a value from {lo} to {hi}"
