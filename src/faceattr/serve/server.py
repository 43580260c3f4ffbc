"""Running the app with uvicorn: graceful stop on SIGTERM or Ctrl-C, in one process or N.

uvicorn stops accepting on the first SIGTERM/SIGINT, lets the requests in flight finish (at
most ``GRACEFUL_S`` seconds), runs the app's shutdown (the batcher predicts what it holds)
and returns. It then re-raises the signal so that the process dies of it; a server asked to
stop has done what it was asked, so :func:`run` returns instead (exit code 0).

:func:`run_processes` (``--nproc N``) binds the port once and starts N processes that accept
on it, each with its own model, batcher and share of the cores; on SIGTERM or Ctrl-C it asks
each to stop as above and waits for them. A process that dies is started again.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from faceattr.errors import UsageError

GRACEFUL_S = 30  # the longest wait for the requests in flight when asked to stop
TOKEN_ENV = "FACEATTR_TOKEN"
MAX_RESTARTS = 10  # processes started again after dying, before the server gives up
STARTUP_FAILED = 3  # a process's exit code when its server could not start

logger = logging.getLogger("faceattr.serve")


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


def _server(app: Any, log_level: str, host: str = "127.0.0.1", port: int = 8000) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()  # stopped as asked: return, do not die of the signal

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, workers=1,
                            server_header=False,
                            timeout_graceful_shutdown=GRACEFUL_S, lifespan="on")  # fmt: skip
    return Server(config)


def run(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; returns once the requests in flight are
    answered (or ``GRACEFUL_S`` has passed)."""
    server = _server(app, log_level, host, port)
    server.run()
    if not server.started:
        raise UsageError(f"The server could not start on {host}:{port}.",
                         "Is the port in use? Choose another with `port=`.")  # fmt: skip


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.",
                         "Is the port in use? Choose another with `port=`.") from None  # fmt: skip
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _process(settings: dict[str, Any], threads: int, sock: socket.socket, log_level: str) -> None:
    """One of :func:`run_processes`' processes: its own model and app, accepting on ``sock``."""
    from faceattr.inference.predictor import Predictor
    from faceattr.serve.app import create_app

    settings = dict(settings)
    predictor = Predictor(settings.pop("model"), threads=threads,
                          batch_size=settings["max_batch"])  # fmt: skip
    server = _server(create_app(predictor, **settings), log_level)
    server.run(sockets=[sock])
    sys.exit(0 if server.started else STARTUP_FAILED)


def run_processes(
    settings: dict[str, Any], *, nproc: int, host: str = "127.0.0.1", port: int = 8000,
    log_level: str = "info",
) -> None:  # fmt: skip
    """Serve ``create_app(**settings)`` (``settings["model"]`` a MODEL, not a loaded
    Predictor) from ``nproc`` processes on one port until SIGTERM or Ctrl-C."""
    sock = _bind(host, port)
    threads = max(1, (os.cpu_count() or 1) // nproc)
    context = multiprocessing.get_context("spawn")  # no copy of this process's threads

    def start() -> Any:
        process = context.Process(target=_process, args=(settings, threads, sock, log_level),
                                  name="faceattr-serve", daemon=False)  # fmt: skip
        process.start()
        return process

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    processes, restarts, failed = [], 0, False
    try:
        processes = [start() for _ in range(nproc)]
        logger.info("faceattr serve: %d processes on %s:%d", nproc, host,
                    sock.getsockname()[1])  # fmt: skip
        while not stop.is_set():
            wait([p.sentinel for p in processes], timeout=1.0)
            for i, process in enumerate(processes):
                if process.exitcode is None or stop.is_set():
                    continue
                if process.exitcode == STARTUP_FAILED or restarts >= MAX_RESTARTS:
                    failed = True
                    stop.set()
                    break
                restarts += 1
                logger.warning("A server process died (exit code %s); starting another.",
                               process.exitcode)  # fmt: skip
                processes[i] = start()
    finally:
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(GRACEFUL_S + 15)
            if process.exitcode is None:
                process.kill()
                process.join()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise UsageError("The server processes could not start or kept dying.",
                         "Their messages are above. Try `faceattr serve --nproc 1`.")  # fmt: skip
