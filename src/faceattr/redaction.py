"""Secrets kept out of everything faceattr shows or writes: :func:`redact`.

Every text that can hold a URL a user passed (an index's ``db``, a study's ``storage``, a
command line) goes through :func:`redact` before it reaches a message, a ``--json`` result,
an HTML page, a lock file or a progress log. It hides:

- the password of any URL, whatever its scheme (``postgresql://USER:***@HOST/DB``), also when
  the password holds characters a URL should have escaped (``@``, ``/``, ``?``, spaces): to
  be safe it hides everything up to the last ``@`` on the line;
- the value of any parameter whose name says it is a secret (``password=``, ``sslpassword=``,
  ``token=``, ``secret=``, ``api_key=`` ...), in a query string or a ``key=value`` string;
- given the URLs a text is about (``redact(message, url)``), each of their secrets wherever
  it appears, as a library's error message may quote one.

It never raises: whatever the text, something safe to show comes back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

HIDDEN = "***"

# scheme://USER: -- a password follows, up to the last "@" of the line (a password with an
# unescaped "@", "/", "?" or space is still hidden; more hidden than needed is safe). The
# bounded repeats keep the search linear in the text, whatever the text.
_USER = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^:/@\n]{0,1024}:")
# name=value: in a query string (?password=...&), or a libpq-style "password=... host=...".
_PARAM = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_%])(?P<name>(?:[A-Za-z0-9_\-]|%[0-9A-Fa-f]{2}){1,64})\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s&;#'\"]*)"
)
_SECRET_WORDS = ("password", "passwd", "secret", "token", "apikey", "api_key", "credential")
_SECRET_NAMES = {"pwd", "pass"}


def _passwords(text: str) -> Iterator[tuple[int, int]]:
    """Where the URL passwords of ``text`` are: ``(start, end)`` of each."""
    pos = 0
    while m := _USER.search(text, pos):
        line_end = text.find("\n", m.end())
        line_end = len(text) if line_end < 0 else line_end
        at = text.rfind("@", m.end(), line_end)
        if at >= 0:
            yield m.end(), at
        pos = at if at >= 0 else line_end  # no "@" left: no password on the rest of the line


def _is_secret_name(name: str) -> bool:
    name = unquote(name).lower().replace("-", "_")
    return name in _SECRET_NAMES or any(word in name for word in _SECRET_WORDS)


def _hide_param(m: re.Match[str]) -> str:
    if not _is_secret_name(m.group("name")) or not m.group("value"):
        return m.group(0)
    return m.group("head") + HIDDEN


def _secrets_of(url: str) -> list[str]:
    """The secrets a URL holds (raw and %-decoded): what a message about it must not show."""
    found: list[str] = []
    found += [url[start:end] for start, end in _passwords(url)]
    for m in _PARAM.finditer(url):
        if _is_secret_name(m.group("name")) and m.group("value"):
            found.append(m.group("value").strip("'\""))
    found += [unquote(s) for s in found]
    # A password with an unescaped "@" or ":" is cut there by the libraries, which may then
    # quote a piece of it (as a host name): each piece is a secret too.
    return found + [piece for s in found for piece in re.split(r"[@:]", s)]


def _hide_known(text: str, secret: str) -> str:
    if len(secret) >= 4:  # shorter ones only where a library quotes them ("ab")
        return text.replace(secret, HIDDEN)
    for quote in "\"'":
        text = text.replace(f"{quote}{secret}{quote}", f"{quote}{HIDDEN}{quote}")
    return text


def redact(text: object, *about: object) -> str:
    """``text`` (any object, as ``str``) with every URL's password and every secret parameter
    hidden; ``about``: URLs the text is about, whose secrets are hidden wherever they appear
    (a library's error message quoting a piece of one). Never raises."""
    try:
        out = str(text)
        for url in about:
            for secret in sorted(set(_secrets_of(str(url))), key=len, reverse=True):
                if secret:
                    out = _hide_known(out, secret)
        parts, pos = [], 0
        for start, end in list(_passwords(out)):
            parts += [out[pos:start], HIDDEN]
            pos = end
        out = "".join(parts) + out[pos:]
        return _PARAM.sub(_hide_param, out)
    except Exception:  # noqa: BLE001 - never the reason a message cannot be shown
        return re.sub(r"(?<=://)\S*|=\S*", HIDDEN, str(text)) if isinstance(text, str) else HIDDEN
