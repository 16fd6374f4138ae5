"""The registry: built-in entries, lookup errors, registering by code, manifest and local folder."""

import json

import pytest
import torch

import zoo
from zoo.backbones import arch_spec, build_encoder
from zoo.errors import UnknownModelError, ZooError
from zoo.registry import BUILTIN, ModelSpec, WeightSource, rescan

BUILTIN_NAMES = [
    "dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dino_resnet50", "mocov1_resnet50",
    "mocov2_resnet50", "mocov2_resnet50_800ep", "mocov3_resnet50", "mocov3_vits16", "mocov3_vitb16",
    "swav_resnet50", "barlowtwins_resnet50", "simsiam_resnet50", "simclrv1_resnet50", "simclrv2_resnet50",
    "byol_resnet50",
]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    rescan()
    yield
    rescan()


def test_every_builtin_is_listed():
    assert set(BUILTIN_NAMES) <= set(zoo.list_models())


@pytest.mark.parametrize("s", BUILTIN, ids=lambda s: s.name)
def test_builtin_spec_matches_its_architecture(s: ModelSpec):
    with torch.device("meta"):  # shapes only, no memory or init cost
        enc = build_encoder(s.arch, **s.model_args)
    assert enc.embed_dim == s.embed_dim
    assert enc.patch_size == s.patch_size
    assert s.sources and s.sources[0].layout in zoo.convert_layouts()
    src = s.sources[0]
    # Official downloads come from the authors' servers; community conversions name the original and the tool.
    if src.url is None:
        assert src.upstream and "github.com" in src.note
    else:
        assert src.url.startswith("https://dl.fbaipublicfiles.com/")
    assert s.sources[0].sha256 is None or len(s.sources[0].sha256) == 64
    assert s.reported and all(r.source for r in s.reported)


def test_mocov3_vit_small_uses_twelve_heads():
    with torch.device("meta"):
        enc = build_encoder("vit_small", **zoo.spec("mocov3_vits16").model_args)
    assert enc.num_heads == 12


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean dino_vits16"):
        zoo.spec("dino_vit16")


def _spec(name: str) -> ModelSpec:
    return ModelSpec(name=name, method="simclr", arch="resnet18_cifar", dataset="cifar10", embed_dim=512,
                     sources=(WeightSource("timm", "w.safetensors", url="http://127.0.0.1:1/w.safetensors"),))


def test_register_by_call_and_decorator():
    zoo.register(_spec("test_reg_call"))

    @zoo.register
    def test_reg_decorated() -> ModelSpec:
        return _spec("test_reg_decorated")

    assert callable(test_reg_decorated)
    assert {"test_reg_call", "test_reg_decorated"} <= set(zoo.list_models("test_reg"))
    with pytest.raises(ZooError, match="already registered"):
        zoo.register(ModelSpec(name="test_reg_call", method="byol", arch="resnet18", dataset="x", embed_dim=512))
    with pytest.raises(ZooError, match="unknown architecture"):
        zoo.register(ModelSpec(name="test_reg_bad", method="byol", arch="resnet7", dataset="x", embed_dim=1))


def test_manifests_json_and_toml(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"models": [
        {"name": "test_manifest_json", "method": "dino", "arch": "vit_tiny_p4", "dataset": "cifar10",
         "sources": [{"layout": "dino", "filename": "x.pth", "url": "https://example.org/x.pth"}]}]}))
    (tmp_path / "m.toml").write_text(
        '[[models]]\nname = "test_manifest_toml"\nmethod = "byol"\narch = "resnet18"\ndataset = "imagenette"\n'
        '[[models.sources]]\nlayout = "byol"\nfilename = "y.pth"\nurl = "https://example.org/y.pth"\n'
        'sha256 = "' + "a" * 64 + '"\n')
    zoo.register_manifest(tmp_path / "m.json")
    zoo.register_manifest(tmp_path / "m.toml")
    j, t = zoo.spec("test_manifest_json"), zoo.spec("test_manifest_toml")
    assert (j.embed_dim, j.patch_size) == (192, 4)  # defaults come from the arch
    assert (t.embed_dim, t.sources[0].sha256) == (512, "a" * 64)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ZooError, match="not valid JSON"):
        zoo.register_manifest(tmp_path / "bad.json")
    (tmp_path / "noname.json").write_text(json.dumps([{"method": "dino", "arch": "vit_small"}]))
    with pytest.raises(ZooError, match="'name' is missing"):
        zoo.register_manifest(tmp_path / "noname.json")


def test_home_manifest_and_local_folders_are_registered(tmp_path, monkeypatch):
    home = tmp_path / "home2"
    enc = build_encoder("resnet18_cifar", dataset="cifar10")
    zoo.save_encoder(enc, home / "models" / "my_simclr", zoo_meta={"method": "simclr", "dataset": "cifar10"})
    (home / "models" / "not_a_model").mkdir()
    (home / "manifest.json").write_text(json.dumps([{"name": "test_home_manifest", "method": "swav",
                                                     "arch": "resnet50", "dataset": "imagenet-1k"}]))
    monkeypatch.setenv("ZOO_HOME", str(home))
    names = zoo.list_models()
    assert "my_simclr" in names and "test_home_manifest" in names and "not_a_model" not in names
    s = zoo.spec("my_simclr")
    assert (s.arch, s.method, s.embed_dim, s.folder) == ("resnet18_cifar", "simclr", 512,
                                                         str(home / "models" / "my_simclr"))
    loaded = zoo.load("my_simclr", device="cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), enc.eval()(x))


def test_arch_names_are_ours():
    for s in BUILTIN:
        assert arch_spec(s.arch).name == s.arch
