"""SwAV, BYOL, SimSiam, DINO and Barlow Twins: each trains through the real Trainer, exports a loadable
encoder and resumes exactly; each loss matches lightly's implementation (or the paper's formula) on random
inputs; Sinkhorn, DINO's centre and schedules match their formulas."""

from __future__ import annotations

import dataclasses
import json
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
from training.config import DINOConfig, TrainConfig
from training.data import ImageData
from training.losses import (
    barlow_twins_loss,
    byol_regression,
    dino_center_update,
    dino_loss,
    negative_cosine,
    sinkhorn,
    swav_loss,
)
from training.methods.dino import DINO, clip_per_parameter
from training.methods.multicrop import multicrop_forward, same_size_groups
from training.optim import early_phase_steps
from training.trainer import Trainer
from zoo.backbones import build_encoder

lightly_loss = pytest.importorskip("lightly.loss")

# --- training through the real Trainer -------------------------------------------------------------------------

TINY = {
    "swav": ("resnet18_cifar", {"num_prototypes": 16, "proj_hidden_dim": 32, "proj_dim": 16, "num_local_crops": 1,
                                "queue_length": 8, "queue_start_epoch": 0}),
    "byol": ("resnet18_cifar", {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32}),
    "simsiam": ("resnet18_cifar", {"proj_dim": 32, "pred_hidden_dim": 8}),
    "barlowtwins": ("resnet18_cifar", {"proj_dim": 32}),
    "dino": ("vit_tiny_p4", {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_local_crops": 1,
                             "warmup_teacher_temp_epochs": 2, "teacher_temp": 0.07}),
    "dino-resnet": ("resnet18_cifar", {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_local_crops": 1}),
}
# Parameters frozen during the first epoch (SwAV's prototypes, DINO's last layer).
FROZEN_IN_EPOCH_1 = {"swav": "prototypes.weight", "dino": "head.last_layer.weight_v",
                     "dino-resnet": "head.last_layer.weight_v"}
STEPS_PER_EPOCH, EPOCHS, BATCH = 2, 2, 4
TOTAL = STEPS_PER_EPOCH * EPOCHS


@pytest.fixture(scope="module")
def tiny_data() -> ImageData:
    rng = np.random.default_rng(0)
    n = STEPS_PER_EPOCH * BATCH
    images = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    return ImageData("tiny", images, rng.integers(0, 2, size=n), ["a", "b"])


def _config(case: str, out) -> TrainConfig:
    arch, options = TINY[case]
    return TrainConfig(method=case.split("-")[0], arch=arch, data="tiny", out=str(out), epochs=EPOCHS,
                       batch_size=BATCH, image_size=16, device="cpu", seed=0, checkpoint_every=2, log_every=1,
                       progress=False, num_workers=0, channels_last=False, method_options=dict(options))


class _Snapshots:
    """Records one parameter after every step (from a Trainer callback)."""

    def __init__(self, name: str):
        self.name, self.values = name, {}

    def __call__(self, trainer, step, logs):
        self.values[step] = trainer.method.get_parameter(self.name).detach().clone()


_RUNS: dict[str, tuple[Trainer, object, _Snapshots | None, torch.Tensor | None]] = {}


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """One uninterrupted run per case, shared by the tests below: (trainer, encoder folder, snapshots, initial)."""

    def get(case: str):
        if case not in _RUNS:
            out = tmp_path_factory.mktemp(case) / "full"
            snaps = _Snapshots(FROZEN_IN_EPOCH_1[case]) if case in FROZEN_IN_EPOCH_1 else None
            trainer = Trainer(_config(case, out), callbacks=[snaps] if snaps else [], dataset=tiny_data)
            initial = trainer.method.get_parameter(snaps.name).detach().clone() if snaps else None
            _RUNS[case] = (trainer, trainer.fit(), snaps, initial)
        return _RUNS[case]

    return get


def _losses(run) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


class _Interrupt(Exception):
    pass


def _stop_after(k: int):
    def callback(trainer, step, logs):
        if step == k:
            raise _Interrupt

    return callback


@pytest.mark.parametrize("case", list(TINY))
def test_method_trains_exports_and_resumes_exactly(case, trained, tiny_data, tmp_path):
    full, folder, _, _ = trained(case)
    reference = _losses(full.out)
    assert [s for s, _ in reference] == list(range(1, TOTAL + 1))
    assert all(math.isfinite(v) for _, v in reference)

    encoder = zoo.load(str(folder), device="cpu")
    x = torch.randn(3, 3, 16, 16)
    exported = full.method.encoder_for_export().eval()
    with torch.no_grad():
        assert encoder(x).shape == (3, exported.embed_dim)
        assert torch.allclose(encoder(x), exported(x), atol=1e-5)

    # Interrupted after step 3 (last checkpoint at step 2), then resumed: the same losses, step for step.
    with pytest.raises(_Interrupt):
        Trainer(_config(case, tmp_path / "cut"), callbacks=[_stop_after(3)], dataset=tiny_data).fit()
    cfg = _config(case, tmp_path / "cut")
    cfg.resume = True
    Trainer(cfg, dataset=tiny_data).fit()
    assert _losses(tmp_path / "cut") == reference


@pytest.mark.parametrize("case", ["swav", "dino"])
def test_layer_is_frozen_during_the_first_epoch_only(case, tiny_data, tmp_path):
    # Ten one-step epochs: the first epoch is a tenth of the run, so the paper's rule applies uncapped.
    cfg = dataclasses.replace(_config(case, tmp_path), epochs=10, limit_train=BATCH)
    snaps = _Snapshots(FROZEN_IN_EPOCH_1[case])
    trainer = Trainer(cfg, callbacks=[snaps], dataset=tiny_data)
    initial = trainer.method.get_parameter(snaps.name).detach().clone()
    trainer.fit()
    assert torch.allclose(snaps.values[1], initial, atol=1e-6)  # SwAV renormalises: rounding only
    assert not torch.allclose(snaps.values[10], initial, atol=1e-6)


def test_a_short_run_is_not_frozen_throughout(trained):
    # Four steps in all: "the first epoch" would be half of it, capped at a tenth (none).
    _, _, snaps, initial = trained("dino")
    assert not torch.allclose(snaps.values[1], initial, atol=1e-6)
    assert early_phase_steps(1, 2, 4) == 0 and early_phase_steps(1, 100, 2000) == 100


def test_swav_prototypes_stay_unit_norm_and_queue_fills(trained):
    method = trained("swav")[0].method
    w = method.prototypes.weight.detach()
    assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0]), atol=1e-6)
    assert method.queue.abs().sum(dim=-1).gt(0).all()  # every slot written


