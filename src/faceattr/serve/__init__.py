"""``faceattr serve``: the HTTP service (the ``serve`` extra: Starlette, uvicorn,
python-multipart, prometheus-client). :func:`create_app` returns its ASGI app.

Importing this package is cheap and needs no extra; :func:`create_app` says which pip
command brings what is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

SERVE_MODULES = ("starlette", "uvicorn", "python_multipart", "prometheus_client")


def require_serve(what: str = "faceattr serve") -> None:
    """MissingExtraError naming ``pip install "faceattr[serve]"`` unless the extra is here."""
    from faceattr.extras import require

    require(*SERVE_MODULES, what=what)


def create_app(*args: Any, **kwargs: Any) -> Starlette:
    """The ASGI app; see :func:`faceattr.serve.app.create_app` for the arguments."""
    require_serve("faceattr.serve.create_app")
    from faceattr.serve.app import create_app as create

    return create(*args, **kwargs)


__all__ = ["create_app", "require_serve"]
