"""The web page of ``faceattr serve`` (``GET /``): one self-contained file, ``page.html``
(inline CSS and JavaScript, no external resource), sent with a Content-Security-Policy that
lets it load nothing but itself: its inline script and style carry a fresh nonce per answer,
pictures and videos come from ``blob:`` URLs (fetched with the token), requests go to the
same origin.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from importlib import resources

from starlette.responses import HTMLResponse

NONCE_MARK = "{{NONCE}}"


@lru_cache(maxsize=1)
def page_template() -> str:
    """page.html as shipped in the package (package data)."""
    return resources.files("faceattr.serve").joinpath("page.html").read_text(encoding="utf-8")


def content_security_policy(nonce: str) -> str:
    return "; ".join([
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'",
        f"style-src 'nonce-{nonce}'",
        "img-src 'self' blob: data:",
        "media-src blob:",  # a video of the index, fetched with the token
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])  # fmt: skip


def page_response() -> HTMLResponse:
    """The page with a fresh nonce in its ``<script>`` and ``<style>`` tags and in the CSP."""
    nonce = secrets.token_urlsafe(18)
    html = page_template().replace(NONCE_MARK, nonce)
    headers = {
        "Content-Security-Policy": content_security_policy(nonce),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",  # the nonce is per answer
    }
    return HTMLResponse(html, headers=headers)
