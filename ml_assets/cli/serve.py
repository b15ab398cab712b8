"""`ml-assets serve`: the current model selection over HTTP (KServe V1), swapped as new ones land.

It reads the instance at `$DAGSTER_HOME` and the store the other commands use; start it before
or after `ml-assets run`: until a selection lands it answers 503 and says what it waits for.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket

from ml_assets.cli.args import PORT, Bounded
from ml_assets.errors import UserError
from ml_assets.serve.limits import DEFAULT_POLL_SECONDS, MAX_BODY_BYTES, MAX_INSTANCES


class ServeError(UserError):
    """The server cannot start (its address is taken or not this machine's)."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port`, bound here so a taken port is one line, not
    uvicorn's log and exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ServeError(
                f"cannot listen on {host}:{port}: the port is in use (another server?); "
                "choose another with --port"
            ) from error
        raise ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the current model selection over HTTP (KServe V1 protocol), hot-swapping it as
    new selections land."""
    from ml_assets.cli.local import prepare_home
    from ml_assets.core.config import load_settings

    prepare_home()
    settings = load_settings()  # a broken config is one line (`main`)
    sock = listen(args.host, args.port)  # before anything slow: a taken port fails at once

    import uvicorn
    from dagster import DagsterInstance

    from ml_assets.defs.resources import ArtifactStoreResource
    from ml_assets.serve.app import create_app

    _log_to_terminal()
    with sock, DagsterInstance.get() as instance:
        app = create_app(
            instance, settings, ArtifactStoreResource().get(), poll_seconds=args.poll_seconds
        )
        port = sock.getsockname()[1]  # the one the OS chose for --port 0
        print(
            f"serving on http://{args.host}:{port}/v1/models "
            f"(up to {MAX_INSTANCES} instances, {MAX_BODY_BYTES // 2**20} MiB per request)",
            flush=True,
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
        server.run(sockets=[sock])
    return 0


def _log_to_terminal() -> None:
    """The watcher's swaps and refusals go next to uvicorn's own lines."""
    logger = logging.getLogger("ml_assets.serve")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_POLL_SECONDS = Bounded(float, 0.05, 3600.0, "seconds from 0.05 to 3600")


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    serve.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (no authentication)"
    )
    serve.add_argument("--port", type=PORT, default=8080)
    serve.add_argument(
        "--poll-seconds",
        type=_POLL_SECONDS,
        default=DEFAULT_POLL_SECONDS,
        help="how often to look for a newer model selection",
    )
    serve.set_defaults(func=cmd_serve)
