"""`python -m zoo` commands, model cards, the Hub staging folder, timm reading our folders, hubconf."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import zoo
from zoo.__main__ import main
from zoo.backbones import build_encoder
from zoo.cards import render_card
from zoo.folder import save_encoder, update_config
from zoo.hub import stage_folder
from zoo.registry import rescan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ZOO_OFFLINE", "1")  # nothing here may reach the network
    rescan()


def test_list_shows_every_builtin_with_method_arch_dim_source(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for s in zoo.registry.BUILTIN:
        line = next(line for line in out.splitlines() if line.startswith(s.name + " "))
        assert s.method in line and s.arch in line and str(s.embed_dim) in line
        assert (s.sources[0].url or "manual") in line


def test_info_shows_cache_paths(capsys):
    assert main(["info", "swav_resnet50"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sources"][0]["layout"] == "swav" and info["cache"]["download"].endswith("swav_800ep_pretrain.pth.tar")


@pytest.mark.parametrize("argv, message", [
    (["info", "dino_vit16"], "did you mean dino_vits16"),
    (["convert", "--from", "dino", "--checkpoint", "/nonexistent.pth", "--arch", "vit_small", "--out", "x"],
     "no checkpoint file at /nonexistent.pth"),
    (["convert", "--from", "nope", "--checkpoint", "/nonexistent.pth", "--arch", "vit_small", "--out", "x"],
     "no checkpoint file"),
    (["export", "swav_resnet50", "--out", "x.onnx"], "offline mode"),
    (["card", "/nonexistent"], "not a model folder"),
])
def test_user_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_unknown_arch_and_layout_are_one_line(tmp_path, capsys):
    ckpt = tmp_path / "c.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, ckpt)
    assert main(["convert", "--from", "nope", "--checkpoint", str(ckpt), "--arch", "resnet50", "--out", "x"]) == 2
    assert "unknown checkpoint layout 'nope'" in capsys.readouterr().err
    assert main(["convert", "--from", "swav", "--checkpoint", str(ckpt), "--arch", "resnet7", "--out", "x"]) == 2
    assert "unknown architecture 'resnet7'" in capsys.readouterr().err


def test_unwritable_output_is_one_line(tmp_path, capsys):
    folder = save_encoder(build_encoder("resnet18_cifar"), tmp_path / "m", zoo_meta={"method": "byol"})
    (tmp_path / "file").write_text("x")
    assert main(["card", str(folder), "--out", str(tmp_path / "file" / "card.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_cli_process_exit_code_and_stderr():
    proc = subprocess.run([sys.executable, "-m", "zoo", "info", "nosuchmodel"], cwd=ROOT, capture_output=True,
                          text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown model") and "Traceback" not in proc.stderr


def test_convert_command_writes_a_loadable_folder(tmp_path, capsys):
    src = build_encoder("resnet18").eval()
    ckpt = tmp_path / "swav.pth.tar"
    torch.save({f"module.{k}": v for k, v in src.model.state_dict().items()}
               | {"module.prototypes.weight": torch.zeros(3000, 128)}, ckpt)
    assert main(["convert", "--from", "swav", "--checkpoint", str(ckpt), "--arch", "resnet18",
                 "--out", str(tmp_path / "f"), "--name", "my_swav"]) == 0
    enc = zoo.load(str(tmp_path / "f"), device="cpu")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(enc(x), src(x))
    assert zoo.read_config(tmp_path / "f")["zoo"]["name"] == "my_swav"


def _measured_folder(tmp_path, arch="resnet18"):
    folder = save_encoder(build_encoder(arch, dataset="cifar10"), tmp_path / arch, zoo_meta={
        "name": f"simclr_{arch}_cifar10", "method": "simclr", "dataset": "cifar10", "license": "apache-2.0",
        "train_config": {"epochs": 2, "batch_size": 128, "lr": 0.3}})
    update_config(folder, {"eval": {
        "knn_top1": {"value": 41.25, "split": "test", "command": "python -m training knn --model F --data cifar10"},
        "linear_top1": 47.5, "commands": {"linear_top1": "python -m training linear --model F --data cifar10"}}})
    return folder


def test_card_renders_only_measured_numbers(tmp_path):
    folder = _measured_folder(tmp_path)
    card = render_card(folder)
    header = card.split("---")[1]
    assert "license: apache-2.0" in header and "library_name: timm" in header and "- cifar10" in header
    assert "model-index:" in header and "value: 41.25" in header and "name: knn_top1" in header
    assert "python -m training knn --model F --data cifar10" in card
    assert "python -m training linear --model F --data cifar10" in card
    assert '"batch_size": 128' in card
    assert "ONNX export: not measured" in card

    bare = save_encoder(build_encoder("resnet18_cifar"), tmp_path / "bare", zoo_meta={"method": "byol"})
    bare_card = render_card(bare)
    assert "model-index" not in bare_card and "accuracy: not measured" in bare_card
    assert "library_name: pytorch" in bare_card  # the CIFAR stem is ours, not a timm model


def test_card_command_writes_model_cards_file(tmp_path, monkeypatch, capsys):
    folder = _measured_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["card", str(folder)]) == 0
    assert (tmp_path / "model_cards" / "simclr_resnet18_cifar10.md").read_text().startswith("---\n")


def test_staged_hub_folder_is_timm_loadable(tmp_path):
    folder = _measured_folder(tmp_path)
    staged = stage_folder(folder, tmp_path / "staged")
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "model-index" in (staged / "README.md").read_text()
    model = timm.create_model(f"local-dir:{staged}", pretrained=True).eval()
    ours = zoo.load(str(folder), device="cpu")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))


def test_timm_reads_a_vit_folder(tmp_path):
    enc = build_encoder("vit_small").eval()
    folder = save_encoder(enc, tmp_path / "vit")
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert model.num_classes == 0
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), enc(x))


def test_stage_refuses_a_non_folder(tmp_path):
    with pytest.raises(zoo.ZooError, match="not a model folder"):
        stage_folder(tmp_path, tmp_path / "s")


def test_hubconf_entry_points():
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(hubconf)
    names = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert {s.name for s in zoo.registry.BUILTIN} <= names
    assert "Reported by the authors: knn_top1 74.5" in hubconf.dino_vits16.__doc__
    enc = torch.hub.load(str(ROOT), "mocov3_vits16", source="local", pretrained=False)
    assert enc.num_heads == 12 and enc.arch == "vit_small"
    with pytest.raises(zoo.ZooError, match="offline mode"):
        torch.hub.load(str(ROOT), "dino_vits16", source="local")
