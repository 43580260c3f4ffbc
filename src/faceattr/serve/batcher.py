"""One batcher per server process: the faces of every request go into shared model calls.

A request's faces (uint8 pixels ``[n, 3, S, S]``, made by :class:`~faceattr.inference.
predictor._Prepare` in worker threads) wait in one queue; the batcher takes them until
``max_batch`` faces are gathered or ``max_wait_ms`` has passed since the first of them, and
runs the model once, in its own thread, so that the event loop never waits on the model.
A batch waits for more faces only while some are coming: a request counts as coming from
:meth:`Batcher.expect` (it has begun decoding) until its faces are queued, so a lone request
goes to the model at once instead of waiting ``max_wait_ms`` for nobody.
Each request gets its own rows of the batch's probabilities back. Faces asking for another
test-time augmentation than their neighbours go through the model in a call of their own
within the same batch. No web framework here: the batcher is plain asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from faceattr.inference.predictor import Predictor


class Expected:
    """A request whose faces are coming (see :meth:`Batcher.expect`); :meth:`done` once
    they are queued or will never be (idempotent)."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.open = True
        batcher.expected += 1

    def done(self) -> None:
        if self.open:
            self.open = False
            self.batcher.expected -= 1
            self.batcher._wake()


@dataclass
class _Job:
    pixels: np.ndarray  # [n, 3, S, S] uint8
    predictor: Predictor  # the request's view (its tta); the model is shared
    future: asyncio.Future[np.ndarray]


class Batcher:
    """Gathers faces from concurrent requests into model calls of up to ``max_batch`` faces.

    ``on_batch(faces)`` is called after each model call (the server's metrics). Start it
    with :meth:`start` inside the running event loop, stop it with :meth:`stop`: the faces
    still queued are predicted before it returns.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.faces_waiting = 0  # faces queued, not yet in a model call
        self.expected = 0  # requests decoding whose faces will be queued (Expected)
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._arrived: asyncio.Event | None = None  # a job was queued, or one expected less
        self._task: asyncio.Task[None] | None = None
        # One thread: model calls never overlap (ONNX Runtime uses its own threads within one).
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="faceattr-model")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)  # after every job already queued
            self._wake()
            await self._task
        self._model_thread.shutdown(wait=True)

    def expect(self) -> Expected:
        """Say that a request's faces are coming (it has begun decoding): a batch being
        gathered waits for them (up to ``max_wait_ms``). Pass it to :meth:`probabilities`,
        or call its ``done()`` when the request ends without faces."""
        return Expected(self)

    def _wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()

    async def probabilities(
        self, pixels: np.ndarray, predictor: Predictor, expected: Expected | None = None
    ) -> np.ndarray:
        """``[n, A]`` probabilities of ``pixels`` ``[n, 3, S, S]``, predicted with
        ``predictor``'s test-time augmentation in a batch shared with other requests;
        ``expected``: this request's :meth:`expect`, done once its faces are queued."""
        if len(pixels) == 0:
            if expected is not None:
                expected.done()
            return np.zeros((0, len(self.predictor.attributes)), np.float32)
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.faces_waiting += len(pixels)
        self._queue.put_nowait(_Job(pixels, predictor, future))
        self._wake()
        if expected is not None:
            expected.done()
        # A client that goes away cancels its request, not the batch its faces are in.
        return await asyncio.shield(future)

    async def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and the jobs that join it within the wait (while some are expected);
        True when stopping."""
        assert self._queue is not None and self._arrived is not None
        loop = asyncio.get_running_loop()
        jobs, faces = [first], len(first.pixels)
        deadline = loop.time() + self.max_wait
        while faces < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0 or self.expected == 0:  # the time is up, or nothing is coming
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:  # not the builtin before Python 3.11
                    break
                continue
            if job is None:
                return jobs, True
            jobs.append(job)
            faces += len(job.pixels)
        return jobs, False

    def _predict(self, jobs: list[_Job]) -> list[np.ndarray]:
        """Runs in the model thread: one call per test-time augmentation among ``jobs``."""
        out: list[np.ndarray | None] = [None] * len(jobs)
        for tta in sorted({job.predictor.tta for job in jobs}):
            group = [i for i, job in enumerate(jobs) if job.predictor.tta == tta]
            pixels = np.concatenate([jobs[i].pixels for i in group])
            probs = jobs[group[0]].predictor.probabilities_of_pixels(pixels)
            start = 0
            for i in group:
                n = len(jobs[i].pixels)
                out[i] = probs[start : start + n]
                start += n
        return [p for p in out if p is not None]

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            jobs, stopping = await self._gather(first)
            faces = sum(len(job.pixels) for job in jobs)
            self.faces_waiting -= faces
            try:
                results = await loop.run_in_executor(self._model_thread, self._predict, jobs)
            except Exception as exc:  # the model failed: every request of the batch hears it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, probs in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(probs)
            if self.on_batch is not None:
                self.on_batch(faces)
