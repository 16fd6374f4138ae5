"""`python -m zoo list|info|convert|export|card|push`: the zoo from the command line.

Errors a user can fix (unknown name or arch, missing file, no network) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from zoo.errors import ZooError


def _list(args: argparse.Namespace) -> None:
    from zoo.registry import list_models, spec

    rows = [("name", "method", "arch", "dim", "source")]
    for name in list_models(args.filter):
        s = spec(name)
        rows.append((s.name, s.method, s.arch, str(s.embed_dim), s.source_summary))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])


def _info(args: argparse.Namespace) -> None:
    from zoo.registry import spec
    from zoo.weights import converted_path, download_path

    s = spec(args.name)
    d = s.to_dict()
    if s.sources and not s.folder:
        d["cache"] = {"download": str(download_path(s)), "converted": str(converted_path(s))}
    print(json.dumps(d, indent=2))


def _convert(args: argparse.Namespace) -> None:
    from zoo.convert import convert_checkpoint

    meta = {k: v for k, v in {"name": args.name, "method": args.method or args.layout,
                              "dataset": args.dataset}.items() if v}
    out = convert_checkpoint(args.layout, args.checkpoint, args.arch, args.out, zoo_meta=meta,
                             dataset=args.dataset)
    print(f"wrote {out}")


def _export(args: argparse.Namespace) -> None:
    from zoo.onnx import export_onnx, quantize_onnx

    if args.int8 and args.fp16:
        raise SystemExit("error: --int8 quantizes the fp32 graph; it cannot be combined with --fp16")
    report = export_onnx(args.model, args.out, opset=args.opset, fp16=args.fp16, exporter=args.exporter,
                         dynamic_image_size=True if args.dynamic_image_size else None)
    print(f"wrote {report['path']} ({report['precision']}, opset {report['opset']}, "
          f"dynamic image size: {report['dynamic_image_size']})")
    _print_parity(report["parity"])
    if args.int8:
        fp32 = Path(report["path"])
        report = quantize_onnx(args.model, fp32, fp32.with_suffix(".int8.onnx"))
        print(f"wrote {report['path']} (int8 weights in {report['quantized_matmuls']} MatMuls, for CPUs)")
        _print_parity(report["parity"])


def _print_parity(parity: dict) -> None:
    for case in ("random", "real", "random_other_size", "random_smaller"):
        if case in parity:
            c = parity[case]
            att = f", attention max abs diff {c['attention_max_abs_diff']:.2e}" if "attention_max_abs_diff" in c else ""
            print(f"  {case:18s} embedding max abs diff {c['embedding_max_abs_diff']:.2e}, "
                  f"min cosine {c['embedding_min_cosine']:.6f}{att}")


def _card(args: argparse.Namespace) -> None:
    from zoo.cards import write_card

    print(f"wrote {write_card(args.folder, args.out)}")


def _push(args: argparse.Namespace) -> None:
    from zoo.hub import push_to_hub

    print(push_to_hub(args.folder, args.repo, token=args.token, private=args.private))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zoo", description="Self-supervised encoders by name.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("list", help="the registered models: name, method, arch, feature width, weight source")
    c.add_argument("filter", nargs="?", help="only names containing this")
    c.set_defaults(func=_list)

    c = sub.add_parser("info", help="everything the registry knows about one model (JSON)")
    c.add_argument("name")
    c.set_defaults(func=_info)

    c = sub.add_parser("convert", help="an official checkpoint -> a model folder")
    c.add_argument("--from", dest="layout", required=True,
                   help="upstream layout: dino, moco, mocov3, swav, barlowtwins, simsiam, simclr, byol, timm")
    c.add_argument("--checkpoint", required=True, help="the authors' .pth / .pth.tar file (read without pickle code)")
    c.add_argument("--arch", required=True, help="our architecture name, e.g. resnet50, vit_small")
    c.add_argument("--out", required=True, help="model folder to write")
    c.add_argument("--name", help="model name recorded in config.json")
    c.add_argument("--method", help="method recorded in config.json (default: the layout)")
    c.add_argument("--dataset", help="training data set, e.g. imagenet-1k")
    c.set_defaults(func=_convert)

    c = sub.add_parser("export", help="ONNX export with a parity check against PyTorch")
    c.add_argument("model", help="model folder or registry name")
    c.add_argument("--out", help="ONNX file (default: FOLDER/model.onnx, and parity written to its config)")
    c.add_argument("--opset", type=int, default=18)
    c.add_argument("--fp16", action="store_true", help="fp16 weights and compute; input/outputs stay float32")
    c.add_argument("--int8", action="store_true",
                   help="also write an int8 copy (model.int8.onnx) for CPU serving, kept only if it passes parity")
    c.add_argument("--exporter", choices=("torchscript", "dynamo"),
                   help="default: torchscript, or dynamo for a ViT with --dynamic-image-size")
    c.add_argument("--dynamic-image-size", action="store_true",
                   help="ViTs: any image size (multiple of the patch), via the dynamo exporter; CNNs always are")
    c.set_defaults(func=_export)

    c = sub.add_parser("card", help="render the model card (Hugging Face format) of a model folder")
    c.add_argument("folder")
    c.add_argument("--out", help="default: model_cards/NAME.md")
    c.set_defaults(func=_card)

    c = sub.add_parser("push", help="upload a model folder and its card to the Hugging Face Hub")
    c.add_argument("folder")
    c.add_argument("repo", help="ORG/NAME")
    c.add_argument("--token", help="default: the token of `hf auth login`")
    c.add_argument("--private", action="store_true")
    c.set_defaults(func=_push)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `python -m zoo list | head`
        return 0
    except OSError as e:  # an output path we cannot write (permissions, full disk)
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
