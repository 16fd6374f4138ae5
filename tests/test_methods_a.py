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


def tiny_data(n: int = 16, size: int = 8) -> ImageData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return ImageData("tiny", images, rng.integers(0, 3, size=n).astype(np.int64), ["a", "b", "c"])


def config(out: Path, method: str, **kw: object) -> TrainConfig:
    base = dict(method=method, arch="resnet18_cifar", data="tiny", out=str(out), epochs=1, batch_size=4,
                image_size=8, device="cpu", channels_last=False, num_workers=0, checkpoint_every=2, log_every=1, progress=False,
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
    assert len(seq) == 4 and all(math.isfinite(x) for x in seq)
    encoder = zoo.load(str(folder), device="cpu")
    x = torch.randn(2, 3, 8, 8)
    y = encoder(x)
    assert y.ndim == 2 and y.shape[0] == 2 and torch.isfinite(y).all()
    assert zoo.read_config(folder)["zoo"]["method"] == method


# ContrastiveCrop -----------------------------------------------------------------------------------


def test_contrastive_crop_samples_stay_inside_the_image() -> None:
    from training.contrastive_crop import sample_crop

    torch.manual_seed(0)
    for box in ([0.0, 0.0, 1.0, 1.0], [0.9, 0.9, 1.0, 1.0], [0.0, 0.0, 0.05, 0.05], [0.4, 0.1, 0.6, 0.2]):
        for _ in range(200):
            top, left, h, w = sample_crop(20, 30, box, (0.08, 1.0), (3 / 4, 4 / 3))
            assert 0 <= top and top + h <= 20 and 0 <= left and left + w <= 30 and h > 0 and w > 0


def test_contrastive_crop_centres_follow_the_box() -> None:
    from training.contrastive_crop import sample_crop

    torch.manual_seed(0)
    centres = []
    for _ in range(300):  # small crops, so the clamp to the image does not move their centres
        top, left, h, w = sample_crop(100, 100, [0.2, 0.5, 0.4, 0.9], (0.01, 0.02), (1.0, 1.0))
        centres.append((left + w / 2, top + h / 2))
    c = torch.tensor(centres)
    assert c[:, 0].min() >= 20 - 1 and c[:, 0].max() <= 40 + 1 and c[:, 1].min() >= 50 - 1 and c[:, 1].max() <= 90 + 1
    # Beta(0.6, 0.6) is U-shaped: more centres near the box's edges than in its middle fifth.
    x = (c[:, 0] - 20) / 20
    assert ((x < 0.2) | (x > 0.8)).float().mean() > ((x > 0.4) & (x < 0.6)).float().mean() * 2


def test_boxes_from_heatmaps_enclose_the_hot_cells() -> None:
    from training.contrastive_crop import boxes_from_heatmaps

    heat = torch.zeros(2, 4, 8)
    heat[0, 1:3, 2:5] = 1.0
    heat[1] = 5.0
    heat[1, 3, 7] = 9.0  # constant background sits below the threshold after min-max scaling
    boxes = boxes_from_heatmaps(heat, 0.1)
    assert torch.allclose(boxes[0], torch.tensor([2 / 8, 1 / 4, 5 / 8, 3 / 4]))
    assert torch.allclose(boxes[1], torch.tensor([7 / 8, 3 / 4, 1.0, 1.0]))


def test_contrastive_crop_boxes_update_after_warmup_and_resume_exactly(tmp_path: Path) -> None:
    data = tiny_data(n=8, size=16)
    kw = dict(method="simclr", epochs=3, batch_size=4, image_size=16, crop="contrastive",
              method_options={"proj_hidden_dim": 16, "proj_dim": 8})
    seen: dict[int, int] = {}

    def record(trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        seen[step] = int(trainer.crop.boxes_epoch)

    full = Trainer(config(tmp_path / "full", **kw), callbacks=[record], dataset=data)
    full.fit()
    # 2 steps per epoch; warm-up is epoch 0 (random crops), boxes are computed at the start of epochs 1, 2.
    assert seen == {1: -1, 2: -1, 3: 1, 4: 1, 5: 2, 6: 2}
    assert full.crop.warmup_epochs == 1
    boxes = full.crop.boxes
    assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= 1) & (boxes[:, :2] < boxes[:, 2:])).all()
    # Interrupted in epoch 2 with the last checkpoint at its boundary (step 4, before its refresh): the
    # resumed run must not refresh twice nor crop differently. Mid-epoch resumes are covered above.
    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        Trainer(config(part, **kw), callbacks=[interrupt_after(5)], dataset=data).fit()
    resumed = Trainer(config(part, resume=True, **kw), dataset=data)
    resumed.fit()
    assert losses(part) == losses(tmp_path / "full")
    assert torch.equal(resumed.crop.boxes, full.crop.boxes)


