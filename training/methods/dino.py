"""DINO (Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin, ICCV 2021, "Emerging Properties in
Self-Supervised Vision Transformers").

Self-distillation without labels: a student (backbone + DINO head) matches, by cross-entropy, the output
distribution of a teacher, an EMA of the student, on other crops of the same image. The teacher sees only
the two global crops; the student sees all crops (multi-crop: "local-to-global"). What prevents collapse
is the pair centring (subtract a running mean of teacher outputs, momentum 0.9) and sharpening (teacher
temperature 0.04 against the student's 0.1). What matters besides: the weight-normalised last layer,
frozen during the first epoch; per-parameter gradient clipping at 3.0; AdamW with weight decay rising
0.04 -> 0.4; teacher momentum 0.996 -> 1. The teacher's backbone is what the authors evaluate and what
this method exports. Works with ViTs (including the small-image `vit_tiny_p4` / `vit_small_p8`) and
ResNets."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from training.augment import ViewSpec, multicrop_for_image
from training.config import DINOConfig
from training.distributed import gather_no_grad
from training.heads import DINOHead
from training.losses import dino_center_update, dino_loss
from training.methods.base import Method, ema_update, momentum_copy
from training.methods.multicrop import multicrop_forward
from training.optim import cosine_with_warmup, early_phase_steps
from zoo.backbones import Encoder

NUM_GLOBAL = 2


class DINO(Method):
    name = "dino"
    config_class = DINOConfig

    def __init__(self, encoder: Encoder, cfg: DINOConfig):
        super().__init__(encoder, cfg)
        self.head = DINOHead(encoder.embed_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                             use_bn=cfg.use_bn_in_head, norm_last_layer=cfg.norm_last_layer)
        self.teacher_encoder = momentum_copy(encoder)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.steps_per_epoch = 1
        self.total_epochs = 1
        self.frozen_steps = 0

    def view_spec(self, image_size: int) -> ViewSpec:
        c = self.cfg
        return multicrop_for_image(image_size, c.num_local_crops, c.local_crop_size, 6, 10, c.global_crops_scale,
                                   c.local_crops_scale, asymmetric=True)

    def momentum_networks(self) -> list[nn.Module]:
        return [self.teacher_encoder, self.teacher_head]

    def encoder_for_export(self) -> Encoder:
        return self.teacher_encoder

    def on_train_start(self, total_steps: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = max(1, total_steps // steps_per_epoch)
        self.frozen_steps = early_phase_steps(self.cfg.freeze_last_layer_epochs, steps_per_epoch, total_steps)

    def teacher_temperature(self, epoch: int) -> float:
        """Linear warm-up from warmup_teacher_temp to teacher_temp over the first epochs, per epoch as the
        authors' `np.linspace` schedule, then constant."""
        c = self.cfg
        w = c.warmup_teacher_temp_epochs
        if epoch >= w:
            return c.teacher_temp
        return c.warmup_teacher_temp + (c.teacher_temp - c.warmup_teacher_temp) * epoch / max(1, w - 1)

    def forward(self, views: list[Tensor], step: int, index: Tensor | None = None) -> dict[str, Tensor]:
        b = views[0].shape[0]
        student = self.head(multicrop_forward(self.encoder, views))
        with torch.no_grad():
            teacher = self.teacher_head(multicrop_forward(self.teacher_encoder, views[:NUM_GLOBAL]))
        temp = self.teacher_temperature(step // self.steps_per_epoch)
        loss = dino_loss(list(student.split(b)), list(teacher.split(b)), self.center, self.cfg.student_temp, temp)
        self.center.copy_(dino_center_update(self.center, teacher, self.cfg.center_momentum, gather_no_grad))
        return {"loss": loss, "teacher_temp": torch.tensor(temp)}

    def before_optimizer_step(self, step: int, steps_per_epoch: int) -> None:
        if self.cfg.clip_grad > 0:
            clip_per_parameter(self.encoder.parameters(), self.cfg.clip_grad)
            clip_per_parameter(self.head.parameters(), self.cfg.clip_grad)
        if step < self.frozen_steps:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step_end(self, step: int, total_steps: int) -> None:
        m = cosine_with_warmup(step, total_steps, 0, self.cfg.momentum_teacher, 1.0)
        ema_update(self.teacher_encoder, self.encoder, m)
        ema_update(self.teacher_head, self.head, m)


@torch.no_grad()
def clip_per_parameter(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """DINO's clipping: each parameter's gradient is scaled to norm <= max_norm on its own (not the
    global norm of torch.nn.utils.clip_grad_norm_)."""
    for p in params:
        if p.grad is not None:
            coef = max_norm / (p.grad.norm() + 1e-6)
            p.grad.mul_(coef.clamp(max=1.0))
