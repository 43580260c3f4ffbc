"""The serve batcher on its own (no web server, a stand-in model): batches gather the faces
of concurrent requests, each request gets its own rows back, and a batch waits only while
faces are coming. Waits are bounded by a deadline far above any real wait (a hang fails the
test); nothing is timed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from faceattr.serve.batcher import Batcher

HOURS_MS = 3_600_000.0  # a max_wait no test may sit out: a batch waiting for it hangs
DEADLINE_S = 60.0


class Model:
    """Probabilities that name their face: row i of a call is the face's first pixel / 255."""

    attributes = ("A", "B")

    def __init__(self, tta: str = "none") -> None:
        self.tta = tta
        self.calls: list[int] = []

    def probabilities_of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixels))
        first = pixels[:, 0, 0, 0].astype(np.float32) / 255.0
        return np.stack([first, 1 - first], axis=1)


def faces(*values: int) -> np.ndarray:
    out = np.zeros((len(values), 3, 4, 4), np.uint8)
    out[:, 0, 0, 0] = values
    return out


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE_S))


def test_a_lone_request_does_not_wait_for_nobody() -> None:
    model = Model()

    async def main() -> np.ndarray:
        batcher = Batcher(model, max_batch=32, max_wait_ms=HOURS_MS)  # type: ignore[arg-type]
        batcher.start()
        expected = batcher.expect()
        try:
            return await batcher.probabilities(faces(51), model, expected)  # type: ignore[arg-type]
        finally:
            await batcher.stop()

    probs = run(main())
    assert probs[:, 0] == pytest.approx([51 / 255])
    assert model.calls == [1]


def test_a_batch_waits_for_the_faces_that_are_coming() -> None:
    model = Model()
    sizes: list[int] = []

    async def main() -> list[np.ndarray]:
        batcher = Batcher(model, max_batch=32, max_wait_ms=HOURS_MS,  # type: ignore[arg-type]
                          on_batch=sizes.append)  # fmt: skip
        batcher.start()
        first, second = batcher.expect(), batcher.expect()
        one = asyncio.ensure_future(batcher.probabilities(faces(10, 20), model, first))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the batch has begun with the first request's faces
        await asyncio.sleep(0)
        assert model.calls == []  # it waits: the second request is still decoding
        two = await batcher.probabilities(faces(30), model, second)  # type: ignore[arg-type]
        answers = [await one, two]
        await batcher.stop()
        return answers

    one, two = run(main())
    assert sizes == [3] and model.calls == [3]  # one model call for both requests
    assert one[:, 0] == pytest.approx([10 / 255, 20 / 255])  # each its own rows
    assert two[:, 0] == pytest.approx([30 / 255])


def test_a_request_that_ends_without_faces_releases_the_batch() -> None:
    model = Model()

    async def main() -> np.ndarray:
        batcher = Batcher(model, max_batch=32, max_wait_ms=HOURS_MS)  # type: ignore[arg-type]
        batcher.start()
        first, failing = batcher.expect(), batcher.expect()
        one = asyncio.ensure_future(batcher.probabilities(faces(40), model, first))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        failing.done()  # e.g. its upload was not an image: no faces will come
        failing.done()  # idempotent
        answer = await one
        await batcher.stop()
        return answer

    assert run(main())[:, 0] == pytest.approx([40 / 255])
    assert model.calls == [1]


def test_a_full_batch_goes_at_once_and_the_rest_follows() -> None:
    model = Model()

    async def main() -> list[np.ndarray]:
        batcher = Batcher(model, max_batch=2, max_wait_ms=HOURS_MS)  # type: ignore[arg-type]
        batcher.start()
        tickets = [batcher.expect() for _ in range(3)]
        jobs = [asyncio.ensure_future(batcher.probabilities(faces(v), model, t))  # type: ignore[arg-type]
                for v, t in zip((1, 2, 3), tickets, strict=True)]  # fmt: skip
        answers = [await j for j in jobs]
        await batcher.stop()
        return answers

    answers = run(main())
    assert [a[0, 0] for a in answers] == pytest.approx([1 / 255, 2 / 255, 3 / 255])
    assert model.calls == [2, 1]


def test_faces_with_another_tta_go_in_a_call_of_their_own() -> None:
    plain, flipped = Model("none"), Model("flip")

    async def main() -> list[np.ndarray]:
        batcher = Batcher(plain, max_batch=32, max_wait_ms=HOURS_MS)  # type: ignore[arg-type]
        batcher.start()
        a, b = batcher.expect(), batcher.expect()
        one = asyncio.ensure_future(batcher.probabilities(faces(5), plain, a))  # type: ignore[arg-type]
        two = asyncio.ensure_future(batcher.probabilities(faces(6, 7), flipped, b))  # type: ignore[arg-type]
        answers = [await one, await two]
        await batcher.stop()
        return answers

    one, two = run(main())
    assert plain.calls == [1] and flipped.calls == [2]
    assert two[:, 0] == pytest.approx([6 / 255, 7 / 255])
