"""Converters: checkpoints built in each upstream layout (random weights, the authors' key names, wrappers and
head shapes) convert exactly onto our encoders; mismatches are reported by key name."""

import argparse

import pytest
import torch
from torch import nn

from zoo.backbones import build_encoder
from zoo.convert import CheckpointLayoutError, convert_checkpoint, convert_state
from zoo.errors import ArchitectureMismatchError
from zoo.folder import load_encoder, load_state_checked, read_config

torch.manual_seed(0)


def _randomised(arch: str, **args) -> nn.Module:
    """An encoder with random weights and random BN statistics (so that a wrong mapping shows in outputs)."""
    enc = build_encoder(arch, **args).eval()
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return enc


@pytest.fixture(scope="module")
def r50():
    return _randomised("resnet50")


@pytest.fixture(scope="module")
def vits():
    return _randomised("vit_small")


_TARGETS: dict = {}


def _target(arch, **args):
    """One encoder per arch, reused: load_state_checked overwrites every weight it has."""
    key = (arch, tuple(sorted(args.items())))
    if key not in _TARGETS:
        _TARGETS[key] = build_encoder(arch, **args).eval()
    return _TARGETS[key]


def _sd(enc, prefix=""):
    return {prefix + k: v.clone() for k, v in enc.model.state_dict().items()}


def _noise(*shape):
    return torch.empty(*shape)  # heads and queues are dropped: their keys and shapes matter, not their values


def _mlp(prefix, dims, bn=True):
    """Projector/predictor keys as the repos name them: Linear, BN, ReLU, Linear, ... (indices as in nn.Sequential)."""
    out, i = {}, 0
    for a, b in zip(dims[:-1], dims[1:]):
        out[f"{prefix}{i}.weight"] = _noise(b, a)
        if bn and b != dims[-1]:
            out[f"{prefix}{i + 1}.weight"] = torch.ones(b)
            out[f"{prefix}{i + 1}.bias"] = torch.zeros(b)
            out[f"{prefix}{i + 1}.running_mean"] = torch.zeros(b)
            out[f"{prefix}{i + 1}.running_var"] = torch.ones(b)
            out[f"{prefix}{i + 1}.num_batches_tracked"] = torch.tensor(0)
            i += 3
        else:
            out[f"{prefix}{i}.bias"] = torch.zeros(b)
            i += 2
    return out


def _assert_exact(layout, ckpt, source_enc, arch, x, **args):
    state = convert_state(layout, ckpt)
    ref = source_enc.model.state_dict()
    assert set(state) == set(ref)
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    target = _target(arch, **args)
    load_state_checked(target, state, source=layout, arch=arch)
    with torch.no_grad():
        assert torch.equal(target(x), source_enc(x))
    return target


X_RESNET = torch.randn(2, 3, 64, 64)
X_VIT = torch.randn(2, 3, 64, 64)  # dynamic image size: 4x4 patches are enough to compare outputs


def test_dino_released_resnet50(r50):
    _assert_exact("dino", _sd(r50), r50, "resnet50", X_RESNET)


def test_dino_released_vit_small(vits):
    _assert_exact("dino", _sd(vits), vits, "vit_small", X_VIT[:1])


def test_dino_full_checkpoint_file_keeps_teacher(vits, tmp_path):
    # out_dim reduced from 65536 for speed: the head is dropped, its size does not matter.
    head = {**_mlp("head.mlp.", [384, 2048, 2048, 256], bn=False),
            "head.last_layer.weight_g": torch.ones(1024, 1), "head.last_layer.weight_v": _noise(1024, 256)}
    teacher = {**_sd(vits, "backbone."), **head}
    # The student shares the teacher's tensors (saved once) except one, so taking the wrong network shows.
    student = {f"module.{k}": v for k, v in teacher.items()}
    student["module.backbone.cls_token"] = torch.randn_like(teacher["backbone.cls_token"])
    ckpt = {"student": student, "teacher": teacher, "optimizer": {"state": {}},
            "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=1024),
            "dino_loss": {"center": torch.zeros(1, 1024)}}
    path = tmp_path / "dino_deitsmall16_full_checkpoint.pth"
    torch.save(ckpt, path)
    out = convert_checkpoint("dino", path, "vit_small", tmp_path / "folder", zoo_meta={"name": "t"})
    enc = load_encoder(out, device="cpu")
    with torch.no_grad():
        assert torch.equal(enc(X_VIT[:1]), vits(X_VIT[:1]))
    assert read_config(out)["zoo"]["converted_from"] == {"layout": "dino", "file": path.name}


