import json

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.backbones import build_encoder, list_archs
from zoo.errors import ArchitectureMismatchError, ModelFolderError, UnknownArchitectureError

SMALL_ARCHS = ["resnet18_cifar", "vit_tiny_p4", "vit_tiny_p8", "resnet18"]


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_encoder_returns_pooled_features(arch):
    enc = build_encoder(arch, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = enc(x)
    assert y.shape == (2, enc.embed_dim)


def test_every_arch_is_buildable_by_name():
    for arch in list_archs():
        if "base" in arch or "resnet50" in arch:
            continue  # large; built in test_zoo where needed
        enc = build_encoder(arch)
        assert enc.embed_dim > 0 and enc.preprocessing.image_size > 0


def test_unknown_arch_lists_known_ones():
    with pytest.raises(UnknownArchitectureError, match="resnet18_cifar"):
        build_encoder("resnet999")


def test_cifar_stem_keeps_resolution():
    enc = build_encoder("resnet18_cifar")
    assert enc.model.conv1.kernel_size == (3, 3) and enc.model.conv1.stride == (1, 1)
    assert isinstance(enc.model.maxpool, torch.nn.Identity)
    assert enc.feature_map(torch.randn(1, 3, 32, 32)).shape[-1] == 4  # 32 / 8: no stem downsampling


@pytest.mark.parametrize("arch,size", [("vit_tiny_p4", 32), ("vit_tiny_p8", 96)])
def test_explicit_attention_matches_timm_block(arch, size):
    """Our attention weights, applied to the values, reproduce timm's (fused) attention output."""
    enc = build_encoder(arch).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        a = enc.get_last_selfattention(x)
        n = (size // enc.patch_size) ** 2 + 1
        assert a.shape == (2, enc.num_heads, n, n)
        assert torch.allclose(a.sum(-1), torch.ones(2, enc.num_heads, n), atol=1e-5)
        blk = enc.model.blocks[-1]
        tokens = blk.norm1(enc._tokens_before_last_block(x))
        attn = blk.attn
        qkv = attn.qkv(tokens).reshape(2, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        ours = attn.proj((a @ qkv[2]).transpose(1, 2).reshape(2, n, -1))
        assert torch.allclose(ours, attn(tokens), atol=1e-5)
        assert enc.cls_attention(x).shape == (2, enc.num_heads, n - 1)
        assert enc.patch_tokens(x).shape == (2, n - 1, enc.embed_dim)


def test_attention_on_a_cnn_says_it_needs_a_vit():
    with pytest.raises(TypeError, match="ViT"):
        build_encoder("resnet18_cifar").get_last_selfattention(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("arch", ["resnet18_cifar", "vit_tiny_p4"])
def test_model_folder_round_trip(tmp_path, arch):
    enc = build_encoder(arch, dataset="cifar10").eval()
    zoo.save_encoder(enc, tmp_path / "m", {"name": "x", "method": "simclr"})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["num_features"] == enc.embed_dim and cfg["zoo"]["arch"] == arch
    assert cfg["pretrained_cfg"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    loaded = zoo.load(str(tmp_path / "m"), device="cpu")
    assert not loaded.training
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), loaded(x))
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_fp16_folder_is_half_the_size_and_close(tmp_path):
    enc = build_encoder("vit_tiny_p4").eval()
    zoo.save_encoder(enc, tmp_path / "a")
    zoo.save_encoder(enc, tmp_path / "b", dtype=torch.float16)
    sa, sb = (tmp_path / "a" / "model.safetensors").stat().st_size, (tmp_path / "b" / "model.safetensors").stat().st_size
    assert sb < 0.55 * sa
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert F.cosine_similarity(enc(x), zoo.load(str(tmp_path / "b"), device="cpu")(x)).min() > 0.999


def test_folder_of_another_arch_names_both(tmp_path):
    zoo.save_encoder(build_encoder("resnet18_cifar"), tmp_path / "m")
    with pytest.raises(ArchitectureMismatchError, match="resnet18_cifar.*vit_tiny_p4"):
        zoo.load_encoder(tmp_path / "m", arch="vit_tiny_p4")
    # A config that lies about its weights: the error names the keys and what the weights look like.
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["zoo"]["arch"] = "vit_tiny_p4"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureMismatchError, match=r"vit_tiny_p4.*resnet18_cifar.*missing blocks.*unexpected bn1"):
        zoo.load_encoder(tmp_path / "m")


def test_truncated_weights_give_a_clear_error(tmp_path):
    zoo.save_encoder(build_encoder("resnet18_cifar"), tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelFolderError, match="truncated"):
        zoo.load_encoder(tmp_path / "m")
