"""Model cards (Hugging Face format: YAML header + Markdown) rendered from a model folder's config.json.

Only what the config holds is rendered: measured numbers come from `zoo.eval`, each with the command that
measured it; numbers the authors report (converted weights) are labelled as theirs; anything else reads
"not measured". `zoo.eval` entries may be plain numbers or dicts, e.g.

    "eval": {"knn_top1": {"value": 84.1, "dataset": "cifar10", "split": "test",
                          "command": "python -m training knn --model runs/a/encoder --data cifar10"},
             "linear_top1": 88.0, "commands": {"linear_top1": "python -m training linear ..."}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zoo.atomic import atomic_write
from zoo.backbones import arch_spec
from zoo.folder import read_config

_DATASET_NAMES = {"cifar10": "CIFAR-10", "imagenette": "Imagenette", "imagenet-1k": "ImageNet-1k"}
_METRIC_TASKS = {"knn": "k-NN classification on frozen features", "linear": "linear probe on frozen features"}


def eval_results(zoo_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The measured results of `zoo.eval` as dicts: metric, value, dataset, split, command (None if unknown)."""
    ev = zoo_meta.get("eval") or {}
    commands = ev.get("commands", {}) if isinstance(ev.get("commands"), dict) else {}
    out = []
    for metric, entry in ev.items():
        if metric in ("commands", "command"):
            continue
        if isinstance(entry, dict):
            value = entry.get("value", entry.get("top1"))
            info = entry
        else:
            value, info = entry, {}
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        out.append({"metric": metric, "value": float(value),
                    "dataset": info.get("dataset") or zoo_meta.get("dataset") or "unknown",
                    "split": info.get("split"),
                    "command": info.get("command") or commands.get(metric) or ev.get("command")})
    return out


def render_card(folder: str | os.PathLike) -> str:
    """The README.md of a model folder."""
    from huggingface_hub import EvalResult, ModelCardData

    folder = Path(folder)
    cfg = read_config(folder)
    meta = cfg["zoo"]
    name = meta.get("name") or folder.name
    arch = meta["arch"]
    timm_loadable = not arch_spec(arch).cifar_stem  # timm builds our CIFAR stem only through ssl-zoo
    dataset = meta.get("dataset")
    results = eval_results(meta)
    data = ModelCardData(
        license=meta.get("license") or "other",
        library_name="timm" if timm_loadable else "pytorch",
        tags=[t for t in ("image-feature-extraction", "self-supervised", "ssl-zoo", meta.get("method"), arch) if t],
        datasets=[dataset] if dataset else None,
        model_name=name,
        eval_results=[EvalResult(
            task_type="image-classification", task_name=_task_name(r["metric"]), dataset_type=r["dataset"],
            dataset_name=_DATASET_NAMES.get(r["dataset"], r["dataset"]), dataset_split=r["split"],
            metric_type="accuracy", metric_name=r["metric"], metric_value=r["value"]) for r in results] or None,
    )
    lines = [f"---\n{data.to_yaml()}\n---", "", f"# {name}", ""]
    lines += [f"A self-supervised image encoder: **{meta.get('method', 'unknown method')}** on "
              f"**{_DATASET_NAMES.get(dataset, dataset or 'unknown data')}**, architecture `{arch}` "
              f"({cfg.get('num_features')}-d features, timm `{cfg.get('architecture')}`).", ""]
    if meta.get("paper"):
        lines += [f"Paper: {meta['paper']}", ""]
    lines += ["## Use", "", "```python", "import zoo", f'encoder = zoo.load("{name}")  # or the folder path / hf://ORG/REPO',
              "features = encoder(images)  # (B, D); images normalised as below", "```", ""]
    if timm_loadable:
        lines += ["With timm alone: `timm.create_model(\"hf-hub:ORG/REPO\", pretrained=True)` (or "
                  "`\"local-dir:PATH\"` for a folder on disk).", ""]
    pre = cfg.get("pretrained_cfg", {})
    lines += [f"Preprocessing: input {pre.get('input_size')}, mean {pre.get('mean')}, std {pre.get('std')}, "
              f"{pre.get('interpolation')} resize, crop_pct {pre.get('crop_pct')}.", ""]
    lines += _training_section(meta)
    lines += _results_section(results, meta)
    lines += _onnx_section(meta.get("onnx"))
    lines += ["## Intended use and limits", "",
              "Feature extraction for retrieval, k-NN / linear classification and attention visualisation. "
              "The encoder was trained without labels on the data set above and inherits its biases and "
              f"licence terms; features of images far from {_DATASET_NAMES.get(dataset, dataset or 'that data')} "
              "may transfer poorly. It is not a classifier and not meant for decisions about people.", ""]
    return "\n".join(lines)


