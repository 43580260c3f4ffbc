"""Serving: `faceattr serve` under concurrent clients against `faceattr predict DIR`.

    python benchmarks/bench_serve.py [--quick] [--clients 1,4,16,64] [--requests N]
                                     [--soak N] [--soak-seconds S] [--json]

A real server (``faceattr serve`` in a child process on a free 127.0.0.1 port) and an async
HTTP client (httpx) in this process; every ratio is measured side by side in one run:

1. throughput: ``--clients`` concurrent clients (each a loop taking the next image until
   ``--requests`` images have been posted, one image per request as the raw body), posting
   aligned crops with ``detect=false`` and photos with detection on, against ``faceattr
   predict DIR --json`` (``--no-detect`` for the crops) over the same images: its wall time
   (start-up and model loading included) and its img/s with and without the load. The load
   is the wall time of the same command on one image of the folder (start-up, imports,
   model and detector loading, one image); without it: ``(N - 1) / (wall(N) - wall(1))``.
   Target: at 16 clients, at least 0.9x the command's img/s;
2. latency: one client, one photo at a time, warm: p50 and p99 of the request, and the
   in-process Python API on the same photo with the same detector (``faceattr.predict``'s
   own path with its model and detector loaded once: ``faceattr.predict`` itself loads the
   model on every call), timed in turns with the requests. Target: p50 at most 1.2x;
3. soak: ``--soak`` requests (20,000; bounded by ``--soak-seconds`` too) of aligned crops
   with ``detect=false`` from 8 clients; the server's resident memory after the first 1,000
   and at the end (target: at most 1.1x), and every status counted (any answer but 200 or a
   deliberate 503 is a failure);
4. overload: 256 concurrent clients against a second server started with ``--max-queue
   32``, posting photos: every answer must be 200, or 503 with Retry-After, within the
   client timeout; the counts and the p99 latency of the 200s.

The crops are ``$FACEATTR_REAL_DATA/celeba-sample`` images when set (a fixed random subset,
seed 0, symlinked into a temporary folder), else the faces of ``examples/*.jpg`` cut by
``faceattr predict --save-crops``; the photos are ``examples/*.jpg``, repeated. Nothing is
written into the dataset or the repository. ``--quick``: a smoke run of about a minute.
The exit status is 1 when an answer was wrong (a status other than the ones expected, a
timeout, a server that did not exit 0); a missed target is reported, not an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import (  # benchmarks/common.py
    child_env,
    cpu_model,
    faceattr_cmd,
    run_process,
    warm_files,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PHOTO = EXAMPLES / "astronaut.jpg"
SOAK_CLIENTS = 8
SOAK_BASELINE = 1000  # requests answered before the first memory reading
OVERLOAD_CLIENTS = 256
OVERLOAD_QUEUE = 32
READY_TIMEOUT_S = 300.0
TARGET_THROUGHPUT = 0.9  # at 16 clients, of predict's img/s
TARGET_LATENCY = 1.2  # p50 over the in-process p50
TARGET_MEMORY = 1.1  # RSS at the end over RSS after SOAK_BASELINE requests


def note(message: str) -> None:
    """Progress, on stderr (stdout holds the tables or the JSON)."""
    print(message, file=sys.stderr, flush=True)


def cpu_line() -> str:
    """The CPU's model name and cores, as lscpu says them (else /proc/cpuinfo)."""
    name = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{name or cpu_model()}, {os.cpu_count()} cores"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (psutil when installed, else /proc)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"Cannot read the resident memory of process {pid}: install psutil.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the images ---------------------------------------------------------------------------


def link_as(sources: Sequence[Path], folder: Path, n: int) -> list[Path]:
    """``n`` symlinks in ``folder`` to ``sources``, cycled (distinct names, sorted order)."""
    folder.mkdir(parents=True)
    links = []
    for i in range(n):
        src = sources[i % len(sources)]
        link = folder / f"{i:06d}-{src.name}"
        link.symlink_to(src.resolve())
        links.append(link)
    return links


