"""`faceattr serve`: a real server (uvicorn, in a subprocess, on a free 127.0.0.1 port) and a
real HTTP client. Answers equal faceattr.predict's (the JSON of `predict --json`); concurrent
requests equal sequential ones; every error has its status; SIGTERM finishes a request in
flight and exits 0. Every wait is for something the server says (readiness, a metric, a log
line), never a sleep."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import faceattr  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PHOTOS = sorted(EXAMPLES.glob("*.jpg"))
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE_S = 120  # how long a wait may last before the test fails (a hang, not a measure)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "faceattr", "serve", "--port", str(self.port), *args]
        self.log_fh = open(self.log, "w")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(cmd, stdout=self.log_fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})  # fmt: skip
        self.wait_for(self.ready, "the server to answer /readyz")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited: {self.log.read_text()}")
        try:
            return httpx.get(self.url + "/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def wait_for(self, condition, what: str) -> None:
        end = time.monotonic() + DEADLINE_S
        while not condition():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log_fh.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    srv = Server(
        tmp,
        "--token-file",
        str(token_file),
        "--max-body-mb",
        "0.5",
        "--workers",
        "2",
        "--max-pixels",
        "500000",
    )  # the examples have at most 427,200
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def expected() -> dict[str, list[dict]]:
    """faceattr.predict's answers (the JSON of `predict --json`), by query."""
    return {
        "": faceattr.predict(PHOTOS),
        "detect=false": faceattr.predict(PHOTOS, no_detect=True),
        "tta=flip&threshold=0.3": faceattr.predict(PHOTOS, tta="flip", threshold=0.3),
        "max_faces=1": faceattr.predict(PHOTOS, max_faces=1),
    }


def assert_same(got: list[dict], want: list[dict], names: list[str]) -> None:
    assert [g["image"] for g in got] == names
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        assert (g["width"], g["height"], g["error"]) == (w["width"], w["height"], w["error"])
        assert len(g["faces"]) == len(w["faces"])
        for gf, wf in zip(g["faces"], w["faces"], strict=True):
            assert set(gf) == set(wf)
            assert gf["box"] == wf["box"] and gf["thresholds"] == wf["thresholds"]
            assert gf["threshold_sources"] == wf["threshold_sources"]
            assert gf["probabilities"].keys() == wf["probabilities"].keys()
            for name, p in wf["probabilities"].items():
                assert gf["probabilities"][name] == pytest.approx(p, abs=1e-4), name


def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


@pytest.mark.parametrize("query", ["", "detect=false", "tta=flip&threshold=0.3", "max_faces=1"])
def test_predict_equals_the_library(server: Server, expected, query: str) -> None:
    r = httpx.post(f"{server.url}/v1/predict?{query}", files=files(PHOTOS), headers=AUTH,
                   timeout=DEADLINE_S)  # fmt: skip
    assert r.status_code == 200, r.text
    assert_same(r.json(), expected[query], [p.name for p in PHOTOS])


def test_raw_body_is_upload_1(server: Server, expected) -> None:
    photo = PHOTOS[0]
    r = httpx.post(f"{server.url}/v1/predict", content=photo.read_bytes(),
                   headers={**AUTH, "Content-Type": "image/jpeg"}, timeout=DEADLINE_S)  # fmt: skip
    assert r.status_code == 200, r.text
    assert_same(r.json(), expected[""][:1], ["upload-1"])


def test_concurrent_requests_equal_sequential_ones(server: Server) -> None:
    queries = ["", "detect=false", "tta=flip", "threshold=0.7"]
    jobs = [(queries[i % len(queries)], [PHOTOS[i % len(PHOTOS)]] * (1 + i % 3))
            for i in range(32)]  # fmt: skip

    async def post(client, query: str, paths: list[Path]) -> list[dict]:
        r = await client.post(f"/v1/predict?{query}", files=files(paths))
        assert r.status_code == 200, r.text
        return r.json()

    async def run_all(concurrent: bool) -> list[list[dict]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=DEADLINE_S,
                                     limits=limits) as client:  # fmt: skip
            if concurrent:
                return list(await asyncio.gather(*(post(client, q, p) for q, p in jobs)))
            return [await post(client, q, p) for q, p in jobs]

    sequential = asyncio.run(run_all(False))
    concurrent = asyncio.run(run_all(True))
    for (_, paths), got, want in zip(jobs, concurrent, sequential, strict=True):
        assert_same(got, want, [p.name for p in paths])


