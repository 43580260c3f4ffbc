"""The web page of `faceattr serve` (GET /). Plain HTTP: it is self-contained HTML under a
Content-Security-Policy that allows only itself, open without the token while the data routes
ask for it. Headless Chromium (driven by Playwright, with the system's Chromium): a photo
uploaded through the file input is boxed and its faces listed, the threshold slider changes
what is marked present, the token field appears on a 401, names from the server stay text;
with --db, a query shows thumbnails, a bad query its column, a click the photo with the face
boxed, and "more like this" the faces like it. Every wait is on the DOM or on the server,
never a sleep; screenshots go to tmp_path."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import faceattr  # noqa: E402
from conftest import chromium_or_skip, missing_tool  # noqa: E402
from test_serve import DEADLINE_S, Server  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TWO = EXAMPLES / "two-portraits.jpg"
TOKEN = "page-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE_MS = DEADLINE_S * 1000


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("page-token")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    srv = Server(tmp, "--token-file", str(token_file), "--workers", "2")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def index_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("page-index")
    db = tmp / "x.db"
    summary = faceattr.index(EXAMPLES, db=db)
    assert summary["faces_in_index"] >= 3, summary
    srv = Server(tmp, "--db", str(db), "--workers", "2")
    yield srv
    srv.stop()


# ----------------------------------------------------------------------------- plain HTTP


def test_page_is_self_contained_html_with_a_csp(token_server: Server) -> None:
    r = httpx.get(token_server.url + "/", timeout=DEADLINE_S)  # no token: the page is open
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["img-src"] == "'self' blob: data:"
    nonce = re.fullmatch(r"'nonce-([A-Za-z0-9_-]{16,})'", directives["script-src"]).group(1)
    assert directives["style-src"] == f"'nonce-{nonce}'"
    html = r.text
    # every inline script and style carries this answer's nonce; nothing is loaded from a URL
    assert html.count("<script") == html.count(f'<script nonce="{nonce}">') == 1
    assert html.count("<style") == html.count(f'<style nonce="{nonce}">') == 1
    assert not re.search(r"https?://", html), "the page names an outside URL"
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=", html)
    assert not re.search(r"<link[^>]*stylesheet", html)
    assert "{{NONCE}}" not in html
    # names from the server are set as text: nothing in the script parses HTML
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in html, sink
    # a fresh nonce per answer
    again = httpx.get(token_server.url + "/", timeout=DEADLINE_S)
    assert again.headers["content-security-policy"] != csp


def test_page_is_open_but_the_data_routes_need_the_token(token_server: Server) -> None:
    assert httpx.get(token_server.url + "/", timeout=DEADLINE_S).status_code == 200
    photo = {"image": (TWO.name, TWO.read_bytes(), "image/jpeg")}
    r = httpx.post(token_server.url + "/v1/predict", files=photo, timeout=DEADLINE_S)
    assert r.status_code == 401 and "token" in r.json()["error"]["message"]
    assert httpx.get(token_server.url + "/v1/model", timeout=DEADLINE_S).status_code == 401
    r = httpx.post(token_server.url + "/v1/predict", files=photo, headers=AUTH,
                   timeout=DEADLINE_S)  # fmt: skip
    assert r.status_code == 200


def test_the_page_ships_in_the_package() -> None:
    from faceattr.serve.page import page_template

    assert "<script nonce=" in page_template()
    import tomllib

    pyproject = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    assert "serve/page.html" in pyproject["tool"]["setuptools"]["package-data"]["faceattr"]


# ----------------------------------------------------------------------------- Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    binary = chromium_or_skip()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_tool("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        # the system's Chromium, never a downloaded one (`playwright install` is not needed)
        chromium = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Page:
    """A browser tab on the page, recording the console's errors (a CSP violation is one)."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(DEADLINE_MS)
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url + "/")

    def _console(self, message) -> None:
        # The browser logs each error answer (the tests provoke 400, 401, 422 on purpose);
        # anything else (a script error, a CSP violation: "Refused to ...") is a failure.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def expect(self, target):
        from playwright.sync_api import expect

        return expect(self.page.locator(target) if isinstance(target, str) else target)

    def present(self) -> list[set[str]]:
        """The attributes marked present, per face listed."""
        names = self.page.eval_on_selector_all(
            ".face",
            "faces => faces.map(f => Array.from(f.querySelectorAll('tr.present'),"
            " tr => tr.querySelector('td.name').textContent))",
        )
        return [set(n) for n in names]

    def close(self) -> None:
        self.page.close()


def _near(a: float, b: float, tol: float = 2.0) -> bool:
    return abs(a - b) <= tol