def test_dino_exports_the_teacher_not_the_student(trained):
    method = trained("dino")[0].method
    assert method.encoder_for_export() is method.teacher_encoder
    student = dict(method.encoder.named_parameters())
    assert any(not torch.equal(p, student[n]) for n, p in method.teacher_encoder.named_parameters())
    assert method.center.abs().sum() > 0


def test_simsiam_predictor_keeps_its_initial_lr(trained):
    trainer = trained("simsiam")[0]
    fixed = [g for g in trainer.optimizer.param_groups if g.get("fixed_lr")]
    scheduled = [g for g in trainer.optimizer.param_groups if not g.get("fixed_lr")]
    assert fixed and all(g["lr"] == trainer.base_lr for g in fixed)
    assert all(g["lr"] < trainer.base_lr for g in scheduled)  # cosine-decayed


def test_barlow_twins_biases_get_the_smaller_learning_rate(trained):
    trainer = trained("barlowtwins")[0]
    scales = sorted(g["lr_scale"] for g in trainer.optimizer.param_groups)
    assert scales == pytest.approx([0.0048 / 0.2, 1.0])


# --- Sinkhorn and SwAV -----------------------------------------------------------------------------------------

def test_sinkhorn_matches_lightly_and_rows_sum_to_one():
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn

    scores = F.normalize(torch.randn(32, 10), dim=1)
    q = sinkhorn(scores, iterations=3, epsilon=0.05)
    assert torch.allclose(q, lightly_sinkhorn(scores, iterations=3, epsilon=0.05), atol=1e-6)
    assert torch.allclose(q.sum(dim=1), torch.ones(32), atol=1e-5)  # each sample: one unit of mass


def test_sinkhorn_is_doubly_stochastic_when_converged():
    b, k = 24, 6
    scores = F.normalize(torch.randn(b, k), dim=1)
    q = sinkhorn(scores, iterations=200, epsilon=0.05)
    # Before the final rescale by B: prototypes' sums are 1/K, samples' sums 1/B.
    p = q / b
    assert torch.allclose(p.sum(dim=0), torch.full((k,), 1 / k), atol=1e-5)
    assert torch.allclose(p.sum(dim=1), torch.full((b,), 1 / b), atol=1e-6)
    assert (q >= 0).all()


def test_sinkhorn_split_over_processes_equals_one_process():
    """Two 'processes' (threads) each hold half the batch; the all-reduce hook sums across them."""
    scores = F.normalize(torch.randn(16, 5), dim=1)
    halves = scores.chunk(2)
    barrier, slots = threading.Barrier(2), [None, None]
    results: list[torch.Tensor | None] = [None, None]

    def make_all_reduce(rank):
        def all_reduce(x):
            slots[rank] = x.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return all_reduce

    def run(rank):
        results[rank] = sinkhorn(halves[rank], 3, 0.05, make_all_reduce(rank), world_size=2)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.allclose(torch.cat(results), sinkhorn(scores, 3, 0.05), atol=1e-6)