def pick_crops(tmp: Path, n: int) -> tuple[list[Path], str]:
    """``n`` aligned crops (symlinks) in ``tmp/crops``, and where they came from."""
    real = os.environ.get("FACEATTR_REAL_DATA")
    folder = Path(real) / "celeba-sample" / "img_align_celeba" if real else None
    if folder is not None and folder.is_dir():
        import random

        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg")
        chosen = sorted(random.Random(0).sample(names, min(n, len(names))))
        return link_as([folder / c for c in chosen], tmp / "crops", n), (
            f"{min(n, len(names)):,} real CelebA aligned crops ({folder})"
        )
    made = tmp / "made-crops"
    cmd = faceattr_cmd(
        "predict", *map(str, sorted(EXAMPLES.glob("*.jpg"))), "--save-crops", str(made), "--json"
    )
    run_process(cmd)
    faces = sorted(made.glob("*.jpg"))
    if not faces:
        raise SystemExit(f"`faceattr predict --save-crops` wrote no crop into {made}.")
    return link_as(faces, tmp / "crops", n), (
        f"the {len(faces)} faces of examples/*.jpg (`predict --save-crops`), repeated"
    )


# --- faceattr predict ---------------------------------------------------------------------


def measure_predict(folder: Path, n: int, detect: bool, repeat: int) -> dict[str, Any]:
    """``faceattr predict DIR --json`` over ``n`` images, and over one (the load)."""
    extra = [] if detect else ["--no-detect"]
    one = sorted(folder.iterdir())[0]
    run_process(faceattr_cmd("predict", str(one), "--json", *extra))  # warm-up: disk cache
    load = statistics.median(
        run_process(faceattr_cmd("predict", str(one), "--json", *extra))[0] for _ in range(repeat)
    )
    walls, faces = [], 0
    for _ in range(repeat):
        wall, out = run_process(faceattr_cmd("predict", str(folder), "--json", *extra))
        walls.append(wall)
        answers = json.loads(out)
        errors = [a["error"] for a in answers if a["error"]]
        if len(answers) != n or errors:
            raise SystemExit(f"predict answered {len(answers)} of {n} images; errors: {errors[:3]}")
        faces = sum(len(a["faces"]) for a in answers)
    wall = statistics.median(walls)
    net = wall - load
    return {
        "images": n,
        "faces": faces,
        "wall_s": wall,
        "load_s": load,
        "ips_with_load": n / wall,
        "ips_without_load": (n - 1) / net if net > 0 else float("nan"),
    }


# --- the server ---------------------------------------------------------------------------


