"""Dynamic micro-batching: images from many requests share one forward pass (Triton / infinity style).

Request handlers decode images in a thread pool, then `await batcher.run(task, arrays)`. One worker thread
takes the oldest waiting image, waits at most `max_wait` for up to `max_batch` images of the same task, runs
them as one batch and hands each caller its rows. A full queue is refused at once (429 with Retry-After)
rather than letting latency grow without bound; a caller that waits longer than its timeout gets 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.errors import Overloaded, TimedOut
from service.metrics import Metrics

log = logging.getLogger("service.batcher")


@dataclass
class _Item:
    task: str
    array: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future, value: object, error: BaseException | None) -> None:
    if future.done():  # the caller timed out or went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class Batcher:
    """`tasks` maps a task name ("embed", "attention") to a function `(B, ...) float32 -> (B, ...)`."""

    def __init__(self, tasks: dict[str, Callable[[np.ndarray], np.ndarray]], max_batch: int = 64,
                 max_wait_s: float = 0.005, max_queue: int = 1024, metrics: Metrics | None = None):
        self.tasks = tasks
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._rate = 0.0  # images/s of recent batches, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    async def run(self, task: str, arrays: list[np.ndarray], timeout_s: float) -> list[np.ndarray]:
        """The model's output row for each array, in order."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}")
        loop = asyncio.get_running_loop()
        items = [_Item(task, a, loop.create_future(), loop) for a in arrays]
        with self._cond:
            if len(self._queue) + len(items) > self.max_queue:
                self.metrics.rejected.inc(len(items))
                wait = max(1, round(len(self._queue) / self._rate)) if self._rate > 0 else 1
                raise Overloaded(f"the server is busy ({len(self._queue)} images queued, limit {self.max_queue}); "
                                 f"retry in {wait} s", headers={"Retry-After": str(wait)})
            self._queue.extend(items)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(i.future for i in items)), timeout_s))
        except TimeoutError:
            self.metrics.timeouts.inc()
            raise TimedOut(f"no answer from the model within {timeout_s:g} s (the server is overloaded); "
                           "retry later", headers={"Retry-After": "1"}) from None

    # worker thread ------------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Item]:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return []
            task = self._queue[0].task
            deadline = self._queue[0].enqueued + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._stopped:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Item] = []
            rest: deque[_Item] = deque()
            while self._queue:
                item = self._queue.popleft()
                if item.future.done():  # cancelled by a timeout
                    continue
                if item.task == task and len(batch) < self.max_batch:
                    batch.append(item)
                else:
                    rest.append(item)
            self._queue = rest
            self.metrics.queue_depth.set(len(self._queue))
            return batch

    def _loop(self) -> None:
        while not self._stopped:
            batch = self._take_batch()
            if not batch:
                continue
            task = batch[0].task
            start = time.perf_counter()
            try:
                out = self.tasks[task](np.stack([i.array for i in batch]))
                error = None
            except Exception as e:  # a bug or a device failure: every caller of the batch gets it
                log.exception("forward pass of %d images failed", len(batch))
                out, error = None, e
            took = time.perf_counter() - start
            self._rate = 0.8 * self._rate + 0.2 * (len(batch) / max(took, 1e-6))
            self.metrics.batch_size.labels(task).observe(len(batch))
            self.metrics.forward_seconds.labels(task).observe(took)
            self.metrics.images.labels(task).inc(len(batch))
            for k, item in enumerate(batch):
                item.loop.call_soon_threadsafe(_resolve, item.future, None if out is None else out[k], error)
