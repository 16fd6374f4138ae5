"""The one training loop every method runs in.

Per step: views -> method.forward -> loss -> backward -> method.before_optimizer_step -> optimizer ->
method.on_step_end. Around it: LR / weight-decay schedules, bf16 autocast and channels_last on CUDA,
optional torch.compile, DDP through torchrun (gloo on CPU, nccl on CUDA), metrics as JSON lines,
atomic checkpoints and exact resume (same step, schedules, RNG, queues and memory banks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from training import distributed as dist_utils
from training.augment import CPUViewMaker, GPUViewMaker, with_color_strength
from training.checkpoint import LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.config import TrainConfig, build_method_config
from training.contrastive_crop import ContrastiveCrop
from training.data import ImageData, ViewDataset, collate_views, epoch_indices, load_dataset
from training.errors import CheckpointError, ConfigError
from training.methods import Method, get_method
from training.optim import build_optimizer, cosine_with_warmup, early_phase_steps, set_lr
from training.syncbn import convert_sync_batchnorm
from zoo.atomic import atomic_write, write_json_atomic
from zoo.backbones import build_encoder
from zoo.folder import save_encoder

log = logging.getLogger(__name__)
StepCallback = Callable[["Trainer", int, dict[str, float]], None]


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda")
    return device


class Trainer:
    """Builds the data, encoder, method and optimizer a `TrainConfig` describes, and runs them."""

    def __init__(self, cfg: TrainConfig, callbacks: list[StepCallback] | None = None,
                 dataset: ImageData | None = None):
        cfg.validate()
        self.cfg = cfg
        self.callbacks = list(callbacks or [])
        self.device = resolve_device(cfg.device)
        dist_utils.init_from_env(self.device)
        if self.device == "cuda" and dist_utils.is_distributed():
            self.device = f"cuda:{torch.cuda.current_device()}"
        self.world = dist_utils.world_size()
        self.rank = dist_utils.rank()
        self.out = Path(cfg.out)
        self.method_cls = get_method(cfg.method)  # fails early on an unknown name
        self.method_cfg = build_method_config(self.method_cls.config_class, cfg.method_options)

        torch.manual_seed(cfg.seed)
        self.data = dataset if dataset is not None else load_dataset(cfg.data, "train", cfg.data_dir, cfg.limit_train)
        self.global_batch = cfg.batch_size * self.world
        self.steps_per_epoch = len(self.data) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(self.data)} training images cannot fill one global batch of {self.global_batch}; "
                              "lower --batch-size or raise --limit-train")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.image_size = cfg.image_size or self.data.image_size or 224

        encoder = build_encoder(cfg.arch, image_size=self.image_size, dataset=self.data.name)
        self.method: Method = self.method_cls(encoder, self.method_cfg)
        self.method.dataset_size = len(self.data)
        if cfg.sync_bn and self.world > 1:
            self.method = convert_sync_batchnorm(self.method, self.device)
        cuda = self.device.startswith("cuda")
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else not encoder.is_vit
        self.method.to(self.device)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.amp = cfg.amp if cfg.amp is not None else cuda
        self.gpu_augment = (cfg.gpu_augment if cfg.gpu_augment is not None else cuda) and self.data.in_memory
        # Crops that depend on the image (ContrastiveCrop's boxes) are made per sample on the CPU.
        self.crop = ContrastiveCrop(len(self.data), cfg.epochs) if cfg.crop == "contrastive" else None
        if self.crop is not None and self.gpu_augment:
            log.info("--crop contrastive makes views on the CPU (per-image boxes); GPU augmentation is off")
            self.gpu_augment = False

        self.view_spec = with_color_strength(self.method.view_spec(self.image_size), cfg.color_strength)
        mean, std = encoder.preprocessing.mean, encoder.preprocessing.std
        self.cpu_views = CPUViewMaker(self.view_spec, mean, std, crop_fn=self.method_crop_fn())
        self.gpu_views = GPUViewMaker(self.view_spec, mean, std).to(self.device) if self.gpu_augment else None

        mc = self.method_cfg
        self.optimizer_name = cfg.optimizer or mc.optimizer
        self.base_lr = cfg.lr if cfg.lr is not None else mc.base_lr * self.global_batch / 256
        self.weight_decay = cfg.weight_decay if cfg.weight_decay is not None else mc.weight_decay
        warmup_epochs = cfg.warmup_epochs if cfg.warmup_epochs is not None else mc.warmup_epochs
        self.warmup_steps = early_phase_steps(warmup_epochs, self.steps_per_epoch, self.total_steps)
        self.optimizer = build_optimizer(self.optimizer_name, self.method.param_groups(self.weight_decay),
                                         self.base_lr, mc.momentum, self.device)
        for g in self.optimizer.param_groups:
            g["base_weight_decay"] = g["weight_decay"]

        self.model: nn.Module = self.method
        if self.world > 1:
            self.method.gather = dist_utils.gather_with_grad
            ddp_kwargs: dict[str, Any] = {"broadcast_buffers": False, "find_unused_parameters": False}
            if cuda:
                ddp_kwargs["device_ids"] = [torch.cuda.current_device()]
            self.model = nn.parallel.DistributedDataParallel(self.method, **ddp_kwargs)
        self.step_fn: nn.Module = torch.compile(self.model) if cfg.compile else self.model
        # Per-sample augmentation is as costly as the model on a CPU: worker processes (one thread each)
        # overlap it with the step instead of fighting the step for the same threads.
        self.num_workers = cfg.num_workers if cfg.num_workers is not None else min(8, max(1, (os.cpu_count() or 2) - 1))
        self.step = 0
        self.metrics_path = self.out / "metrics.jsonl"

    # ----------------------------------------------------------------------------------------------
    def method_crop_fn(self) -> Any:
        return self.crop

    def _on_epoch_start(self, epoch: int) -> None:
        """Per-epoch state of the view pipeline, refreshed before the epoch's loader is made."""
        if self.crop is not None and self.crop.due(epoch):
            self.crop.refresh(self.method.encoder, self.data, self.image_size, self.device, epoch)

    def fit(self) -> Path:
        """Train to the end (or `max_steps`), checkpointing on the way; returns the encoder folder."""
        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self._resume()
        elif self.rank == 0:
            if (self.out / LAST).exists():
                raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
            self.metrics_path.unlink(missing_ok=True)
            write_json_atomic(self.out / "train_config.json", self._run_info())
        self.method.on_train_start(self.total_steps, self.steps_per_epoch)
        self.method.train()
        stop_at = min(self.total_steps, cfg.max_steps) if cfg.max_steps else self.total_steps
        bar = tqdm(total=stop_at, initial=self.step, disable=not (cfg.progress and self.rank == 0),
                   desc=f"{cfg.method} {cfg.arch}", unit="step", dynamic_ncols=True)
        t_last, seen = time.perf_counter(), 0
        with bar:
            while self.step < stop_at:
                epoch, skip = divmod(self.step, self.steps_per_epoch)
                self._on_epoch_start(epoch)
                for views, index in self._batches(epoch, skip):
                    logs = self._train_step(views, index)
                    self.step += 1
                    seen += self.global_batch
                    if self.step % cfg.log_every == 0 or self.step == stop_at:
                        now = time.perf_counter()
                        logs = {k: float(v) for k, v in logs.items()}
                        logs["images_per_s"] = seen / max(now - t_last, 1e-9)
                        t_last, seen = now, 0
                        self._log(epoch, logs)
                        bar.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{logs['images_per_s']:.0f}")
                    bar.update(1)
                    for cb in self.callbacks:
                        cb(self, self.step, logs)
                    if self.step % cfg.checkpoint_every == 0 or self.step == stop_at:
                        self.save()
                    if self.step >= stop_at:
                        break
        if self.step >= self.total_steps:
            return self.export()
        return self.out

    def _train_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        step = self.step
        lr = cosine_with_warmup(step, self.total_steps, self.warmup_steps, self.base_lr)
        set_lr(self.optimizer, lr)
        final_wd = self.method_cfg.final_weight_decay
        if final_wd is not None:
            for g in self.optimizer.param_groups:
                if g["base_weight_decay"] > 0:
                    g["weight_decay"] = cosine_with_warmup(step, self.total_steps, 0, g["base_weight_decay"], final_wd)
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.amp and
                    self.device.startswith("cuda") else
                    torch.autocast(device_type="cpu", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext())
        with autocast:
            out = self.step_fn(views, step, index)
        loss = out["loss"]
        if not torch.isfinite(loss.detach()).all() and self.device == "cpu":
            raise FloatingPointError(f"loss is {float(loss)} at step {step}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.before_optimizer_step(step, self.steps_per_epoch)
        self.optimizer.step()
        self.method.on_step_end(step, self.total_steps)
        return {**{k: v.detach() for k, v in out.items()}, "lr": torch.tensor(lr)}

    def _batches(self, epoch: int, skip_batches: int):
        b = self.cfg.batch_size
        order = epoch_indices(len(self.data), epoch, self.cfg.seed, self.rank, self.world, b)[skip_batches * b:]
        cuda = self.device.startswith("cuda")
        if self.gpu_views is not None:
            ds: Any = _RawImages(self.data)
            collate = None
        else:
            ds = ViewDataset(self.data, self.cpu_views, self.cfg.seed)
            ds.set_epoch(epoch)
            collate = collate_views
        loader = DataLoader(Subset(ds, order), batch_size=b, shuffle=False, drop_last=True,
                            num_workers=self.num_workers, collate_fn=collate, pin_memory=cuda,
                            persistent_workers=False,
                            # its own generator: creating a loader must not draw from the global RNG,
                            # or a resumed run's model randomness would shift
                            generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        for batch in loader:
            if self.gpu_views is not None:
                images, _, index = batch
                views = self.gpu_views(images.to(self.device, non_blocking=True))
            else:
                views, _, index = batch
                views = [v.to(self.device, non_blocking=True) for v in views]
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            yield views, index.to(self.device, non_blocking=True)

    def _log(self, epoch: int, logs: dict[str, float]) -> None:
        if self.rank != 0:
            return
        record = {"step": self.step, "epoch": epoch, **logs}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # Checkpoints --------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "method_name": self.cfg.method, "arch": self.cfg.arch,
                "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(), "config": self.cfg.to_dict(),
                **({"crop": self.crop.state_dict()} if self.crop is not None else {})}

    def save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.out, self.state())
        if dist_utils.is_distributed():
            torch.distributed.barrier()

    def _resume(self) -> None:
        state = load_checkpoint(self.out / LAST)
        if state.get("method_name") != self.cfg.method or state.get("arch") != self.cfg.arch:
            raise CheckpointError(
                f"{self.out / LAST} is a {state.get('method_name')}/{state.get('arch')} run, not "
                f"{self.cfg.method}/{self.cfg.arch}; resume with the same --method and --arch")
        try:
            self.method.load_state_dict(state["method"])
        except RuntimeError as e:
            raise CheckpointError(f"{self.out / LAST} does not fit this model: {str(e).splitlines()[0]}") from e
        self.optimizer.load_state_dict(state["optimizer"])
        if self.crop is not None and "crop" in state:
            self.crop.load_state_dict(state["crop"])
        for g in self.optimizer.param_groups:
            g.setdefault("base_weight_decay", g["weight_decay"])
        self.step = int(state["step"])
        set_rng_state(state["rng"])
        if self.rank == 0:
            self._truncate_metrics(self.step)
        log.info("resumed %s at step %d of %d", self.out, self.step, self.total_steps)

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines of steps after the checkpoint: they are about to be trained again."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        atomic_write(self.metrics_path, lambda p: p.write_text("".join(x + "\n" for x in kept)))

    # Export ---------------------------------------------------------------------------------------------
    def _run_info(self) -> dict[str, Any]:
        import dataclasses

        return {"train_config": self.cfg.to_dict(), "method_config": dataclasses.asdict(self.method_cfg),
                "optimizer": self.optimizer_name, "lr": self.base_lr, "weight_decay": self.weight_decay,
                "warmup_steps": self.warmup_steps, "global_batch": self.global_batch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "world_size": self.world, "device": self.device, "train_images": len(self.data)}

    def export(self) -> Path:
        """Write the encoder the paper evaluates as a model folder `OUT/encoder` (rank 0 only)."""
        folder = self.out / "encoder"
        if self.rank == 0:
            encoder = self.method.encoder_for_export()
            meta = {"name": f"{self.cfg.method}_{self.cfg.arch}_{self.data.name}".lower(),
                    "method": self.cfg.method, "dataset": self.data.name, "epochs": self.cfg.epochs,
                    "steps": self.step, "train_config": self._run_info()}
            save_encoder(_plain_copy(encoder), folder, meta)
        if dist_utils.is_distributed():
            torch.distributed.barrier()
        return folder


class _RawImages(torch.utils.data.Dataset):
    """uint8 CHW images, for views made on the GPU."""

    def __init__(self, data: ImageData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return self.data.image(i), self.data.label(i), i


def _plain_copy(encoder: nn.Module) -> Any:
    """The encoder with cross-process batch norm swapped back for plain batch norm (same weights)."""
    import copy

    from training.syncbn import GlobalBatchNorm

    enc = copy.deepcopy(encoder).cpu().to(memory_format=torch.contiguous_format)
    for name, mod in list(enc.named_modules()):
        if isinstance(mod, GlobalBatchNorm | nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(mod.num_features, mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
            bn.load_state_dict(mod.state_dict())
            parent = enc.get_submodule(name.rsplit(".", 1)[0]) if "." in name else enc
            setattr(parent, name.rsplit(".", 1)[-1], bn)
    return enc