class Server:
    """``faceattr serve`` in a child process on a free 127.0.0.1 port, ready when started."""

    def __init__(self, tmp: Path, *args: str, processes: int = 1) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        cmd = faceattr_cmd("serve", "--port", str(self.port), *args)
        self.args = " ".join(args)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO
            )
        start = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"The server exited ({self.proc.returncode}): {self.tail()}")
            try:
                started = self.tail_all().count("Application startup complete")
                if (httpx.get(self.url + "/readyz", timeout=5).status_code == 200
                        and started >= processes):  # every process of --nproc  # fmt: skip
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - start > READY_TIMEOUT_S:
                self.proc.kill()
                raise SystemExit(
                    f"The server was not ready in {READY_TIMEOUT_S:.0f} s: {self.tail()}"
                )
            time.sleep(0.1)
        self.ready_s = time.perf_counter() - start

    def tail_all(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def tail(self) -> str:
        return self.tail_all()[-2000:]

    def batch_totals(self) -> tuple[float, float]:
        """(faces, model calls) so far, from /metrics' ``faceattr_batch_faces``."""
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=30).text
        totals = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            for key in totals:
                if name == f"faceattr_batch_faces_{key}":
                    totals[key] = float(value)
        return totals["sum"], totals["count"]

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def stop(self) -> int:
        """SIGTERM, and the exit status (killed after 60 s: -9)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


_TLS: list[Any] = []  # one TLS context for every client: httpx makes one per client else


def client(timeout: float) -> Any:
    """One client: its own connection, kept alive between its requests (a pool shared by all
    clients would hand out connections the server may be closing as idle). The clients share
    one TLS context (unused over http://): making one costs about 30 ms of CPU, which 256
    clients would spend inside the measured time."""
    import ssl

    import httpx

    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1),
                             verify=_TLS[0])  # fmt: skip


class Tally:
    """Statuses and latencies of a stream of requests."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.ok_latencies: list[float] = []
        self.faces = 0
        self.bad_503 = 0  # 503s without Retry-After
        self.errors: list[str] = []  # the first few failures, as the client saw them

    async def post(self, http: Any, url: str, body: bytes) -> None:
        start = time.perf_counter()
        try:
            response = await http.post(url, content=body, headers={"Content-Type": "image/jpeg"})
        except Exception as exc:  # a timeout or a dropped connection: counted, not raised
            self.statuses[type(exc).__name__] += 1
            if len(self.errors) < 5:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        seconds = time.perf_counter() - start
        self.statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            self.ok_latencies.append(seconds)
            self.faces += sum(len(a["faces"]) for a in response.json())
        elif response.status_code == 503 and "retry-after" not in response.headers:
            self.bad_503 += 1
        if response.status_code not in (200, 503) and len(self.errors) < 5:
            self.errors.append(f"{response.status_code}: {response.text[:300]}")

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    def unexpected(self, allowed: tuple[str, ...] = ("200",)) -> dict[str, int]:
        return {k: v for k, v in self.statuses.items() if k not in allowed}


async def run_clients(
    url: str,
    bodies: Sequence[bytes],
    n_requests: int,
    clients: int,
    timeout: float,
    deadline: float | None = None,
    on_each: Callable[[int], None] | None = None,
) -> tuple[Tally, float]:
    """``clients`` clients, each a loop posting the next of ``bodies`` (cycled) until
    ``n_requests`` are sent or ``deadline`` (perf_counter) has passed; the tally and the wall
    seconds. ``on_each(done)`` runs after each answer."""
    tally = Tally()
    sent = done = 0

    async def loop() -> None:
        nonlocal sent, done
        async with client(timeout) as http:
            while sent < n_requests and (deadline is None or time.perf_counter() < deadline):
                i = sent
                sent += 1
                await tally.post(http, url, bodies[i % len(bodies)])
                done += 1
                if on_each is not None:
                    on_each(done)

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return tally, time.perf_counter() - start


def throughput_rows(
    server: Server, kinds: dict[str, dict[str, Any]], clients: Sequence[int], timeout: float
) -> list[dict[str, Any]]:
    rows = []
    for kind, spec in kinds.items():
        url = server.url + "/v1/predict" + spec["query"]
        bodies = spec["bodies"]
        asyncio.run(run_clients(url, bodies, min(16, len(bodies)), 4, timeout))  # warm-up
        for c in clients:
            note(f"  throughput: {kind}, {c} client(s)")
            faces_before, calls_before = server.batch_totals()
            tally, seconds = asyncio.run(run_clients(url, bodies, len(bodies), c, timeout))
            faces_after, calls_after = server.batch_totals()
            calls = calls_after - calls_before
            rows.append(
                {
                    "kind": kind,
                    "clients": c,
                    "requests": len(bodies),
                    "ok": tally.ok,
                    "faces": tally.faces,
                    "seconds": seconds,
                    "ips": tally.ok / seconds,
                    "p50_s": percentile(tally.ok_latencies, 50),
                    "p99_s": percentile(tally.ok_latencies, 99),
                    "faces_per_call": (faces_after - faces_before) / calls if calls else None,
                    "errors": tally.errors,
                    "unexpected": tally.unexpected(),
                }
            )
    return rows


def latency(server: Server, photo: Path, n: int, timeout: float) -> dict[str, Any]:
    """One client, one photo at a time, warm, timed in turns with the in-process API path."""
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import Predictor, iter_predictions

    predictor = Predictor("default")
    detector = create_detector(None)  # faceattr.predict's and the server's default
    body = photo.read_bytes()

    def in_process() -> list[dict[str, Any]]:
        return [r.to_json() for r in iter_predictions([photo], predictor, detector=detector)]

    async def measure() -> tuple[Tally, list[float], list[float]]:
        tally, served, local = Tally(), [], []
        url = server.url + "/v1/predict"
        async with client(timeout) as http:
            for _ in range(5):  # warm-up: both paths
                await tally.post(http, url, body)
                in_process()
            tally = Tally()
            for _ in range(n):
                await tally.post(http, url, body)
                start = time.perf_counter()
                answer = in_process()
                local.append(time.perf_counter() - start)
                if answer[0]["error"]:
                    raise SystemExit(f"faceattr.predict failed on {photo}: {answer[0]['error']}")
        served = tally.ok_latencies
        return tally, served, local

    tally, served, local = asyncio.run(measure())
    return {
        "photo": photo.name,
        "requests": n,
        "p50_s": percentile(served, 50),
        "p99_s": percentile(served, 99),
        "in_process_p50_s": percentile(local, 50),
        "in_process_p99_s": percentile(local, 99),
        "errors": tally.errors,
        "unexpected": tally.unexpected(),
    }


def soak(
    server: Server, bodies: Sequence[bytes], n: int, seconds_limit: float, timeout: float
) -> dict[str, Any]:
    """``n`` requests (fewer when ``seconds_limit`` runs out); RSS after SOAK_BASELINE and
    at the end."""
    baseline_at = min(SOAK_BASELINE, max(1, n // 2))
    readings: dict[str, int] = {}
    url = server.url + "/v1/predict?detect=false"

    def on_each(done: int) -> None:
        if done == baseline_at:
            readings["baseline"] = server.rss()

    rss_start = server.rss()
    deadline = time.perf_counter() + seconds_limit
    coroutine = run_clients(url, bodies, n, SOAK_CLIENTS, timeout, deadline, on_each)
    tally, seconds = asyncio.run(coroutine)
    end = server.rss()
    answered = sum(tally.statuses.values())
    base = readings.get("baseline")
    return {
        "requests": answered,
        "asked": n,
        "stopped_by_time": answered < n,
        "seconds": seconds,
        "clients": SOAK_CLIENTS,
        "baseline_after": baseline_at,
        "rss_start_mb": rss_start / 2**20,
        "rss_baseline_mb": None if base is None else base / 2**20,
        "rss_end_mb": end / 2**20,
        "rss_ratio": None if base is None else end / base,
        "statuses": dict(tally.statuses),
        "bad_503": tally.bad_503,
        "errors": tally.errors,
        "unexpected": tally.unexpected(("200", "503")),
    }


def overload(server: Server, body: bytes, rounds: int, timeout: float) -> dict[str, Any]:
    """OVERLOAD_CLIENTS clients at once posting the photo OVERLOAD_CLIENTS x ``rounds`` times
    in all (a client answered 503 posts again at once)."""
    url = server.url + "/v1/predict"
    n = OVERLOAD_CLIENTS * rounds
    tally, seconds = asyncio.run(run_clients(url, [body], n, OVERLOAD_CLIENTS, timeout))
    oks = tally.ok_latencies
    return {
        "clients": OVERLOAD_CLIENTS,
        "max_queue": OVERLOAD_QUEUE,
        "requests": n,
        "seconds": seconds,
        "statuses": dict(tally.statuses),
        "bad_503": tally.bad_503,
        "p50_ok_s": percentile(oks, 50),
        "p99_ok_s": percentile(oks, 99),
        "max_ok_s": max(oks) if oks else float("nan"),
        "timeout_s": timeout,
        "errors": tally.errors,
        "unexpected": tally.unexpected(("200", "503")),
    }


# --- output -------------------------------------------------------------------------------


def strict(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def print_tables(r: dict[str, Any]) -> None:
    print("\n### Throughput: one image per request, against `faceattr predict DIR --json`\n")
    print(
        "| images | clients | img/s | vs predict (no load) | vs predict (whole process) | "
        "faces per model call | p50 ms | p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, base in r["predict"].items():
        label = r["kinds"][kind]
        no_load, whole = base["ips_without_load"], base["ips_with_load"]
        print(
            f"| {label}: `predict`, without its load | - | {fmt(no_load)} | 1.00x | "
            f"{no_load / whole:.2f}x | - | - | - |"
        )
        print(
            f"| {label}: `predict`, whole process | - | {fmt(whole)} | "
            f"{whole / no_load:.2f}x | 1.00x | - | - | - |"
        )
        for row in (x for x in r["throughput"] if x["kind"] == kind):
            per_call = row["faces_per_call"]
            print(
                f"| {label} | {row['clients']} | {fmt(row['ips'])} | "
                f"{row['ips'] / no_load:.2f}x | {row['ips'] / whole:.2f}x | "
                f"{'-' if per_call is None else f'{per_call:.1f}'} | {ms(row['p50_s'])} | "
                f"{ms(row['p99_s'])} |"
            )
    for kind, base in r["predict"].items():
        print(
            f"\n`predict` over the {r['kinds'][kind]}: {base['wall_s']:.2f} s for "
            f"{base['images']} images ({base['faces']} faces), of which {base['load_s']:.2f} s "
            "is the load (the same command on one image of the folder: start-up, imports, "
            "model and detector, one image)."
        )
    print()
    for t in r["targets"]["throughput"]:
        print(
            f"Target at {t['clients']} clients, {r['kinds'][t['kind']]}: >= "
            f"{TARGET_THROUGHPUT}x predict without its load: {t['ratio']:.3f}x, "
            f"{verdict(t['met'])} (whole process: {t['ratio_whole']:.2f}x)."
        )

    if r.get("nproc"):
        n = r["nproc"]["n"]
        print(f"\n### `--nproc {n}` against one process, 16 clients\n")
        print("| images | one process img/s | `--nproc` img/s | ratio |")
        print("|---|---:|---:|---:|")
        one = {row["kind"]: row for row in r["throughput"] if row["clients"] == 16}
        for row in r["nproc"]["rows"]:
            single = one.get(row["kind"])
            ratio = f"{row['ips'] / single['ips']:.2f}x" if single else "-"
            single_ips = f"{single['ips']:.1f}" if single else "-"
            print(f"| {r['kinds'][row['kind']]} | {single_ips} | {row['ips']:.1f} | {ratio} |")

    lat = r["latency"]
    print(f"\n### Latency: one client, one photo at a time (`{lat['photo']}`), warm\n")
    print("| path | p50 ms | p99 ms | p50 vs in-process |")
    print("|---|---:|---:|---:|")
    print(
        f"| `POST /v1/predict` | {ms(lat['p50_s'])} | {ms(lat['p99_s'])} | "
        f"{lat['p50_s'] / lat['in_process_p50_s']:.2f}x |"
    )
    print(
        f"| in-process (`faceattr.predict`'s path, model loaded once) | "
        f"{ms(lat['in_process_p50_s'])} | {ms(lat['in_process_p99_s'])} | 1.00x |"
    )
    print(
        f"\n{lat['requests']} requests, each followed by one in-process call (in turns), "
        f"after 5 warm-up calls of each. Target p50 <= {TARGET_LATENCY}x: "
        f"{verdict(r['targets']['latency'])}."
    )

    s = r["soak"]
    print(
        f"\n### Soak: {s['requests']:,} requests of aligned crops (`detect=false`), "
        f"{s['clients']} clients\n"
    )
    print(
        "| RSS at start | after first {:,} | at the end | end / after first | statuses | "
        "seconds |".format(s["baseline_after"])
    )
    print("|---:|---:|---:|---:|---|---:|")
    base = "-" if s["rss_baseline_mb"] is None else f"{s['rss_baseline_mb']:.0f} MB"
    ratio = "-" if s["rss_ratio"] is None else f"{s['rss_ratio']:.3f}"
    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(s["statuses"].items()))
    print(
        f"| {s['rss_start_mb']:.0f} MB | {base} | {s['rss_end_mb']:.0f} MB | {ratio} | "
        f"{statuses} | {s['seconds']:.0f} |"
    )
    stopped = " (stopped by --soak-seconds)" if s["stopped_by_time"] else ""
    print(
        f"\n{s['requests']:,} of {s['asked']:,} asked{stopped}. Target RSS ratio <= "
        f"{TARGET_MEMORY} and no error but deliberate 503s: "
        f"{verdict(r['targets']['memory'])}."
    )

    o = r["overload"]
    print(
        f"\n### Overload: {o['clients']} concurrent clients, `--max-queue {o['max_queue']}`, "
        "photos\n"
    )
    print(
        "| requests | 200 | 503 (Retry-After) | other | p50 of 200s ms | p99 of 200s ms | "
        "max of 200s ms | seconds |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    other = sum(o["unexpected"].values()) + o["bad_503"]
    print(
        f"| {o['requests']:,} | {o['statuses'].get('200', 0):,} | "
        f"{o['statuses'].get('503', 0) - o['bad_503']:,} | {other} | {ms(o['p50_ok_s'])} | "
        f"{ms(o['p99_ok_s'])} | {ms(o['max_ok_s'])} | {o['seconds']:.1f} |"
    )
    print(
        f"\nClient timeout {o['timeout_s']:.0f} s. Every answer 200 or 503 with Retry-After: "
        f"{verdict(r['targets']['overload'])}."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run (~1 min)")
    p.add_argument(
        "--clients",
        default="1,4,16,64",
        help="concurrent clients per throughput row (default 1,4,16,64)",
    )
    p.add_argument(
        "--requests", type=int, help="images per throughput row and for predict (512; quick 64)"
    )
    p.add_argument("--soak", type=int, help="soak requests (20,000; quick 2,000)")
    p.add_argument(
        "--soak-seconds", type=float, help="the soak's time bound in seconds (900; quick 60)"
    )
    p.add_argument("--latency-requests", type=int, help="latency samples (300; quick 30)")
    p.add_argument("--overload-rounds", type=int, help="requests per overload client (4; quick 1)")
    p.add_argument("--repeat", type=int, help="predict runs per measurement, median (3; quick 1)")
    p.add_argument(
        "--nproc",
        type=int,
        help="also the throughput at 16 clients with `serve --nproc N` (2; quick 0: not measured)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout (s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = p.parse_args(argv)

    def positive(name: str, value: float) -> None:
        if value < 1:
            p.error(f"{name} must be at least 1 (got {value:g})")

    try:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        p.error(
            f"--clients takes numbers separated by commas, like 1,4,16,64 (got {args.clients!r})"
        )

    def pick(given: Any, quick: Any, full: Any) -> Any:
        return (quick if args.quick else full) if given is None else given

    n_requests = pick(args.requests, 64, 512)
    n_soak = pick(args.soak, 2000, 20000)
    soak_seconds = pick(args.soak_seconds, 60.0, 900.0)
    n_latency = pick(args.latency_requests, 30, 300)
    rounds = pick(args.overload_rounds, 1, 4)
    repeat = pick(args.repeat, 1, 3)
    nproc = pick(args.nproc, 0, 2)
    for name, value in (
        ("--clients", min(clients, default=0)),
        ("--requests", n_requests),
        ("--soak", n_soak),
        ("--soak-seconds", soak_seconds),
        ("--latency-requests", n_latency),
        ("--overload-rounds", rounds),
        ("--repeat", repeat),
        ("--timeout", args.timeout),
    ):
        positive(name, value)
    try:
        import httpx  # noqa: F401
    except ImportError:
        p.error('needs httpx: pip install httpx (and the serve extra: "faceattr[serve]")')
    from faceattr.serve import require_serve

    require_serve()
    photos = sorted(EXAMPLES.glob("*.jpg"))
    if not PHOTO.is_file() or not photos:
        p.error(f"{PHOTO} is missing (run from a source checkout).")

    load = os.getloadavg()
    header = (
        f"CPU: {cpu_line()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"Python {platform.python_version()}" + ("; --quick" if args.quick else "")
    )
    note(header)
    results: dict[str, Any] = {"cpu": cpu_line(), "load_start": load[0], "quick": args.quick}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="faceattr-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        crops, crops_from = pick_crops(tmp, n_requests)
        photo_links = link_as(photos, tmp / "photos", n_requests)
        warm_files([*crops, *photo_links])
        results["crops"] = crops_from
        results["photos"] = f"examples/*.jpg ({len(photos)} photos), repeated"
        kinds: dict[str, dict[str, Any]] = {
            "crops": {
                "folder": tmp / "crops",
                "detect": False,
                "query": "?detect=false",
                "bodies": [c.read_bytes() for c in crops],
            },
            "photos": {
                "folder": tmp / "photos",
                "detect": True,
                "query": "",
                "bodies": [c.read_bytes() for c in photo_links],
            },
        }
        results["kinds"] = {
            "crops": "aligned crops, `detect=false`",
            "photos": "photos, detection on",
        }

        results["predict"] = {}
        for kind, spec in kinds.items():
            note(f"faceattr predict over the {kind} ({n_requests} images, {repeat} run(s))")
            results["predict"][kind] = measure_predict(
                spec["folder"], n_requests, spec["detect"], repeat
            )

        queue = max(64, *clients)  # no 503 in the throughput rows
        note(f"faceattr serve --max-queue {queue}")
        server = Server(tmp, "--max-queue", str(queue))
        results["server_ready_s"] = server.ready_s
        try:
            results["throughput"] = throughput_rows(server, kinds, clients, args.timeout)
            note(f"latency: {n_latency} requests and in-process calls")
            results["latency"] = latency(server, PHOTO, n_latency, args.timeout)
            note(f"soak: {n_soak:,} requests (at most {soak_seconds:.0f} s)")
            results["soak"] = soak(
                server, kinds["crops"]["bodies"], n_soak, soak_seconds, args.timeout
            )
        finally:
            results["server_exit"] = server.stop()
            results["server_log_tail"] = server.tail()
        if nproc > 1:
            note(f"faceattr serve --nproc {nproc}: throughput at 16 clients")
            server = Server(tmp, "--max-queue", str(queue), "--nproc", str(nproc),
                            processes=nproc)  # fmt: skip
            try:
                rows = throughput_rows(server, kinds, [16], args.timeout)
                results["nproc"] = {"n": nproc, "rows": rows}
            finally:
                results["nproc_server_exit"] = server.stop()
        note(f"overload: {OVERLOAD_CLIENTS} clients x {rounds}, --max-queue {OVERLOAD_QUEUE}")
        server = Server(tmp, "--max-queue", str(OVERLOAD_QUEUE))
        try:
            results["overload"] = overload(server, PHOTO.read_bytes(), rounds, args.timeout)
        finally:
            results["overload_server_exit"] = server.stop()
            results["overload_server_log_tail"] = server.tail()

    for row in [*results["throughput"], *results.get("nproc", {}).get("rows", [])]:
        if row["unexpected"]:
            failures.append(
                f"throughput {row['kind']} x{row['clients']}: {row['unexpected']}; "
                f"first: {row['errors']}"
            )
    if results["latency"]["unexpected"]:
        failures.append(
            f"latency: {results['latency']['unexpected']}; first: {results['latency']['errors']}"
        )
    s, o = results["soak"], results["overload"]
    for label, part in (("soak", s), ("overload", o)):
        if part["unexpected"] or part["bad_503"]:
            failures.append(
                f"{label}: {part['unexpected']}, 503 without Retry-After: {part['bad_503']}; "
                f"first: {part['errors']}"
            )
    for key in ("server_exit", "overload_server_exit", "nproc_server_exit"):
        if results.get(key, 0) != 0:
            failures.append(f"{key.replace('_', ' ')} status {results[key]} after SIGTERM")

    lat = results["latency"]
    targets: dict[str, Any] = {"throughput": []}
    for kind, base in results["predict"].items():
        for row in results["throughput"]:
            if row["kind"] == kind and row["clients"] == 16:
                r = row["ips"] / base["ips_without_load"]
                targets["throughput"].append(
                    {
                        "kind": kind,
                        "clients": 16,
                        "ratio": r,
                        "met": r >= TARGET_THROUGHPUT,
                        "ratio_whole": row["ips"] / base["ips_with_load"],
                    }
                )
    targets["latency"] = lat["p50_s"] <= TARGET_LATENCY * lat["in_process_p50_s"]
    targets["memory"] = (
        s["rss_ratio"] is not None
        and s["rss_ratio"] <= TARGET_MEMORY
        and not s["unexpected"]
        and not s["bad_503"]
    )
    targets["overload"] = not o["unexpected"] and not o["bad_503"]
    results["targets"] = targets
    results["failures"] = failures
    results["load_end"] = os.getloadavg()[0]

    if args.json:
        print(json.dumps(strict(results), indent=2, allow_nan=False))
    else:
        print(header)
        print(
            f"Crops: {results['crops']}; photos: {results['photos']}; the server was ready "
            f"{results['server_ready_s']:.1f} s after its start."
        )
        print_tables(results)
        print(f"\nLoad average at the end: {results['load_end']:.2f}")
        for f in failures:
            print(f"FAILED: {f}")
        if failures:
            for key in ("server_log_tail", "overload_server_log_tail"):
                print(f"\n{key.replace('_', ' ')}:\n{results[key]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