def test_unknown_crop_is_a_clear_error(tmp_path: Path) -> None:
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match="contrastive"):
        config(tmp_path, "simclr", crop="semantic").validate()


# Losses against independent references ------------------------------------------------------------


def test_invariance_spreading_is_ntxent_plus_the_spreading_term() -> None:
    from lightly.loss import NTXentLoss

    from training.losses import invariance_spreading

    torch.manual_seed(0)
    z1, z2, t = torch.randn(6, 5), torch.randn(6, 5), 0.1
    ours = invariance_spreading(z1, z2, t)
    f = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = f.shape[0]
    total = 0.0
    for a in range(n2):  # Ye et al. 2019, eqs. 3-6, one anchor at a time
        p = (a + n2 // 2) % n2
        denom = sum(math.exp(float(f[a] @ f[k]) / t) for k in range(n2) if k != a)
        total -= math.log(math.exp(float(f[a] @ f[p]) / t) / denom)
        for j in range(n2):
            if j not in (a, p):
                total -= math.log(1 - math.exp(float(f[a] @ f[j]) / t) / denom)
    assert abs(float(ours) - total / n2) < 1e-5 * max(1.0, abs(total / n2))
    spread = 0.0
    for a in range(n2):
        p = (a + n2 // 2) % n2
        denom = sum(math.exp(float(f[a] @ f[k]) / t) for k in range(n2) if k != a)
        spread -= sum(math.log(1 - math.exp(float(f[a] @ f[j]) / t) / denom) for j in range(n2) if j not in (a, p))
    lightly = float(NTXentLoss(temperature=t)(z1, z2))
    assert abs(float(ours) - (lightly + spread / n2)) < 1e-5 * max(1.0, abs(float(ours)))


def test_nce_memory_matches_the_formula() -> None:
    from training.losses import nce_memory, nonparametric_softmax

    torch.manual_seed(0)
    pos, neg = torch.rand(4) * 2 - 1, torch.rand(4, 7) * 2 - 1
    t, n_data, z = 0.07, 100, 37.5
    ours = nce_memory(pos, neg, t, math.log(z), n_data)
    k, pn = neg.shape[1], 1 / n_data
    ref = 0.0
    for i in range(4):  # Wu et al. 2018, eqs. 5-7
        p_pos = math.exp(float(pos[i]) / t) / z
        ref -= math.log(p_pos / (p_pos + k * pn))
        for j in range(k):
            p_neg = math.exp(float(neg[i, j]) / t) / z
            ref -= math.log(1 - p_neg / (p_neg + k * pn))
    assert abs(float(ours) - ref / 4) < 1e-5 * max(1.0, abs(ref / 4))
    soft = sum(-math.log(math.exp(float(pos[i]) / t) / (math.exp(float(pos[i]) / t) +
                                                       sum(math.exp(float(v) / t) for v in neg[i])))
               for i in range(4)) / 4
    assert abs(float(nonparametric_softmax(pos, neg, t)) - soft) < 1e-5 * max(1.0, soft)


def test_moco_v3_contrastive_matches_the_formula() -> None:
    from training.losses import moco_v3_contrastive

    torch.manual_seed(0)
    q, k, t = torch.randn(5, 4), torch.randn(5, 4), 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    ref = 0.0
    for i in range(5):
        logits = [float(qn[i] @ kn[j]) / t for j in range(5)]
        ref -= logits[i] - math.log(sum(math.exp(v) for v in logits))
    assert abs(float(moco_v3_contrastive(q, k, t)) - 2 * t * ref / 5) < 1e-5


def test_patch_info_nce_matches_the_formula() -> None:
    from training.losses import patch_info_nce

    torch.manual_seed(0)
    pred, cand = torch.randn(6, 3), torch.randn(10, 3)
    target = torch.tensor([0, 3, 9, 2, 2, 7])
    ref = 0.0
    for m in range(6):  # van den Oord et al. 2018, eq. 4: f = exp(z^T W c), the true patch against all
        scores = [float(pred[m] @ cand[j]) for j in range(10)]
        ref -= scores[int(target[m])] - math.log(sum(math.exp(s) for s in scores))
    assert abs(float(patch_info_nce(pred, target, cand)) - ref / 6) < 1e-5


def test_cpc_context_sees_only_rows_above() -> None:
    from training.heads import CPCContext

    torch.manual_seed(0)
    net = CPCContext(4, 8, blocks=3)
    z = torch.randn(1, 4, 6, 6, requires_grad=True)
    net(z)[0, :, 2, 3].sum().backward()
    grad_rows = z.grad.abs().sum(dim=(0, 1, 3))
    assert (grad_rows[3:] == 0).all() and (grad_rows[:3] > 0).all()


def test_mocov3_momentum_rises_to_one_on_a_cosine() -> None:
    from training.config import MoCoV3Config
    from training.methods.mocov3 import MoCoV3
    from zoo.backbones import build_encoder

    m = MoCoV3(build_encoder("resnet18_cifar", image_size=8), MoCoV3Config(proj_hidden_dim=8, proj_dim=4,
                                                                           pred_hidden_dim=8))
    assert m.momentum_at(0, 100) == pytest.approx(0.99)
    assert m.momentum_at(50, 100) == pytest.approx(0.995)
    assert m.momentum_at(100, 100) == pytest.approx(1.0)
    assert m.temperature == 1.0


def test_mocov3_vit_takes_the_vit_recipe_and_freezes_the_patch_projection() -> None:
    from training.config import MoCoV3Config
    from training.methods.mocov3 import MoCoV3
    from zoo.backbones import build_encoder

    cfg = MoCoV3Config(proj_hidden_dim=8, proj_dim=4, pred_hidden_dim=8, freeze_patch_embed=True)
    m = MoCoV3(build_encoder("vit_tiny_p4", image_size=8), cfg)
    assert (cfg.optimizer, cfg.base_lr, cfg.weight_decay, m.temperature) == ("adamw", 1.5e-4, 0.1, 0.2)
    frozen = {id(p) for p in m.encoder.model.patch_embed.proj.parameters()}
    trainable = {id(p) for g in m.param_groups(0.1) for p in g["params"]}
    assert frozen and not frozen & trainable


def test_cmc_encoder_converts_to_lab_and_concatenates_halves(tmp_path: Path) -> None:
    from zoo.backbones import LabSplitEncoder, build_encoder, rgb_to_lab

    white, red = torch.ones(1, 3, 1, 1), torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(rgb_to_lab(white).flatten(), torch.tensor([100.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(rgb_to_lab(red).flatten(), torch.tensor([53.24, 80.09, 67.20]), atol=0.1)
    enc = build_encoder("cmc_resnet18_cifar", image_size=8).eval()
    assert isinstance(enc, LabSplitEncoder)
    x = torch.randn(2, 3, 8, 8)
    l_feat, ab_feat = enc.forward_views(x)
    assert torch.equal(enc(x), torch.cat([l_feat, ab_feat], dim=1)) and enc.embed_dim == 512
    zoo.save_encoder(enc, tmp_path / "m")
    assert torch.allclose(zoo.load(str(tmp_path / "m"), device="cpu")(x), enc(x))


def test_simclrv2_exports_the_middle_layer_of_its_projector(tmp_path: Path) -> None:
    from training.config import SimCLRV2Config
    from training.methods.simclrv2 import SimCLRV2
    from zoo.backbones import build_encoder

    torch.manual_seed(0)
    m = SimCLRV2(build_encoder("resnet18_cifar", image_size=8), SimCLRV2Config(proj_dim=8, export_head_layers=1))
    m.train()
    m.projector(m.encoder(torch.randn(4, 3, 8, 8)))  # move the BN statistics off their initial values
    m.eval()
    x = torch.randn(2, 3, 8, 8)
    exported = m.encoder_for_export()
    assert exported.arch == "head_resnet18_cifar" and exported.embed_dim == 512
    assert torch.allclose(exported(x), m.projector[:3](m.encoder(x)), atol=1e-6)
    zoo.save_encoder(exported, tmp_path / "m")
    assert torch.allclose(zoo.load(str(tmp_path / "m"), device="cpu")(x), exported(x), atol=1e-6)
    assert SimCLRV2(build_encoder("resnet18_cifar", image_size=8),
                    SimCLRV2Config(proj_dim=8)).encoder_for_export().arch == "resnet18_cifar"
