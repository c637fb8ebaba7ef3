"""Typed errors. Each one says whose fault it is (docs/architecture.md, "Errors")."""

from __future__ import annotations

__all__ = [
    "ClusterbusError",
    "DecodeError",
    "InvalidEvent",
    "LocalProtocolError",
    "RemoteProtocolError",
    "ConfigError",
    "PluginError",
]


class ClusterbusError(Exception):
    """Base of every error clusterbus raises on purpose."""


class LocalProtocolError(ClusterbusError):
    """We asked for something illegal: a bug in clusterbus or in a plugin. Fail loudly."""


class RemoteProtocolError(ClusterbusError):
    """A peer, the kernel or a user sent something that breaks the protocol.

    The receiver drops the input, counts it and logs the reason; it keeps running.
    """


class DecodeError(RemoteProtocolError, ValueError):
    """Bytes that cannot be decoded.

    :param msg: what was wrong.
    :param offset: byte offset in the input where decoding failed, when known.
    """

    def __init__(self, msg: str, *, offset: int | None = None) -> None:
        super().__init__(msg if offset is None else f"{msg} (at byte {offset})")
        self.reason = msg
        self.offset = offset


class InvalidEvent(ClusterbusError, ValueError):
    """An event was built with fields that break its contract (it is never constructed)."""


class ConfigError(ClusterbusError):
    """Bad configuration. Names the file, the key, what was wrong and what would be right.

    :param msg: what was wrong and what is expected.
    :param file: the configuration file (or ``"<default>"`` for the embedded default).
    :param key: dotted key path, e.g. ``nodemap.nodes.3.addrs[1]``.
    """

    def __init__(self, msg: str, *, file: str | None = None, key: str | None = None) -> None:
        self.msg = msg
        self.file = file
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.key:
            where.append(f"key '{self.key}'")
        return f"{': '.join(where)}: {self.msg}" if where else self.msg

    def with_file(self, file: str) -> ConfigError:
        """Return a copy of this error that names ``file`` (when it named none)."""
        return ConfigError(self.msg, file=self.file or file, key=self.key)


class PluginError(ClusterbusError):
    """A plugin failed (at load, at configure time or in a hook); carries the plugin's name."""

    def __init__(self, plugin: str, msg: str) -> None:
        super().__init__(f"plugin {plugin!r}: {msg}")
        self.plugin = plugin