@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_loss_matches_lightly(with_queue):
    torch.manual_seed(0)
    b, k = 8, 12
    views = [F.normalize(torch.randn(b, 16), dim=1) for _ in range(6)]
    protos = F.normalize(torch.randn(k, 16), dim=1)
    scores = [v @ protos.T for v in views]
    queue = [F.normalize(torch.randn(20, 16), dim=1) @ protos.T for _ in range(2)] if with_queue else None
    # The authors put the queue before the batch and keep the last b codes; lightly appends it after.
    codes = [sinkhorn(torch.cat([queue[i], scores[i]]) if queue else scores[i])[-b:] for i in range(2)]
    ours = swav_loss(scores, codes, temperature=0.1)
    theirs = lightly_loss.SwaVLoss(temperature=0.1)(scores[:2], scores[2:], queue)
    assert torch.allclose(ours, theirs.squeeze(), atol=1e-5)


# --- DINO ------------------------------------------------------------------------------------------------------

def test_dino_loss_and_center_update_match_lightly():
    torch.manual_seed(0)
    b, k = 6, 32
    student = [torch.randn(b, k) for _ in range(5)]
    teacher = [torch.randn(b, k) for _ in range(2)]
    ref = lightly_loss.DINOLoss(output_dim=k, teacher_temp=0.05, student_temp=0.1, center_momentum=0.9)
    center = torch.randn(1, k) * 0.1
    ref.center.copy_(center.view(1, 1, k))
    theirs = ref(teacher, student, teacher_temp=0.05)  # lightly updates its centre after the loss
    ours = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.05)
    assert torch.allclose(ours, theirs, atol=1e-5)
    new_center = dino_center_update(center, torch.cat(teacher), momentum=0.9)
    assert torch.allclose(new_center, ref.center.view(1, k), atol=1e-6)
    formula = 0.9 * center + 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True)
    assert torch.allclose(new_center, formula, atol=1e-6)


def test_dino_teacher_temperature_schedule_follows_the_formula():
    cfg = DINOConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, out_dim=8,
                     hidden_dim=8, bottleneck_dim=8)
    method = DINO(build_encoder("resnet18_cifar", image_size=16), cfg)
    reference = lightly_loss.DINOLoss(output_dim=8, warmup_teacher_temp=0.04, teacher_temp=0.07,
                                      warmup_teacher_temp_epochs=30).teacher_temp_schedule
    for epoch in (0, 1, 15, 29, 30, 100):
        expected = float(reference[epoch]) if epoch < 30 else 0.07
        assert method.teacher_temperature(epoch) == pytest.approx(expected, abs=1e-7)
        if epoch < 30:
            assert method.teacher_temperature(epoch) == pytest.approx(0.04 + 0.03 * epoch / 29)
    assert DINOConfig().warmup_teacher_temp == DINOConfig().teacher_temp == 0.04


def test_dino_clipping_is_per_parameter():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_per_parameter([a, b], 3.0)
    assert a.grad.norm() == pytest.approx(3.0, rel=1e-5)
    assert torch.equal(b.grad, torch.tensor([0.3, 0.4]))  # under the limit: untouched


def test_ema_momentum_rises_from_base_to_one_with_a_cosine():
    from training.config import BYOLConfig
    from training.methods.byol import BYOL

    byol = BYOL(build_encoder("resnet18_cifar", image_size=16), BYOLConfig(proj_hidden_dim=8, proj_dim=4,
                                                                        pred_hidden_dim=8))
    total = 100
    for k in (0, 25, 50, 100):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * k / total) + 1) / 2
        assert byol.target_momentum(k, total) == pytest.approx(expected, abs=1e-12)


# --- BYOL, SimSiam, Barlow Twins ---------------------------------------------------------------------------------

def test_negative_cosine_and_byol_regression_match_lightly_and_formula():
    torch.manual_seed(0)
    p, z = torch.randn(10, 16), torch.randn(10, 16)
    assert torch.allclose(negative_cosine(p, z), lightly_loss.NegativeCosineSimilarity()(p, z), atol=1e-6)
    naive = sum(float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum()) for i in range(10)) / 10
    assert float(byol_regression(p, z)) == pytest.approx(naive, abs=1e-5)


def test_barlow_twins_loss_matches_lightly():
    torch.manual_seed(0)
    z1, z2 = torch.randn(32, 24), torch.randn(32, 24) + 0.5
    theirs = lightly_loss.BarlowTwinsLoss(lambda_param=0.0051)(z1, z2)
    assert torch.allclose(barlow_twins_loss(z1, z2, 0.0051), theirs, atol=1e-5)


def test_barlow_twins_loss_is_zero_for_identical_decorrelated_views():
    z = torch.linalg.qr(torch.randn(64, 8))[0] * 8  # orthogonal columns
    z = z - z.mean(0)
    loss = barlow_twins_loss(z, z, 0.0051, eps=0.0)
    assert float(loss) < 0.05


# --- multi-crop grouping ----------------------------------------------------------------------------------------

def test_multicrop_groups_same_size_views_into_one_pass():
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(3)]
    assert [len(g) for g in same_size_groups(views)] == [2, 3]
    calls = []

    def backbone(x):
        calls.append(x.shape[0])
        return x.mean(dim=(2, 3))

    out = multicrop_forward(backbone, views)
    assert calls == [8, 12]
    assert torch.allclose(out, torch.cat([v.mean(dim=(2, 3)) for v in views]))