def _task_name(metric: str) -> str:
    return next((v for k, v in _METRIC_TASKS.items() if metric.startswith(k)), metric)


def _training_section(meta: dict[str, Any]) -> list[str]:
    lines = ["## Training", ""]
    source = meta.get("source")
    if source:
        lines += [f"Weights released by the authors ({source.get('upstream') or source.get('url')}), converted to "
                  f"timm key names by `zoo.convert` ({(meta.get('converted_from') or {}).get('layout', '?')} "
                  f"layout). Source file sha256 (published, or recorded on first download): "
                  f"{source.get('sha256') or 'not recorded'}.", ""]
    if meta.get("epochs") is not None:
        lines += [f"Epochs: {meta['epochs']}.", ""]
    budget = meta.get("budget")
    if isinstance(budget, dict) and budget.get("train_seconds") is not None:
        lines += [f"Trained in {budget['train_seconds'] / 60:.1f} min wall clock ({budget.get('steps')} steps x batch "
                  f"{budget.get('batch_size')}, {budget.get('train_images')} training images) on "
                  f"{budget.get('machine', 'an unrecorded machine')}; made by `{budget.get('command', '?')}`.", ""]
    for name, b in (meta.get("baselines") or {}).items():
        lines += [f"Baseline, {name}: {b.get('metric')} {b.get('value'):.2f} (`{b.get('command', '?')}`).", ""]
    if meta.get("train_config"):
        lines += ["Recipe (`zoo.train_config`):", "", "```json", json.dumps(meta["train_config"], indent=2), "```", ""]
    elif not source:
        lines += ["Training recipe: not recorded in the folder's config.", ""]
    return lines


def _results_section(results: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    lines = ["## Results", ""]
    if results:
        lines += ["Measured by us:", "", "| metric | value | data | command |", "|---|---:|---|---|"]
        for r in results:
            data = r["dataset"] + (f" ({r['split']})" if r["split"] else "")
            cmd = f"`{r['command']}`" if r["command"] else "command not recorded"
            lines.append(f"| {r['metric']} | {r['value']:.2f} | {data} | {cmd} |")
        lines.append("")
    else:
        lines += ["k-NN and linear-probe accuracy: not measured.", ""]
    if meta.get("reported"):
        lines += ["Reported by the authors (not measured here):", "", "| metric | value | data | source |",
                  "|---|---:|---|---|"]
        lines += [f"| {r['metric']} | {r['value']:.1f} | {r['dataset']} | {r['source']} |" for r in meta["reported"]]
        lines.append("")
    return lines


def _onnx_section(onnx: dict[str, Any] | None) -> list[str]:
    lines = ["## ONNX", ""]
    if not onnx or "parity" not in onnx:
        return lines + ["ONNX export: not measured (`python -m zoo export FOLDER` writes model.onnx and its parity).", ""]
    p = onnx["parity"]
    lines += [f"`{onnx.get('file', 'model.onnx')}`: opset {onnx.get('opset')}, {onnx.get('precision')}, outputs "
              f"{', '.join(onnx.get('outputs', []))}; dynamic batch, "
              f"{'dynamic' if onnx.get('dynamic_image_size') else 'fixed'} image size. Parity with PyTorch in "
              f"ONNX Runtime {p.get('onnxruntime')} ({p.get('provider')}):", "",
              "| inputs | batch | emb. max abs diff | emb. min cosine | attention max abs diff |",
              "|---|---:|---:|---:|---:|"]
    for case in ("random", "real", "random_other_size", "random_smaller"):
        if case in p:
            c = p[case]
            att = f"{c['attention_max_abs_diff']:.1e}" if "attention_max_abs_diff" in c else "-"
            lines.append(f"| {case} | {c['batch']} | {c['embedding_max_abs_diff']:.1e} | "
                         f"{c['embedding_min_cosine']:.6f} | {att} |")
    lines += ["", f"Real inputs: {p.get('real_images')}.", ""]
    return lines


def write_card(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the card to `out` (default `model_cards/NAME.md` under the current directory)."""
    cfg = read_config(folder)
    name = cfg["zoo"].get("name") or Path(folder).name
    out = Path(out) if out else Path("model_cards") / f"{name}.md"
    text = render_card(folder)
    atomic_write(out, lambda p: p.write_text(text))
    return out
