"""service.batcher: many requests, one forward pass; a full queue is refused; slow answers time out."""

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import Batcher
from service.errors import Overloaded, TimedOut


def test_concurrent_requests_share_one_forward_pass_and_keep_their_order():
    sizes = []

    def double(x):
        sizes.append(len(x))
        return x * 2

    batcher = Batcher({"embed": double}, max_batch=64, max_wait_s=0.5)

    async def main():
        return await asyncio.gather(*(batcher.run("embed", [np.full(3, i, np.float32)], 10) for i in range(8)))

    try:
        out = asyncio.run(main())
    finally:
        batcher.close()
    assert [float(o[0][0]) for o in out] == [2.0 * i for i in range(8)]
    assert sizes == [8]


def test_batches_are_capped_and_tasks_not_mixed():
    seen = []
    batcher = Batcher({"a": lambda x: (seen.append(("a", len(x))), x)[1],
                       "b": lambda x: (seen.append(("b", len(x))), x)[1]}, max_batch=3, max_wait_s=0.2)

    async def main():
        arrays = [np.zeros(2, np.float32)] * 4
        await asyncio.gather(batcher.run("a", arrays, 10), batcher.run("b", arrays[:2], 10))

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert sum(n for t, n in seen if t == "a") == 4 and sum(n for t, n in seen if t == "b") == 2
    assert max(n for _, n in seen) <= 3


def test_full_queue_answers_overloaded_with_retry_after():
    gate = threading.Event()
    batcher = Batcher({"embed": lambda x: (gate.wait(5), x)[1]}, max_batch=1, max_wait_s=0, max_queue=2)

    async def main():
        first = asyncio.ensure_future(batcher.run("embed", [np.zeros(1, np.float32)], 10))
        await asyncio.sleep(0.2)  # the worker holds the first image, the queue is empty again
        with pytest.raises(Overloaded) as e:
            await batcher.run("embed", [np.zeros(1, np.float32)] * 3, 10)
        assert int(e.value.headers["Retry-After"]) >= 1 and e.value.status == 429
        gate.set()
        await first

    try:
        asyncio.run(main())
    finally:
        gate.set()
        batcher.close()


def test_a_slow_model_times_out_and_the_batcher_keeps_working():
    gate = threading.Event()
    batcher = Batcher({"embed": lambda x: (gate.wait(5), x)[1]}, max_batch=4, max_wait_s=0)

    async def main():
        with pytest.raises(TimedOut):
            await batcher.run("embed", [np.zeros(1, np.float32)], 0.2)
        gate.set()
        return await batcher.run("embed", [np.ones(1, np.float32)], 5)

    try:
        out = asyncio.run(main())
    finally:
        gate.set()
        batcher.close()
    assert float(out[0][0]) == 1.0
