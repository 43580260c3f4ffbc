"""CelebA over HTTP: the official Google Drive files, a Hugging Face mirror, any ``--mirror``.

Every source downloads the files it is asked for to ``<name>.part`` (resumable) and hands
them to the :class:`~faceattr.data.fetch.run.FetchRun`, which verifies and places them.
Google Drive answers large files with confirmation pages, which :class:`DriveSource`
follows the way a browser would.
"""

from __future__ import annotations

import contextlib
import urllib.request
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

from faceattr.data.download import (
    HtmlPageError,
    HttpStatusError,
    TransferError,
    download_to_part,
    make_opener,
)
from faceattr.data.fetch.imagedir import extract_images
from faceattr.data.fetch.release import (
    ATTR_FILE,
    DRIVE_URL_ENV,
    FILES_BY_NAME,
    HF_URL_ENV,
    IMAGE_ZIP,
    PARTITION_FILE,
    CelebaFile,
)
from faceattr.data.fetch.run import FetchRun, SourceError

MAX_DRIVE_HOPS = 4  # confirmation pages followed per file before giving up


class HttpSource:
    """A base URL serving the official file names (Hugging Face mirror or ``--mirror``)."""

    titles = {"hf": "the Hugging Face mirror", "mirror": "the mirror", "drive": "Google Drive"}

    def __init__(self, kind: str, base: str, *, strict: bool = False) -> None:
        self.kind = kind
        self.location = base or "(not configured)"
        self.base = base
        self.strict = strict  # demand the complete release (counts of the official partition)
        self.opener: urllib.request.OpenerDirector
        self.jar: CookieJar
        self.opener, self.jar = make_opener()

    @property
    def title(self) -> str:
        return self.titles.get(self.kind, self.kind)

    def url(self, f: CelebaFile) -> str:
        return self.base.rstrip("/") + "/" + quote(f.name)

    def download(self, f: CelebaFile, part: Path, run: FetchRun) -> str:
        return download_to_part(
            self.url(f), part, opener=self.opener, timeout=run.timeout, progress=run.progress
        )

    def fetch(self, run: FetchRun, needed: list[str]) -> None:
        """Download, verify and place each file of ``needed`` (an optional one the server
        lacks is skipped); a :class:`SourceError` when one cannot be had."""
        if not self.base:
            raise SourceError(
                f"no Hugging Face mirror is configured (set {HF_URL_ENV} to a base URL serving "
                "the official file names)"
            )
        for name in needed:
            f = FILES_BY_NAME[name]
            part = run.root / f"{name}.part"
            url = self.url(f)
            try:
                md5 = self.download(f, part, run)
            except HttpStatusError as exc:
                if exc.status in (404, 410) and not f.required:
                    run.skip_optional(
                        name, self.location, f"not found on {self.title} (HTTP {exc.status})"
                    )
                    continue
                raise SourceError(f"{name}: {exc}") from None
            except HtmlPageError as exc:
                raise SourceError(
                    f"{name}: {exc.url} answered with a web page ({exc.title!r}) instead of the "
                    "file; nothing was saved"
                ) from None
            except TransferError as exc:
                kept = (
                    " (the partial download is kept: run again to resume)" if part.exists() else ""
                )
                raise SourceError(f"{name}: {exc}{kept}") from None
            run.install(name, part, md5, origin=url)
            run.fetched[name] = url
            if name in (ATTR_FILE, PARTITION_FILE):
                run.check_annotation(name, strict=self.strict)
            if name == IMAGE_ZIP:
                extract_images(run, run.root / IMAGE_ZIP, origin=url, strict=self.strict)
                if not run.keep_archive:
                    run.forget_file(IMAGE_ZIP, delete=True)


class DriveSource(HttpSource):
    """The official Google Drive files, through Drive's large-file confirmation pages."""

    def __init__(self, base: str) -> None:
        # Not strict: the official md5s already pin the complete release's content.
        super().__init__("drive", base)

    def url(self, f: CelebaFile) -> str:
        return f"{self.base}?{urlencode({'id': f.drive_id, 'export': 'download'})}"

    def fetch(self, run: FetchRun, needed: list[str]) -> None:
        if not self.base:
            raise SourceError(f"no Google Drive URL (set {DRIVE_URL_ENV})")
        super().fetch(run, needed)

    def download(self, f: CelebaFile, part: Path, run: FetchRun) -> str:
        url = self.url(f)
        for _ in range(MAX_DRIVE_HOPS):
            try:
                return download_to_part(
                    url, part, opener=self.opener, timeout=run.timeout, progress=run.progress,
                    task=f.name,
                )  # fmt: skip
            except HtmlPageError as page:
                url = self._next_url(page, f)
        raise SourceError(f"{f.name}: Google Drive kept answering with confirmation pages")

    def _next_url(self, page: HtmlPageError, f: CelebaFile) -> str:
        """The URL a browser would follow from a Drive page, or a :class:`SourceError`."""
        text = page.text
        if (
            "too many users have viewed or downloaded this file recently" in text.lower()
            or "quota exceeded" in page.title.lower()
        ):
            raise SourceError(
                f'{f.name}: Google Drive refused the download: quota exceeded ("Too many users '
                'have viewed or downloaded this file recently"); this usually clears within '
                "24 hours. Nothing was saved"
            )
        parser = _PageParser()
        with contextlib.suppress(Exception):  # a broken page only means "no link found"
            parser.feed(text)
            parser.close()
        # Newer page (drive.usercontent.google.com): a GET form with id, export, confirm, uuid.
        for form in parser.forms:
            fields = form["fields"]
            if "confirm" in fields or form["id"] == "download-form":
                action = urljoin(page.url, form["action"] or page.url)
                return _with_query(action, fields)
        # Older page: a link carrying confirm=<token> ...
        for href in parser.links:
            if "confirm=" in href:
                return urljoin(page.url, href)
        # ... or only a download_warning cookie holding the token.
        for cookie in self.jar:
            if cookie.name.startswith("download_warning") and cookie.value:
                return _with_query(page.url, {"confirm": cookie.value})
        raise SourceError(
            f"{f.name}: Google Drive answered with a web page ({page.title!r}) instead of the "
            "file and no download link was on it (the file may be private, moved, or need a "
            "sign-in). Nothing was saved"
        )


def _with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` set in its query string (replacing the same keys)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


class _PageParser(HTMLParser):
    """Collects forms (action, id, named inputs) and link targets from an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "id": a.get("id", ""), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
