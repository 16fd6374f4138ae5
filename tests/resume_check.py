"""An interrupted-then-resumed tiny run next to an uninterrupted one; `test_training` calls it in-process,
and runs it as a script in a fresh interpreter for the case with DataLoader worker processes.

Workers are forked from the training process, as PyTorch does on Linux. A pytest session is full of
threads (uvicorn servers, thread pools, progress monitors), and a fork from it can hang the child on a lock
one of them held; the training CLI runs in a process of its own, so the worker case is tested in one too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from training.checkpoint import LAST, load_checkpoint
from training.config import TrainConfig
from training.data import ImageData
from training.trainer import Trainer


class Interrupt(Exception):
    pass


def tiny_cfg(tmp_path: Path, method: str = "simclr", **kw) -> TrainConfig:
    # In-process loading and NCHW keep these tiny runs fast.
    base = dict(method=method, arch="resnet18_cifar", data="tiny", out=str(tmp_path / "run"), epochs=2,
                batch_size=16, image_size=16, checkpoint_every=3, log_every=1, progress=False, seed=3,
                num_workers=0, channels_last=False,
                method_options={"queue_size": 64} if method == "mocov2" else {})
    base.update(kw)
    return TrainConfig(**base)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def interrupted_and_resumed(tmp_path: Path, data: ImageData, method: str, workers: int) -> dict:
    """Runs 8 steps straight, and 8 steps interrupted at step 5 (last checkpoint: 3) then resumed."""
    straight = Trainer(tiny_cfg(tmp_path / "a", method, num_workers=workers), dataset=data)
    straight.fit()

    def crash_after_5(trainer, step, logs):
        if step == 5:
            raise Interrupt

    try:
        Trainer(tiny_cfg(tmp_path / "b", method, num_workers=workers), dataset=data,
                callbacks=[crash_after_5]).fit()
        raise AssertionError("the run was not interrupted")
    except Interrupt:
        pass
    checkpoint_step = load_checkpoint(tmp_path / "b" / "run" / LAST)["step"]
    resumed = Trainer(tiny_cfg(tmp_path / "b", method, resume=True, num_workers=workers), dataset=data)
    resumed.fit()
    sa, sb = straight.method.state_dict(), resumed.method.state_dict()
    return {"straight": losses(tmp_path / "a" / "run"), "resumed": losses(tmp_path / "b" / "run"),
            "checkpoint_step": checkpoint_step,
            "same_state": sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)}


if __name__ == "__main__":
    from tiny_images import make_tiny_data

    out_dir, method, workers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    print(json.dumps(interrupted_and_resumed(out_dir, make_tiny_data(), method, workers)))
