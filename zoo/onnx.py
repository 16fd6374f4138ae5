"""ONNX export of an encoder, checked against PyTorch with ONNX Runtime before it is kept.

The graph's contract (the service relies on it):
- input `images`: float32 `(B, 3, H, W)`, normalised as the encoder's preprocessing says; B is dynamic;
- output `embeddings`: float32 `(B, D)`;
- ViTs only, output `attention`: float32 `(B, heads, h*w)`, the CLS token's softmax attention over the patch
  tokens in the last block (what `Encoder.cls_attention` returns), computed in the same pass as the embedding.

Image size, per architecture and exporter (`dynamic_image_size=None` picks the default):
- CNNs (resnet*): H and W are dynamic with either exporter (convolutions and global average pooling take
  any size >= 32 px).
- ViTs: fixed to the encoder's input size by default. Another size needs the position embedding resampled
  (timm: bicubic with antialias). The "torchscript" exporter bakes the embedding in at the traced size, so it
  can only export a fixed size. The "dynamo" exporter (`torch.export` + onnxscript) keeps the resampling in
  the graph (ONNX Resize-18 cubic with antialias); `dynamic_image_size=True` on a ViT selects it, and the
  parity check then also runs a larger and a smaller image (measured on vit_tiny_p4: embeddings within
  3e-6, attention within 1e-8 at 24, 32 and 48 px). Exporting a ViT that way takes ~10x longer.

Exporters: "torchscript" (`torch.onnx.export(dynamo=False)`, the default where it suffices: several times
faster to export) and "dynamo" (`dynamo=True`, needs onnxscript). Both give the same graph contract.
Parity is measured with ONNX Runtime's
CPU provider on random inputs and on real images (a few Imagenette images when the shared data are present,
else synthetic smooth images); export fails above the tolerances (fp32: embedding cosine >= 0.9999, attention
max abs diff <= 1e-4), and nothing is left at `out_path` then.
"""

from __future__ import annotations

import copy
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.atomic import atomic_path
from zoo.backbones import Encoder
from zoo.errors import ZooError
from zoo.folder import INT8_ONNX_NAME, ONNX_NAME

log = logging.getLogger(__name__)

EMBEDDINGS, ATTENTION, IMAGES = "embeddings", "attention", "images"
TOLERANCE = {"fp32": {"min_cosine": 0.9999, "attention_max_abs_diff": 1e-4},
             "int8": {"min_cosine": 0.9999, "attention_max_abs_diff": 1e-3},
             "fp16": {"min_cosine": 0.999, "attention_max_abs_diff": 1e-2}}


class OnnxExportError(ZooError, RuntimeError):
    """Export failed, or the exported graph disagrees with PyTorch beyond the tolerance."""


class ExportGraph(nn.Module):
    """What is exported: embeddings (and for ViTs the last block's CLS attention) from one forward pass."""

    def __init__(self, encoder: Encoder, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.encoder = encoder
        self.dtype = dtype

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = images.to(self.dtype)
        enc = self.encoder
        if not enc.is_vit:
            return enc(x).float()
        m = enc.model
        tokens = enc._tokens_before_last_block(x)
        last = m.blocks[-1]
        if _pools_cls_token(m) and getattr(last.attn, "gate", None) is None:
            cls, attention = _last_block_for_cls(last, tokens, m.num_prefix_tokens)
            features = m.forward_head(m.norm(cls))
        else:
            attention = _cls_attention(last.attn, last.norm1(tokens), m.num_prefix_tokens)
            features = m.forward_head(m.norm(last(tokens)))
        return features.float(), attention.float()


def _pools_cls_token(model: nn.Module) -> bool:
    """Whether the embedding is the CLS token alone (DINO, MoCo v3), so the last block's other outputs are unused."""
    return getattr(model, "global_pool", None) == "token" and getattr(model, "attn_pool", None) is None


def _last_block_for_cls(block: nn.Module, tokens: Tensor, num_prefix: int) -> tuple[Tensor, Tensor]:
    """The last block's output for the CLS token only, `(B, 1, D)`, and the CLS attention over patches.

    Every token is still a key and a value, but only CLS is a query and only CLS goes through the projection
    and the MLP: the same numbers as the full block's token 0, for about 1/12 of a ViT's work less.
    """
    a = block.attn
    weights, v = _cls_query(a, block.norm1(tokens))
    mixed = (weights @ v).transpose(1, 2).reshape(tokens.shape[0], 1, a.num_heads * a.head_dim)
    x = tokens[:, :1] + block.ls1(a.proj(a.norm(mixed)))
    x = x + block.ls2(block.mlp(block.norm2(x)))
    return x, weights[:, :, 0, num_prefix:]


def _cls_attention(attn: nn.Module, y: Tensor, num_prefix: int) -> Tensor:
    """Softmax attention of the CLS query over all keys, restricted to patch keys: `(B, heads, h*w)`.

    Same maths as `Encoder.get_last_selfattention(x)[:, :, 0, prefix:]`, without the N x N matrix.
    """
    return _cls_query(attn, y)[0][:, :, 0, num_prefix:]


def _cls_query(attn: nn.Module, y: Tensor) -> tuple[Tensor, Tensor]:
    """The CLS query's softmax weights over every key, `(B, heads, 1, N)`, and the values `(B, heads, N, d)`."""
    b, n, _ = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0][:, :, :1]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1), qkv[2]


