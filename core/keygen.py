"""``clusterbus keygen``: CURVE key pairs for the bus, and the clients' key options.

The files are those :func:`zmq.auth.create_certificates` writes (``NAME.key``: the public
key; ``NAME.key_secret``: both keys, mode 0600), written to a private temporary directory
inside ``DIR`` first and renamed into place, so a half-written or world-readable secret
never exists under its final name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import click

__all__ = ["keygen", "write_certificates", "curve_options", "client_key_files", "ClientKeyFiles"]

F = TypeVar("F", bound=Callable[..., Any])

class ClientKeyFiles(TypedDict):
    """Keyword arguments of the bus clients (:class:`clusterbus.bus.client.Subscriber`, ...)."""

    certificate: str | None
    server_key: str | None


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def write_certificates(directory: str | Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Create ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` (mode 0600).

    :returns: the paths of the public and the secret file.
    :raises ValueError: a bad name.
    :raises FileExistsError: a file exists and ``force`` is false.
    :raises OSError: the directory is missing or not writable.
    """
    if not _NAME.match(name) or name.endswith((".key", ".key_secret")):
        raise ValueError(f"{name!r}: expected a name of letters, digits, '_', '.', '-' "
                         "(without .key)")
    d = Path(directory)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if not force:
        for p in (public, secret):
            if p.exists():
                raise FileExistsError(f"{p} exists (use --force to replace it)")
    import zmq.auth

    tmp = tempfile.mkdtemp(prefix=".keygen-", dir=d)  # mode 0700
    try:
        old = os.umask(0o077)
        try:
            made_public, made_secret = zmq.auth.create_certificates(tmp, name)
        finally:
            os.umask(old)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return public, secret


@click.command()
@click.option("--dir", "directory", required=True, metavar="DIR",
              type=click.Path(file_okay=False),
              help="Where to write NAME.key and NAME.key_secret (created mode 0700 if missing).")
@click.option("--name", required=True, help="File name stem, e.g. the host or node name.")
@click.option("--force", is_flag=True, help="Replace existing files of that name.")
def keygen(directory: str, name: str, force: bool) -> None:
    """Create a CURVE key pair for the bus and print its public key.

    \b
    DIR/NAME.key          public key: copy it to the peers' authorized_keys
                          directories, or give it to clients as --server-key
    DIR/NAME.key_secret   secret key (mode 0600): [bus] certificate, or --certificate
    """
    import zmq.auth

    try:
        Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        public, secret = write_certificates(directory, name, force=force)
        key, _ = zmq.auth.load_certificate(public)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot write keys in {directory}: {exc.strerror or exc}") from None
    click.echo(f"wrote {public} and {secret}", err=True)
    click.echo(key.decode("ascii"))


def curve_options(func: F) -> F:
    """``--certificate FILE --server-key FILE`` for commands that talk to a daemon."""
    func = click.option(
        "--server-key", type=click.Path(dir_okay=False), default=None, metavar="FILE",
        help="The daemon's public .key file (default with [bus] certificate: that file).",
    )(func)
    return click.option(
        "--certificate", type=click.Path(dir_okay=False), default=None, metavar="FILE",
        help="This client's .key_secret file, for a daemon with CURVE (default: the "
             "configuration's [bus] certificate, if any).",
    )(func)


def client_key_files(bus: Mapping[str, Any], certificate: str | None,
                     server_key: str | None) -> ClientKeyFiles:
    """The ``certificate``/``server_key`` keyword arguments of a client.

    Given options win; with ``[bus] certificate`` set, a missing one is that file: the
    daemon's own certificate (readable by root on the daemon's host; the daemon always
    accepts its own key) or its public part as the server key.
    """
    own = str(bus["certificate"]) if bus.get("certificate") else None
    if own is not None:
        server_key = server_key or own
        certificate = certificate or (own if server_key == own else None)
    return ClientKeyFiles(certificate=certificate, server_key=server_key)
