"""Size a run to a wall-clock budget: time a few steps, then set epochs and the training subset so that the
schedules (warm-up, cosine, momentum) span exactly the steps the budget allows. A cosine that never decays
because the budget ran out first gives a worse model than a shorter, complete schedule."""

from __future__ import annotations

import dataclasses
import math
import shutil
import time

from training.config import TrainConfig
from training.data import ImageData
from training.trainer import Trainer


def seconds_per_step(cfg: TrainConfig, data: ImageData, probe_steps: int = 3) -> float:
    """Mean time of `probe_steps` steps, after one warm-up step, in a throw-away run folder."""
    probe = dataclasses.replace(cfg, out=cfg.out + "-probe", epochs=1, max_steps=probe_steps + 1, resume=False,
                                checkpoint_every=10**9, progress=False, limit_train=None)
    shutil.rmtree(probe.out, ignore_errors=True)
    times: list[float] = []
    last = [time.perf_counter()]

    def clock(trainer: Trainer, step: int, logs: dict) -> None:
        now = time.perf_counter()
        if step > 1:
            times.append(now - last[0])
        last[0] = now

    Trainer(probe, callbacks=[clock], dataset=data).fit()
    shutil.rmtree(probe.out, ignore_errors=True)
    return sum(times) / len(times)


def budget_config(cfg: TrainConfig, data: ImageData, minutes: float, s_per_step: float,
                  min_epochs: int = 1) -> TrainConfig:
    """`cfg` with epochs and limit_train set so the run takes about `minutes` at `s_per_step`, in at least
    `min_epochs` passes over a prefix of `data` (memory-bank methods need several)."""
    steps = max(1, int(minutes * 60 / s_per_step))
    images = steps * cfg.batch_size
    epochs = max(min_epochs, math.ceil(images / len(data)))
    limit = min(len(data), math.ceil(images / epochs / cfg.batch_size) * cfg.batch_size)
    return dataclasses.replace(cfg, epochs=epochs, limit_train=limit)