def test_upload_shows_faces_and_the_slider_changes_what_is_present(
    browser, token_server: Server, tmp_path: Path
) -> None:
    photo = {"image": (TWO.name, TWO.read_bytes(), "image/jpeg")}
    r = httpx.post(token_server.url + "/v1/predict", headers=AUTH, files=photo, timeout=DEADLINE_S)
    want = r.json()[0]
    assert len(want["faces"]) == 2
    tab = Page(browser, token_server.url)
    page = tab.page
    try:
        # the server has a token: the page asks for it (the /v1/model request got 401)
        tab.expect("#token-panel").to_be_visible()
        tab.expect("#token-why").to_contain_text("token")
        page.screenshot(path=str(tmp_path / "token.png"))
        page.get_by_label("Server token").fill(TOKEN)
        page.get_by_role("button", name="Use this token").click()
        tab.expect("#model-line").to_contain_text("40 attributes")
        tab.expect("#token-panel").to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('faceattr-token')") == TOKEN
        tab.expect("#search").to_be_hidden()  # no --db: no search box

        page.set_input_files("#files", str(TWO))
        tab.expect(".face").to_have_count(2)
        tab.expect(".photo .card-status").to_have_text("2 faces.")
        tab.expect(page.locator(".face").nth(0).locator("tr.attr")).to_have_count(40)
        page.screenshot(path=str(tmp_path / "photos.png"), full_page=True)

        # the model's thresholds: exactly each face's `attributes`
        model_sets = [set(f["attributes"]) for f in want["faces"]]
        assert tab.present() == model_sets
        # probabilities listed in order, as the server gave them
        first = page.locator(".face").nth(0).locator("td.num").all_text_contents()
        probs = sorted(want["faces"][0]["probabilities"].values(), reverse=True)
        assert first == [f"{p:.3f}" for p in probs]

        # the boxes: where the server put the faces, scaled to the displayed picture
        img = page.locator(".photo .stage img").bounding_box()
        scale = img["width"] / want["width"]
        boxes = page.locator(".photo .stage .box")
        assert boxes.count() == 2
        for i, face in enumerate(want["faces"]):
            got = boxes.nth(i).bounding_box()
            x, y, w, h = face["box"]
            assert _near(got["x"], img["x"] + x * scale), (got, face["box"])
            assert _near(got["y"], img["y"] + y * scale), (got, face["box"])
            assert _near(got["width"], w * scale) and _near(got["height"], h * scale)

        # the slider, by keyboard: Home is 0, every attribute present; no new request
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        slider = page.get_by_label("Threshold", exact=True)
        slider.focus()
        page.keyboard.press("Home")
        tab.expect("#threshold-value").to_have_text("probability ≥ 0.00")
        assert tab.present() == [set(f["probabilities"]) for f in want["faces"]]
        assert tab.present() != model_sets
        slider.fill("0.5")
        tab.expect("#threshold-value").to_have_text("probability ≥ 0.50")
        half = [{n for n, p in f["probabilities"].items() if p >= 0.5} for f in want["faces"]]
        assert tab.present() == half
        assert page.locator("tr.present td.flag").first.text_content() == "✓ yes"  # not colour
        page.screenshot(path=str(tmp_path / "slider.png"), full_page=True)
        page.get_by_role("button", name="Use the model's thresholds").click()
        tab.expect("#threshold-value").to_have_text("model thresholds")
        assert tab.present() == model_sets
        assert requests == []
        assert tab.errors == [], tab.errors
    finally:
        tab.close()


