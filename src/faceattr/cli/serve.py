"""`faceattr serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from faceattr.cli.common import err, handle_errors, literal
from faceattr.cli.options import DetectorOption, WorkersOption
from faceattr.config import (
    NUMBER_LIMITS,
    SERVE_MAX_BATCH,
    SERVE_MAX_BODY_MB,
    SERVE_MAX_QUEUE,
    SERVE_MAX_WAIT_MS,
    check_number,
)


@handle_errors
def serve_command(
    model: Annotated[
        str,
        typer.Option(help="A run directory, a .safetensors or .onnx model file, or 'default'."),
    ] = "default",
    host: Annotated[
        str, typer.Option(help="The address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on (0: any free port).")] = 8000,
    db: Annotated[
        str | None,
        typer.Option(
            help="An index to search from the service and its page (an SQLite file or a "
            "postgresql:// URL made by `faceattr index` with the same model).",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            help="Server processes on the one port, each with its own model and a share of "
            "the cores (--workers threads each).",
        ),
    ] = 1,
    workers: WorkersOption = None,
    max_batch: Annotated[
        int, typer.Option(help="Faces per model call, gathered across requests.")
    ] = SERVE_MAX_BATCH,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long a model call waits for more faces to join it (ms).")
    ] = SERVE_MAX_WAIT_MS,
    max_queue: Annotated[
        int,
        typer.Option(help="Predict requests in progress at once; more get 503 and Retry-After."),
    ] = SERVE_MAX_QUEUE,
    max_body_mb: Annotated[
        float, typer.Option(help="The largest request body in MB (10^6 bytes); larger get 413.")
    ] = SERVE_MAX_BODY_MB,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            help="Refuse images larger than this many pixels (default: Pillow's "
            "decompression-bomb limit, about 89 million)."
        ),
    ] = None,
    detector: DetectorOption = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="A file holding the bearer token every request must send "
            "(default: $FACEATTR_TOKEN; neither: no token)."
        ),
    ] = None,
) -> None:
    """Serve predictions over HTTP: POST images to /v1/predict, get `predict --json` back.

    One model call takes the faces of all requests in progress (up to --max-batch faces, or
    --max-wait-ms), so concurrent clients share the throughput of a batch job. Ctrl-C or
    SIGTERM: stop accepting, finish the requests in flight, exit 0. With --db, search the
    index too. The page at http://127.0.0.1:8000/ takes photos and queries. Needs the serve
    extra: pip install "faceattr\\[serve]". See docs/serve.md.

    \b
    Examples:
      faceattr serve
      curl -F image=@photo.jpg localhost:8000/v1/predict
      faceattr serve --db library.db --nproc 2
      curl 'localhost:8000/v1/search?q=Smiling+and+Eyeglasses'
      FACEATTR_TOKEN=secret faceattr serve --host 0.0.0.0 --port 8080
    """
    from faceattr.serve import require_serve

    require_serve()
    from faceattr.inference.predictor import Predictor
    from faceattr.serve.app import create_app
    from faceattr.serve.server import TOKEN_ENV, is_loopback, read_token, run, run_processes

    token = read_token(token_file)
    if not is_loopback(host) and token is None:
        err.print(
            f"[yellow]Warning:[/] listening on {literal(host)} without a token: anyone who "
            f"can reach this port can use the server. Set {TOKEN_ENV} or --token-file.",
            highlight=False,
        )
    check_number("nproc", nproc, NUMBER_LIMITS["nproc"])
    check_number("port", port, NUMBER_LIMITS["port"])
    settings: dict[str, Any] = {
        "detector": detector, "workers": workers, "max_batch": max_batch,
        "max_wait_ms": max_wait_ms, "max_queue": max_queue, "max_body_mb": max_body_mb,
        "max_pixels": max_pixels, "token": token, "db": db,
    }  # fmt: skip
    # Loaded before listening: a bad MODEL or --db is an error now, not a server that never
    # gets ready.
    predictor = Predictor(model, batch_size=max_batch)
    if db is not None:
        from faceattr.serve.index import check_index

        check_index(db, predictor)
    if nproc > 1:
        del predictor  # each process loads its own
        run_processes({"model": model, **settings}, nproc=nproc, host=host, port=port)
    else:
        run(create_app(predictor, **settings), host=host, port=port)