def export_onnx(
    encoder_or_folder: Encoder | str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    opset: int = 18,
    fp16: bool = False,
    dynamic_image_size: bool | None = None,
    check: bool = True,
    exporter: str | None = None,
) -> dict[str, Any]:
    """Export an encoder (or a model folder / registry name) to ONNX; return a report with the parity numbers.

    For a folder, the default `out_path` is `FOLDER/model.onnx` and the report is written into the folder's
    config under `zoo.onnx`.
    """
    encoder, folder = _encoder_and_folder(encoder_or_folder)
    if out_path is None:
        if folder is None:
            raise OnnxExportError("out_path is needed when exporting an Encoder object")
        out_path = folder / ONNX_NAME
    out_path = Path(out_path)
    if dynamic_image_size is None:
        dynamic_image_size = not encoder.is_vit
    if exporter is None:
        exporter = "dynamo" if dynamic_image_size and encoder.is_vit else "torchscript"
    if exporter not in ("torchscript", "dynamo"):
        raise OnnxExportError(f"exporter must be 'torchscript' or 'dynamo', not {exporter!r}")
    if dynamic_image_size and encoder.is_vit and exporter == "torchscript":
        raise OnnxExportError(
            f"{encoder.arch}: the torchscript exporter bakes a ViT's position embedding in at one size, so it "
            "cannot export a dynamic image size; use exporter='dynamo' (or a fixed size)")
    precision = "fp16" if fp16 else "fp32"
    # fp16: a half copy is exported; parity is measured against the original fp32 encoder.
    graph_encoder = copy.deepcopy(encoder).half() if fp16 else encoder
    graph = ExportGraph(graph_encoder, torch.float16 if fp16 else torch.float32).eval()
    outputs = [EMBEDDINGS, ATTENTION] if encoder.is_vit else [EMBEDDINGS]
    size = encoder.preprocessing.image_size
    example = torch.randn(2, 3, size, size)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_image_size else {0: "batch"}
    report: dict[str, Any] = {
        "file": out_path.name, "opset": opset, "precision": precision, "exporter": exporter,
        "inputs": {IMAGES: ["batch", 3, "height" if dynamic_image_size else size,
                            "width" if dynamic_image_size else size]},
        "outputs": outputs, "dynamic_batch": True, "dynamic_image_size": bool(dynamic_image_size),
        "image_size": size, "torch": torch.__version__,
    }
    with atomic_path(out_path) as tmp:
        with torch.no_grad():
            try:
                _export(graph, example, tmp, opset, outputs, axes, exporter)
            except Exception as e:  # the exporter raises many types; all mean the same to the user
                raise OnnxExportError(f"ONNX export of {encoder.arch} failed: {type(e).__name__}: {e}") from e
        if check:
            report["parity"] = check_parity(encoder, tmp, precision, dynamic_image_size)
    if folder is not None and out_path.parent.resolve() == folder.resolve():
        from zoo.folder import update_config

        update_config(folder, {"onnx": report})
    report["path"] = str(out_path)
    return report


