"""ONNX export: the graph contract, parity with PyTorch in ONNX Runtime (CPU), folder export, refusals."""

import shutil
from pathlib import Path

import pytest
import torch

from zoo.__main__ import main as zoo_cli
from zoo.backbones import build_encoder
from zoo.folder import read_config, save_encoder
from zoo.onnx import OnnxExportError, check_parity, export_onnx, ort_session, quantize_onnx

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "service" / "default" / "model"  # trained weights

ACCEPTANCE = ["resnet18_cifar", "resnet50", "vit_small", "vit_tiny_p4"]


@pytest.mark.parametrize("arch", ACCEPTANCE)
def test_export_parity_and_contract(arch, tmp_path):
    enc = build_encoder(arch).eval()
    out = tmp_path / f"{arch}.onnx"
    report = export_onnx(enc, out)
    parity = report["parity"]
    for case in ("random", "real"):
        assert parity[case]["embedding_min_cosine"] >= 0.9999
        if enc.is_vit:
            assert parity[case]["attention_max_abs_diff"] <= 1e-4
    assert report["dynamic_image_size"] is (not enc.is_vit)

    session = ort_session(out)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].type == "tensor(float)"
    assert [o.name for o in session.get_outputs()] == (["embeddings", "attention"] if enc.is_vit else ["embeddings"])
    size = enc.preprocessing.image_size
    x = torch.randn(5, 3, size, size)  # a batch size the export never saw
    got = session.run(None, {"images": x.numpy()})
    assert got[0].shape == (5, enc.embed_dim)
    if enc.is_vit:
        grid = (size // enc.patch_size) ** 2
        assert got[1].shape == (5, enc.num_heads, grid)
        assert abs(float(got[1].sum(-1).max()) - 1) < 0.5  # softmax rows over all tokens: patches take most


def test_folder_export_writes_onnx_and_parity_into_config(tmp_path):
    folder = save_encoder(build_encoder("resnet18_cifar", dataset="cifar10"), tmp_path / "m",
                          zoo_meta={"name": "m", "method": "simclr"})
    report = export_onnx(folder)
    assert (folder / "model.onnx").is_file() and report["path"] == str(folder / "model.onnx")
    onnx_cfg = read_config(folder)["zoo"]["onnx"]
    assert onnx_cfg["file"] == "model.onnx" and onnx_cfg["parity"]["real"]["embedding_min_cosine"] >= 0.9999
    other = build_encoder("resnet18_cifar").eval()  # different random weights: the check must fail
    with pytest.raises(OnnxExportError, match="embedding cosine"):
        check_parity(other, folder / "model.onnx", dynamic_image_size=True)


def test_fp16_export_keeps_float32_interface(tmp_path):
    enc = build_encoder("resnet18_cifar").eval()
    report = export_onnx(enc, tmp_path / "h.onnx", fp16=True)
    assert report["precision"] == "fp16" and report["parity"]["real"]["embedding_min_cosine"] >= 0.999
    session = ort_session(tmp_path / "h.onnx")
    assert session.get_inputs()[0].type == "tensor(float)"
    assert all(o.type == "tensor(float)" for o in session.get_outputs())
    assert next(enc.parameters()).dtype == torch.float32  # the caller's encoder is left as it was


@pytest.mark.slow  # the dynamo exporter takes ~20-60 s here
def test_vit_dynamic_image_size_through_the_dynamo_exporter(tmp_path):
    enc = build_encoder("vit_tiny_p4").eval()
    report = export_onnx(enc, tmp_path / "d.onnx", dynamic_image_size=True)
    assert report["exporter"] == "dynamo" and report["dynamic_image_size"]
    for case in ("random_other_size", "random_smaller"):  # 48x40 and 24x24 px: pos-embed up- and downsampled
        assert report["parity"][case]["embedding_min_cosine"] >= 0.9999
        assert report["parity"][case]["attention_max_abs_diff"] <= 1e-4
    out = ort_session(tmp_path / "d.onnx").run(None, {"images": torch.randn(1, 3, 64, 64).numpy()})
    assert out[1].shape == (1, enc.num_heads, 16 * 16)


def test_vit_dynamic_image_size_needs_dynamo(tmp_path):
    with pytest.raises(OnnxExportError, match="cannot export a dynamic image size"):
        export_onnx(build_encoder("vit_tiny_p4"), tmp_path / "v.onnx", dynamic_image_size=True,
                    exporter="torchscript")
    assert not (tmp_path / "v.onnx").exists()


def test_avg_pooled_vit_exports_its_whole_last_block(tmp_path):
    # The CLS-only last block applies to CLS-pooled ViTs; an average-pooled one needs every token's output.
    enc = build_encoder("vit_tiny_p4", global_pool="avg").eval()
    report = export_onnx(enc, tmp_path / "avg.onnx")
    assert report["parity"]["real"]["embedding_min_cosine"] >= 0.9999
    assert report["parity"]["real"]["attention_max_abs_diff"] <= 1e-4


def test_int8_copy_of_a_trained_vit_keeps_the_fp32_contract(tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(BUNDLED_MODEL, folder)
    assert zoo_cli(["export", str(folder), "--int8"]) == 0
    assert "model.int8.onnx (int8 weights in 48 MatMuls" in capsys.readouterr().out
    report = read_config(folder)["zoo"]["onnx_int8"]
    assert report["file"] == "model.int8.onnx" and report["source"] == "model.onnx"
    for case in ("random", "real"):
        assert report["parity"][case]["embedding_min_cosine"] >= 0.9999
        assert report["parity"][case]["attention_max_abs_diff"] <= 1e-3
    session = ort_session(folder / "model.int8.onnx")
    assert [o.name for o in session.get_outputs()] == ["embeddings", "attention"]
    assert session.get_inputs()[0].type == "tensor(float)"


def test_int8_copy_is_refused_when_it_would_change_the_embeddings(tmp_path):
    # A randomly initialised ViT's activations quantize badly (cosine about 0.999): the copy must not be kept.
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny_p8").eval()
    export_onnx(enc, tmp_path / "m.onnx")
    with pytest.raises(OnnxExportError, match=r"embedding cosine 0\.99\d+ < 0\.9999"):
        quantize_onnx(enc, tmp_path / "m.onnx", tmp_path / "m.int8.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_int8_copy_of_a_cnn_is_refused_as_pointless(tmp_path):
    enc = build_encoder("resnet18_cifar").eval()
    export_onnx(enc, tmp_path / "r.onnx")
    with pytest.raises(OnnxExportError, match="no MatMul to quantize"):
        quantize_onnx(enc, tmp_path / "r.onnx", tmp_path / "r.int8.onnx")
    assert not (tmp_path / "r.int8.onnx").exists()