def test_dino_student_is_available(vits):
    from zoo.convert import dino

    student = {f"module.backbone.{k}": v for k, v in _sd(vits).items()}
    state = dino.convert({"student": student, "teacher": {}}, network="student")
    assert set(state) == set(vits.model.state_dict())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_moco_v1_v2(r50, version):
    fc = {"module.encoder_q.fc.weight": _noise(128, 2048), "module.encoder_q.fc.bias": torch.zeros(128)} \
        if version == "v1" else _mlp("module.encoder_q.fc.", [2048, 2048, 128], bn=False)
    state = {**_sd(r50, "module.encoder_q."), **fc,
             **{f"module.encoder_k.{k}": torch.randn_like(v) if v.is_floating_point() else v
                for k, v in _sd(r50).items()},
             "module.queue": _noise(128, 65536), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    ckpt = {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}
    _assert_exact("moco", ckpt, r50, "resnet50", X_RESNET)


def test_mocov3_resnet50(r50):
    proj = _mlp("module.base_encoder.fc.", [2048, 4096, 4096, 256])
    state = {**_sd(r50, "module.base_encoder."), **proj, **_sd(r50, "module.momentum_encoder."),
             **_mlp("module.momentum_encoder.fc.", [2048, 4096, 4096, 256]),
             **_mlp("module.predictor.", [256, 4096, 256])}
    ckpt = {"epoch": 1000, "arch": "resnet50", "state_dict": state, "optimizer": {}, "scaler": {"scale": 1.0}}
    _assert_exact("mocov3", ckpt, r50, "resnet50", X_RESNET)


def test_mocov3_vit_small_twelve_heads():
    src = _randomised("vit_small", num_heads=12)
    state = {**_sd(src, "module.base_encoder."), **_mlp("module.base_encoder.head.", [384, 4096, 4096, 256]),
             **_sd(src, "module.momentum_encoder."), **_mlp("module.predictor.", [256, 4096, 256])}
    target = _assert_exact("mocov3", {"state_dict": state}, src, "vit_small", X_VIT[:1], num_heads=12)
    assert target.num_heads == 12


def test_swav(r50):
    state = {**_sd(r50, "module."), **_mlp("module.projection_head.", [2048, 2048, 128]),
             "module.prototypes.weight": _noise(3000, 128)}
    _assert_exact("swav", state, r50, "resnet50", X_RESNET)


def test_barlowtwins_released_and_training_checkpoint(r50):
    _assert_exact("barlowtwins", _sd(r50), r50, "resnet50", X_RESNET)
    # The projector is 8192 wide upstream; 512 here for speed (its keys, not its size, matter).
    model = {**_sd(r50, "module.backbone."), **_mlp("module.projector.", [2048, 512, 512, 512]),
             "module.bn.running_mean": torch.zeros(512), "module.bn.running_var": torch.ones(512),
             "module.bn.num_batches_tracked": torch.tensor(0)}
    _assert_exact("barlowtwins", {"epoch": 1000, "model": model, "optimizer": {}}, r50, "resnet50", X_RESNET)


def test_simsiam(r50):
    proj = _mlp("module.encoder.fc.", [2048, 2048, 2048, 2048])
    state = {**_sd(r50, "module.encoder."), **proj, **_mlp("module.predictor.", [2048, 512, 2048])}
    _assert_exact("simsiam", {"epoch": 100, "arch": "resnet50", "state_dict": state}, r50, "resnet50", X_RESNET)


def test_simclr_v1_converted(r50):
    state = {**_sd(r50), "fc.weight": _noise(1000, 2048), "fc.bias": torch.zeros(1000)}
    _assert_exact("simclr", {"state_dict": state}, r50, "resnet50", X_RESNET)


def test_byol_converted(r50):
    state = {**_sd(r50, "module."), "module.fc.weight": _noise(1000, 2048), "module.fc.bias": torch.zeros(1000)}
    _assert_exact("byol", {"state_dict": state}, r50, "resnet50", X_RESNET)


# --- SimCLR v2: Separius/SimCLRv2-Pytorch's own ResNet, rebuilt here module by module -----------------------

class _BNRelu(nn.Sequential):
    def __init__(self, c, relu=True):
        super().__init__(nn.BatchNorm2d(c), nn.ReLU() if relu else nn.Identity())


def _conv(i, o, k=3, s=1):
    return nn.Conv2d(i, o, k, s, (k - 1) // 2, bias=False)


class _Projection(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.shortcut = _conv(i, o, 1, s)
        self.bn = _BNRelu(o, relu=False)

    def forward(self, x):
        return self.bn(self.shortcut(x))


class _Bottleneck(nn.Module):
    def __init__(self, i, o, s, proj):
        super().__init__()
        self.projection = _Projection(i, o * 4, s) if proj else nn.Identity()
        self.net = nn.Sequential(_conv(i, o, 1), _BNRelu(o), _conv(o, o, 3, s), _BNRelu(o), _conv(o, o * 4, 1),
                                 _BNRelu(o * 4, relu=False))

    def forward(self, x):
        return torch.relu(self.projection(x) + self.net(x))


class _Blocks(nn.Module):
    def __init__(self, n, i, o, s):
        super().__init__()
        self.blocks = nn.ModuleList([_Bottleneck(i, o, s, True)] + [_Bottleneck(o * 4, o, 1, False)
                                                                       for _ in range(n - 1)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class _SeparisResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        stem = nn.Sequential(_conv(3, 64, 7, 2), _BNRelu(64), nn.MaxPool2d(3, 2, 1))
        self.net = nn.Sequential(stem, _Blocks(3, 64, 64, 1), _Blocks(4, 256, 128, 2), _Blocks(6, 512, 256, 2),
                                 _Blocks(3, 1024, 512, 2))
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):  # pooled features, before fc
        return self.net(x).mean(dim=(2, 3))


def test_simclr_v2_separius_layout_gives_same_features():
    torch.manual_seed(1)
    src = _SeparisResNet50().eval()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
    ckpt = {"resnet": src.state_dict(), "head": _mlp("layers.", [2048, 2048, 2048, 128])}
    state = convert_state("simclr", ckpt)
    target = _target("resnet50")
    load_state_checked(target, state, source="separius", arch="resnet50")
    with torch.no_grad():
        torch.testing.assert_close(target(X_RESNET), src(X_RESNET), rtol=1e-5, atol=1e-5)


def test_simclr_v2_selective_kernel_is_refused_by_name():
    ckpt = {"resnet": {"net.0.0.weight": _noise(32, 3, 3, 3), "net.1.blocks.0.net.2.conv.weight": _noise(1)}}
    with pytest.raises(CheckpointLayoutError, match="net.1.blocks.0.net.2.conv.weight"):
        convert_state("simclr", ckpt)


# --- errors --------------------------------------------------------------------------------------------------

def test_wrong_architecture_names_the_keys():
    r18 = build_encoder("resnet18")
    state = convert_state("moco", {"state_dict": _sd(r18, "module.encoder_q.")})
    with pytest.raises(ArchitectureMismatchError, match=r"missing .*layer1\.0\.conv3\.weight") as e:
        load_state_checked(build_encoder("resnet50"), state, source="moco file", arch="resnet50")
    assert "they look like 'resnet18'" in str(e.value)


def test_wrong_vit_width_names_mis_shaped_keys(vits, tmp_path):
    path = tmp_path / "dino_vits.pth"
    torch.save(_sd(vits), path)
    with pytest.raises(ArchitectureMismatchError, match=r"shape mismatch .*blocks\.0\.attn\.proj\.weight \(384, 384\) vs \(192, 192\)"):
        convert_checkpoint("dino", path, "vit_tiny", tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_wrong_layout_is_reported():
    with pytest.raises(CheckpointLayoutError, match="no key starts with 'module.encoder_q.'"):
        convert_state("moco", {"state_dict": {"conv1.weight": torch.zeros(1)}})
    with pytest.raises(CheckpointLayoutError, match="not tensors"):
        convert_state("swav", {"epoch": 3, "conv1.weight": torch.zeros(1)})