def test_one_bad_image_among_good_ones(server: Server, expected) -> None:
    upload = [*files(PHOTOS[:1]), ("image", ("notes.jpg", b"not an image", "image/jpeg"))]
    r = httpx.post(f"{server.url}/v1/predict", files=upload, headers=AUTH, timeout=DEADLINE_S)
    assert r.status_code == 200
    good, bad = r.json()
    assert_same([good], expected[""][:1], [PHOTOS[0].name])
    assert bad["image"] == "notes.jpg" and bad["faces"] == []
    assert "not an image file" in bad["error"]


@pytest.mark.parametrize(
    ("query", "body", "content_type", "status", "words"),
    [
        ("threshold=2", None, None, 400, "threshold"),
        ("threshold=abc", None, None, 400, "not a number"),
        ("detect=maybe", None, None, 400, "not a boolean"),
        ("tta=sideways", None, None, 400, "sideways"),
        ("max_faces=0", None, None, 400, "max_faces"),
        ("colour=red", None, None, 400, "Unknown query parameter"),
        ("", b"x" * 600_000, "image/jpeg", 413, "larger than the server's limit"),
        ("", b"hello", "text/plain", 415, "Content-Type"),
        ("", b"hello", None, 415, "Content-Type"),
        ("", b"not an image", "image/png", 422, "not an image file"),
    ],
)
def test_errors(server: Server, query, body, content_type, status, words) -> None:
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    if body is None:
        r = httpx.post(f"{server.url}/v1/predict?{query}", files=files(PHOTOS[:1]),
                       headers=headers, timeout=DEADLINE_S)  # fmt: skip
    else:
        r = httpx.post(f"{server.url}/v1/predict?{query}", content=body, headers=headers,
                       timeout=DEADLINE_S)  # fmt: skip
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"]
    assert set(error) == {"message", "hint"}


def test_image_over_max_pixels_is_422(server: Server) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (800, 800), (128, 128, 128)).save(buf, "PNG")
    r = httpx.post(f"{server.url}/v1/predict", files=[("image", ("big.png", buf.getvalue()))],
                   headers=AUTH, timeout=DEADLINE_S)  # fmt: skip
    assert r.status_code == 422
    assert "too large (800 x 800 = 640,000 pixels" in r.json()["error"]["message"]


def test_multipart_without_image_field(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/predict", data={"photo": "x"},
                   files={"other": ("a.jpg", b"x", "image/jpeg")}, headers=AUTH)  # fmt: skip
    assert r.status_code == 400 and "Unknown form field" in r.json()["error"]["message"]


def test_unknown_route_and_method(server: Server) -> None:
    r = httpx.get(f"{server.url}/v2/nothing", headers=AUTH)
    assert r.status_code == 404 and "No route" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1/predict", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["message"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_token(server: Server, headers: dict[str, str]) -> None:
    for method, path in (("POST", "/v1/predict"), ("GET", "/v1/model"), ("GET", "/metrics")):
        r = httpx.request(method, server.url + path, headers=headers, files=files(PHOTOS[:1])
                          if method == "POST" else None)  # fmt: skip
        assert r.status_code == 401, path
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in r.json()["error"]["message"]
    for path in ("/healthz", "/readyz", "/openapi.json"):  # open to probes and clients
        assert httpx.get(server.url + path, headers=headers).status_code == 200


def test_model_openapi_and_metrics(server: Server) -> None:
    model = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()
    assert len(model["attributes"]) == 40 and model["input_size"] > 0
    assert set(model["thresholds"]) == set(model["attributes"])
    assert len(model["sha256"]) == 64
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/predict" in doc["paths"]
    httpx.post(f"{server.url}/v1/predict", files=files(PHOTOS[:1]), headers=AUTH,
               timeout=DEADLINE_S)  # fmt: skip
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert 'faceattr_requests_total{route="/v1/predict",status="200"}' in text
    for name in ("faceattr_request_seconds_bucket", "faceattr_batch_faces_count",
                 "faceattr_queue_faces", "faceattr_requests_active", "faceattr_images_total",
                 "faceattr_faces_total"):  # fmt: skip
        assert name in text


