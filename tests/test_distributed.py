"""Data-parallel training on CPU (gloo): gathered negatives, global batch norm, one checkpoint from rank 0."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image

import zoo
from training.config import SimCLRConfig
from training.methods.simclr import SimCLR
from training.syncbn import convert_sync_batchnorm
from zoo.backbones import build_encoder

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_method() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(build_encoder("resnet18_cifar", image_size=16), SimCLRConfig(proj_hidden_dim=64, proj_dim=32))


def fixed_views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from training.distributed import gather_with_grad

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    method = convert_sync_batchnorm(make_method(), "cpu")
    method.gather = gather_with_grad
    model = torch.nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
    n = fixed_views()[0].shape[0] // world
    local = [v[rank * n:(rank + 1) * n] for v in fixed_views()]
    loss = model(local, 0)["loss"]
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    grad = method.encoder.model.conv1.weight.grad
    torch.save({"loss": float(total) / world, "grad": grad.clone()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_process_loss_and_gradients_equal_one_process_with_sync_bn(tmp_path):
    single = make_method()
    loss = single(fixed_views(), 0)["loss"]
    loss.backward()
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(r["loss"] - float(loss.detach())) < 1e-5
        # DDP averages gradients over processes; gathered negatives carry gradients back to their owners.
        assert torch.allclose(r["grad"], single.encoder.model.conv1.weight.grad, atol=1e-5, rtol=1e-4)


def test_torchrun_trains_and_rank0_writes_one_checkpoint(tmp_path):
    data = tmp_path / "images"
    g = np.random.default_rng(0)
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(16):
            Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "training", "fit", "--method", "simclr", "--arch", "resnet18_cifar", "--data", str(data),
           "--image-size", "16", "--batch-size", "4", "--epochs", "1", "--sync-bn", "--no-progress",
           "--log-every", "1", "--out", str(out), "-o", "proj_hidden_dim=32", "-o", "proj_dim=16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]  # 32 images / (2 processes x 4): logged once, by rank 0
    info = json.loads((out / "train_config.json").read_text())
    assert info["world_size"] == 2 and info["global_batch"] == 8
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["checkpoint-last.pt"]
    enc = zoo.load(str(out / "encoder"), device="cpu")
    assert enc(torch.randn(2, 3, 16, 16)).shape == (2, 512)