def test_names_and_errors_from_the_server_are_text(browser, token_server: Server) -> None:
    tab = Page(browser, token_server.url)
    page = tab.page
    try:
        page.evaluate(f"sessionStorage.setItem('faceattr-token', {TOKEN!r})")
        page.reload()
        tab.expect("#model-line").to_contain_text("40 attributes")
        name = '<img src=x onerror="document.title=1"><b>notes</b>.jpg'
        page.set_input_files("#files", files=[
            {"name": name, "mimeType": "image/jpeg", "buffer": b"not an image at all"},
        ])  # fmt: skip
        card = page.locator(".photo")
        tab.expect(".photo .error").to_contain_text("not an image file")
        assert card.locator("h3").text_content() == name
        assert card.locator("b, img[src=x]").count() == 0
        assert page.title() == "faceattr"

        # a photo dropped on the page (a drop event carrying the file) is predicted too
        data = base64.b64encode(TWO.read_bytes()).decode()
        dropped = page.evaluate_handle(
            """([name, data]) => {
                const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
                return transfer;
            }""",
            [TWO.name, data],
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
        tab.expect(".photo").to_have_count(2)
        tab.expect(page.locator(".photo").first.locator(".face")).to_have_count(2)
        assert page.locator(".photo h3").first.text_content() == TWO.name
        assert tab.errors == [], tab.errors
    finally:
        tab.close()


def test_search_thumbnails_query_errors_photo_and_more_like_this(
    browser, index_server: Server, tmp_path: Path
) -> None:
    url = index_server.url
    found = httpx.get(url + "/v1/search", params={"q": "Smiling", "limit": 48},
                      timeout=DEADLINE_S).json()["results"]  # fmt: skip
    assert found, "the examples have smiling faces"
    tab = Page(browser, url)
    page = tab.page
    try:
        tab.expect("#search").to_be_visible()
        tab.expect("#index-line").to_contain_text("2 images")
        query = page.get_by_label("Query")
        query.fill("Smiling")
        query.press("Enter")
        tab.expect(".result").to_have_count(len(found))
        tab.expect(".result img.thumb").to_have_count(len(found))  # every thumbnail arrived
        assert page.locator(".result .score").all_text_contents() == [
            f"match {m['match']:.3f}" for m in found
        ]
        names = page.locator(".result .name").all_text_contents()
        assert names == [f"{Path(m['image']).name} · face {m['face']}" for m in found]
        sizes = page.eval_on_selector_all(
            ".result img.thumb", "ims => ims.map(i => i.naturalWidth)"
        )
        assert all(s > 0 for s in sizes)
        page.screenshot(path=str(tmp_path / "search.png"), full_page=True)

        # a click on a result: its photo, the face boxed where the index says
        first = found[0]
        page.locator(".result").first.click()
        tab.expect("#viewer").to_be_visible()
        tab.expect("#viewer-stage img").to_be_visible()
        tab.expect("#viewer-stage .box").to_have_count(1)
        natural = page.eval_on_selector("#viewer-stage img", "i => i.naturalWidth")
        img = page.locator("#viewer-stage img").bounding_box()
        box = page.locator("#viewer-stage .box").bounding_box()
        scale = img["width"] / natural
        x, y, w, h = first["box"]
        assert _near(box["x"], img["x"] + x * scale) and _near(box["y"], img["y"] + y * scale)
        assert _near(box["width"], w * scale) and _near(box["height"], h * scale)
        tab.expect("#viewer-title").to_have_text(
            f"{Path(first['image']).name} · face {first['face']}"
        )
        page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)

        # more like this: the faces like that one, itself left out
        like = httpx.post(url + "/v1/search/like", params={"face": first["id"], "limit": 48},
                          timeout=DEADLINE_S).json()["results"]  # fmt: skip
        assert like
        page.get_by_role("button", name="More like this").click()
        tab.expect("#search-status").to_contain_text("like")
        want = [m["id"] for m in like]
        # The grid is replaced in place: wait for its faces to be these (the search's grid
        # may have as many results).
        page.wait_for_function(
            "want => [...document.querySelectorAll('.result')]"
            ".map(b => Number(b.dataset.face)).join() === want",
            arg=",".join(map(str, want)),
            timeout=DEADLINE_MS,
        )
        ids = page.eval_on_selector_all(".result", "bs => bs.map(b => Number(b.dataset.face))")
        assert ids == want and first["id"] not in ids
        tab.expect(".result img.thumb").to_have_count(len(like))

        # a bad query: the server's message, the query marked at its column (inside the
        # query, and just past its end)
        for bad in ("Smiling and Smilng or Male", "Smiling and (Male or"):
            column = httpx.get(url + "/v1/search", params={"q": bad},
                               timeout=DEADLINE_S).json()["column"]  # fmt: skip
            query.fill(bad)
            query.press("Enter")
            tab.expect("#query-error").to_be_visible()
            tab.expect("#query-error .message").to_contain_text(f"column {column}")
            echo = page.locator("#query-error .query-echo")
            parts = echo.evaluate("e => Array.from(e.childNodes, n => n.textContent)")
            assert "".join(parts[:-2]) == bad[: column - 1], (parts, column)
            assert echo.locator("mark").text_content() == (bad[column - 1 : column] or " ")
            assert query.get_attribute("aria-invalid") == "true"
            page.screenshot(path=str(tmp_path / f"query-error-{column}.png"), full_page=True)
        query.fill("Smiling")
        query.press("Enter")
        tab.expect("#query-error").to_be_hidden()
        assert query.get_attribute("aria-invalid") is None
        assert tab.errors == [], tab.errors
    finally:
        tab.close()