def test_clients_that_hang_up_leave_nothing_behind(server: Server) -> None:
    """Requests whose clients close the connection right after sending are still worked
    through; their places in the queue come back and the next request is answered."""
    body = b"".join(
        b"--XyZ\r\nContent-Disposition: form-data; name=image; filename=p.jpg\r\n"
        b"Content-Type: image/jpeg\r\n\r\n" + p.read_bytes() + b"\r\n" for p in PHOTOS
    ) + b"--XyZ--\r\n"  # fmt: skip
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip

    def answered() -> float:
        text = httpx.get(server.url + "/metrics", headers=AUTH).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith('faceattr_requests_total{route="/v1/predict"'))  # fmt: skip

    before = answered()
    for _ in range(8):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(head + body)

    def drained() -> bool:
        text = httpx.get(server.url + "/metrics", headers=AUTH).text
        return answered() == before + 8 and metric(text, "faceattr_requests_active") == 0

    server.wait_for(drained, "the abandoned requests to finish")
    r = httpx.post(f"{server.url}/v1/predict", files=files(PHOTOS), headers=AUTH,
                   timeout=DEADLINE_S)  # fmt: skip
    assert r.status_code == 200 and len(r.json()) == len(PHOTOS)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_full_queue_then_sigterm_finishes_the_request_in_flight(tmp_path: Path) -> None:
    """With --max-queue 1, a request held half-sent fills the queue (503 + Retry-After for
    the next); SIGTERM then stops accepting, the held request is still answered, exit 0."""
    srv = Server(tmp_path, "--max-queue", "1", env={"FACEATTR_TOKEN": ""})
    try:
        photo = PHOTOS[0].read_bytes()
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(photo)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
        held = socket.create_connection(("127.0.0.1", srv.port))
        held.sendall(head + photo[:1000])

        def active() -> bool:
            return metric(httpx.get(srv.url + "/metrics").text, "faceattr_requests_active") == 1

        srv.wait_for(active, "the held request to be admitted")
        r = httpx.post(f"{srv.url}/v1/predict", files=files(PHOTOS[:1]), timeout=DEADLINE_S)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "busy" in r.json()["error"]["message"]

        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for(lambda: "Waiting for connections to close" in srv.log.read_text(),
                     "the server to stop accepting")  # fmt: skip
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/healthz")
        held.sendall(photo[1000:])
        answer = b""
        while chunk := held.recv(65536):
            answer += chunk
        held.close()
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b'"image":"upload-1"' in body and b'"faces":[{' in body
        assert srv.proc.wait(DEADLINE_S) == 0
    finally:
        srv.stop()


@pytest.mark.parametrize(("host", "token", "warns"), [
    ("0.0.0.0", "", True), ("0.0.0.0", "t", False), ("127.0.0.1", "", False), ("::1", "", False),
])  # fmt: skip
def test_non_loopback_without_token_warns(tmp_path: Path, host, token, warns) -> None:
    """The warning comes before the model loads; a missing model then stops it (exit 1)."""
    r = subprocess.run([sys.executable, "-m", "faceattr", "serve", "--host", host,
                        "--model", str(tmp_path / "none.onnx")], capture_output=True, text=True,
                       env={**os.environ, "FACEATTR_TOKEN": token})  # fmt: skip
    assert r.returncode == 1 and "none.onnx" in r.stderr
    assert ("without a token" in r.stderr) == warns


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from faceattr import extras
    from faceattr.serve import create_app

    monkeypatch.setattr(extras, "has_module", lambda name: name != "uvicorn")
    with pytest.raises(extras.MissingExtraError) as caught:
        create_app()
    assert 'pip install "faceattr[serve]"' in caught.value.hint
    assert "uvicorn" in caught.value.message


def test_create_app_in_process_and_a_body_that_never_arrives() -> None:
    """create_app() with a loaded Predictor, run by uvicorn in a thread: a body that stops
    arriving is answered 408 once the body timeout has passed, and the server goes on."""
    import threading

    import uvicorn

    from faceattr.inference.predictor import Predictor
    from faceattr.serve import create_app

    app = create_app(Predictor("default"), no_detect=True, body_timeout_s=0.5)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + DEADLINE_S
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port)) as held:
            held.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg"
                         b"\r\nContent-Length: 1000\r\n\r\nonly a part")  # fmt: skip
            held.settimeout(DEADLINE_S)
            answer = b""
            while not answer.endswith(b"}}") and (chunk := held.recv(65536)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 0.5 s" in answer
        photo = PHOTOS[0]
        r = httpx.post(url + "/v1/predict", files=files([photo]), timeout=DEADLINE_S)
        assert r.status_code == 200
        assert_same(r.json(), faceattr.predict([photo], no_detect=True), [photo.name])
    finally:
        srv.should_exit = True
        thread.join(DEADLINE_S)


def test_a_model_that_cannot_load_leaves_readyz_503(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from faceattr.serve import create_app

    app = create_app(str(tmp_path / "missing.onnx"))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and "missing.onnx" in r.json()["error"]["message"]
        r = client.post("/v1/predict", content=b"x", headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503 and "could not be loaded" in r.json()["error"]["message"]