def quantize_onnx(
    encoder_or_folder: Encoder | str | os.PathLike,
    fp32_path: str | os.PathLike | None = None,
    out_path: str | os.PathLike | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """int8 copy of an fp32 export for CPUs; return a report with the parity numbers.

    Dynamic quantization (ONNX Runtime): the weights of every MatMul become int8 (one scale per tensor), and
    activations are quantized per batch at run time, so no calibration data are needed (and a row depends on
    its batch-mates at the 1e-5 level: the check includes real images batched with noise). Convolutions,
    normalisation, softmax and the attention products stay fp32. The copy is kept only when it agrees with
    the PyTorch fp32 encoder as closely as the fp32 contract asks (embedding cosine >= 0.9999); a model whose
    activations quantize badly fails here instead of serving worse embeddings.

    For a folder, `fp32_path` defaults to `FOLDER/model.onnx`, `out_path` to `FOLDER/model.int8.onnx`, and the
    report goes into the folder's config under `zoo.onnx_int8`.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    encoder, folder = _encoder_and_folder(encoder_or_folder)
    if fp32_path is None or out_path is None:
        if folder is None:
            raise OnnxExportError("fp32_path and out_path are needed when quantizing for an Encoder object")
        fp32_path = fp32_path or folder / ONNX_NAME
        out_path = out_path or folder / INT8_ONNX_NAME
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise OnnxExportError(f"no fp32 export at {fp32_path} to quantize (make one with `python -m zoo export`)")
    report: dict[str, Any] = {"file": out_path.name, "source": fp32_path.name, "precision": "int8",
                              "method": "onnxruntime dynamic quantization, MatMul weights int8 per tensor"}
    with atomic_path(out_path) as tmp:
        # The quantizer logs a line per tensor on the root logger: hushed for the call.
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(fp32_path, tmp, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise OnnxExportError(f"int8 quantization of {fp32_path} failed: {type(e).__name__}: {e}") from e
        finally:
            root.setLevel(level)
        quantized = sum(n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger") for n in onnx.load(tmp).graph.node)
        if quantized == 0:
            # A CNN's work is in its convolutions, which dynamic quantization leaves in fp32.
            raise OnnxExportError(f"{fp32_path} has no MatMul to quantize: an int8 copy would be no faster")
        report["quantized_matmuls"] = quantized
        if check:
            report["parity"] = check_parity(encoder, tmp, "int8")
    if folder is not None and out_path.parent.resolve() == folder.resolve():
        from zoo.folder import update_config

        update_config(folder, {"onnx_int8": report})
    report["path"] = str(out_path)
    return report


def _encoder_and_folder(encoder_or_folder: Encoder | str | os.PathLike) -> tuple[Encoder, Path | None]:
    """A CPU fp32 encoder to export or compare with, and the folder it came from (None for an Encoder)."""
    if isinstance(encoder_or_folder, Encoder):
        # A copy: the caller's encoder keeps its device and dtype (export needs CPU, fp16 halves weights).
        return copy.deepcopy(encoder_or_folder).to("cpu", torch.float32).eval(), None
    from zoo.folder import load_encoder
    from zoo.weights import resolve

    folder = resolve(encoder_or_folder)
    return load_encoder(folder, device="cpu").to("cpu", torch.float32).eval(), folder


def _export(graph: nn.Module, example: Tensor, path: Path, opset: int, outputs: list[str],
            axes: dict[int, str], exporter: str) -> None:
    import warnings

    if exporter == "dynamo":
        dims = {i: torch.export.Dim.DYNAMIC for i in axes}
        torch.onnx.export(graph, (example,), str(path), dynamo=True, opset_version=opset, input_names=[IMAGES],
                          output_names=outputs, dynamic_shapes={IMAGES: dims}, external_data=False, verbose=False)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=(torch.jit.TracerWarning, DeprecationWarning, FutureWarning))
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=opset, input_names=[IMAGES],
                          output_names=outputs, dynamic_axes={IMAGES: axes, **{o: {0: "batch"} for o in outputs}})


def ort_session(path: str | os.PathLike, providers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def check_parity(encoder: Encoder, onnx_path: str | os.PathLike, precision: str = "fp32",
                 dynamic_image_size: bool = False) -> dict[str, Any]:
    """Compare the ONNX graph (ONNX Runtime, CPU) with the PyTorch encoder; raise above the tolerance."""
    import onnxruntime as ort

    session = ort_session(onnx_path)
    tol = TOLERANCE[precision]
    size = encoder.preprocessing.image_size
    real, real_source = real_images(encoder, n=3)
    cases = {"random": torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)), "real": real}
    if precision == "int8":
        # Activations are quantized with one scale per batch, so a row depends slightly on its batch-mates:
        # real images batched with noise (whose wider range coarsens the scale) must still pass.
        cases["real_with_noise"] = torch.cat([cases["random"], real])
    if dynamic_image_size:
        step = encoder.patch_size or 16  # ViT sizes must be whole patches
        g = torch.Generator().manual_seed(1)
        cases["random_other_size"] = torch.randn(1, 3, size + 2 * step, size + step, generator=g)
        if encoder.is_vit:  # downsampling the position embedding is where antialiasing matters
            cases["random_smaller"] = torch.randn(1, 3, size - 2 * step, size - 2 * step, generator=g)
    result: dict[str, Any] = {"provider": session.get_providers()[0], "onnxruntime": ort.__version__,
                              "real_images": real_source, "tolerance": tol}
    failures = []
    for name, x in cases.items():
        got = session.run(None, {IMAGES: x.numpy()})
        with torch.no_grad():
            want = [encoder(x)] + ([encoder.cls_attention(x)] if encoder.is_vit else [])
        emb, ref = torch.from_numpy(got[0]).double(), want[0].double()
        case = {"batch": int(x.shape[0]), "size": list(x.shape[-2:]),
                "embedding_max_abs_diff": float((emb - ref).abs().max()),
                "embedding_min_cosine": float(torch.nn.functional.cosine_similarity(emb, ref, dim=1).min())}
        if case["embedding_min_cosine"] < tol["min_cosine"]:
            failures.append(f"{name}: embedding cosine {case['embedding_min_cosine']:.6f} < {tol['min_cosine']}")
        if encoder.is_vit:
            diff = float((torch.from_numpy(got[1]).double() - want[1].double()).abs().max())
            case["attention_max_abs_diff"] = diff
            if diff > tol["attention_max_abs_diff"]:
                failures.append(f"{name}: attention max abs diff {diff:.2e} > {tol['attention_max_abs_diff']}")
        result[name] = case
    if failures:
        raise OnnxExportError(f"ONNX graph of {encoder.arch} disagrees with PyTorch ({'; '.join(failures)}); "
                              "the file was not kept")
    return result


def _data_dir() -> Path | None:
    for p in (os.environ.get("ZOO_DATA_DIR"), Path(__file__).resolve().parents[1].parent / "shared" / "data"):
        if p and Path(p).is_dir():
            return Path(p)
    return None


def real_images(encoder: Encoder, n: int = 3) -> tuple[Tensor, str]:
    """`n` natural images prepared for `encoder` (Imagenette val if available, else synthetic smooth images)."""
    from PIL import Image

    pre = encoder.preprocessing
    size = pre.image_size
    data = _data_dir()
    path = data / "imagenette" / "val_96.npz" if data else None
    pics = []
    source = "synthetic smooth images (no Imagenette copy found)"
    if path is not None and path.is_file():
        z = np.load(path)
        jpeg, offsets = z["jpeg"], z["offsets"]
        for i in range(n):
            img = Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
            pics.append(np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255)
        source = f"imagenette val_96 images 0..{n - 1}, resized to {size} px"
    else:
        g = np.random.default_rng(0)
        for _ in range(n):
            low = g.random((4, 4, 3)).astype(np.float32)
            img = Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
            pics.append(np.asarray(img, dtype=np.float32) / 255)
    x = torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(), source
