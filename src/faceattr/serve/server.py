"""Running the app with uvicorn: one process, graceful stop on SIGTERM or Ctrl-C.

uvicorn stops accepting on the first SIGTERM/SIGINT, lets the requests in flight finish (at
most ``GRACEFUL_S`` seconds), runs the app's shutdown (the batcher predicts what it holds)
and returns. It then re-raises the signal so that the process dies of it; a server asked to
stop has done what it was asked, so :func:`run` returns instead (exit code 0).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from faceattr.errors import UsageError

GRACEFUL_S = 30  # the longest wait for the requests in flight when asked to stop
TOKEN_ENV = "FACEATTR_TOKEN"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | os.PathLike[str] | None) -> str | None:
    """The bearer token: ``token_file``'s content (stripped), else ``$FACEATTR_TOKEN``, else
    None (no token asked for)."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"Cannot read the token file {path}: {exc}.",
                "Give `token_file=` a readable text file holding the token.",
            ) from None
        if not token:
            raise UsageError(f"The token file {path} is empty.",
                             "Write the token (one line) into it.")  # fmt: skip
        return token
    return os.environ.get(TOKEN_ENV) or None


def run(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; returns once the requests in flight are
    answered (or ``GRACEFUL_S`` has passed)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()  # stopped as asked: return, do not die of the signal

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, workers=1,
                            timeout_graceful_shutdown=GRACEFUL_S, server_header=False,
                            lifespan="on")  # fmt: skip
    server = Server(config)
    server.run()
    if not server.started:
        raise UsageError(f"The server could not start on {host}:{port}.",
                         "Is the port in use? Choose another with `port=`.")  # fmt: skip
