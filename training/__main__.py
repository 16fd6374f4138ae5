"""`python -m training fit|knn|linear`: train a self-supervised encoder and evaluate it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from zoo.errors import ZooError


def _method_names() -> str:
    from training.methods import METHODS

    return ", ".join(sorted(METHODS))


def build_parser() -> argparse.ArgumentParser:
    from zoo.backbones import list_archs

    p = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train an encoder with a self-supervised method",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fit.add_argument("--method", required=True, help=f"the method: {_method_names()}")
    fit.add_argument("--arch", default="resnet18_cifar", help=f"backbone: {', '.join(list_archs())}")
    fit.add_argument("--data", default="cifar10", help="cifar10, imagenette (96 px), or a path to an image folder")
    fit.add_argument("--data-dir", default=None, help="folder holding cifar10/ and imagenette/ "
                     "(default: $ZOO_DATA_DIR, then ../shared/data beside the project)")
    fit.add_argument("--epochs", type=int, default=1, help="passes over the training set; schedules span them all")
    fit.add_argument("--batch-size", type=int, default=256,
                     help="per-process batch; contrastive methods get better with more negatives, so larger helps")
    fit.add_argument("--limit-train", type=int, default=None, help="train on the first N images only (quick runs)")
    fit.add_argument("--image-size", type=int, default=None, help="crop size of the views (default: the data's size)")
    fit.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    fit.add_argument("--seed", type=int, default=0, help="one seed for data order, augmentations and init")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoint-last.pt")
    fit.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoint-last.pt, encoder/")
    fit.add_argument("--optimizer", default=None, choices=["sgd", "lars", "adamw"],
                     help="default: the method's paper (LARS for SimCLR, SGD for MoCo)")
    fit.add_argument("--lr", type=float, default=None,
                     help="peak learning rate (default: the paper's base lr x global batch / 256)")
    fit.add_argument("--weight-decay", type=float, default=None, help="default: the paper's")
    fit.add_argument("--warmup-epochs", type=float, default=None,
                     help="linear warm-up before the cosine decay (default: the paper's, at most 10%% of the run)")
    fit.add_argument("--num-workers", type=int, default=None,
                     help="data-loading processes (0: in the main process; default: CPU cores - 1, at least 1)")
    fit.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                     help="bf16 autocast (default: on for CUDA)")
    fit.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                     help="NHWC memory layout, faster convolutions (default: on for CNNs)")
    fit.add_argument("--compile", action="store_true", help="torch.compile the training step (CUDA; slow start)")
    fit.add_argument("--sync-bn", action="store_true",
                     help="batch norm over the global batch across processes (SimCLR's global BN)")
    fit.add_argument("--gpu-augment", action=argparse.BooleanOptionalAction, default=None,
                     help="make views in batch on the GPU with kornia (default: on for CUDA with in-memory data)")
    fit.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    fit.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl lines")
    fit.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.add_argument("--crop", default="random", choices=["random", "contrastive"],
                     help="how views are cropped: random resized crops, or ContrastiveCrop (Peng et al. 2022: "
                     "after a warm-up, crops centred inside boxes from the model's own heat maps)")
    fit.add_argument("--color-strength", type=float, default=1.0,
                     help="scale the method's colour jitter (SimCLR's distortion strength); 0 turns colour "
                     "jitter, grayscale and solarize off")
    fit.add_argument("-o", "--method-option", action="append", default=[], metavar="KEY=VALUE",
                     help="override a method hyperparameter, e.g. -o temperature=0.2 -o queue_size=4096")

    for name, helptext in (("knn", "weighted kNN classification on frozen features (DINO protocol)"),
                           ("linear", "linear probe on frozen features")):
        e = sub.add_parser(name, help=helptext, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        e.add_argument("--model", required=True, help="a model folder (e.g. runs/NAME/encoder) or a zoo name")
        e.add_argument("--data", default="cifar10", help="cifar10, imagenette, or a labelled image folder (train)")
        e.add_argument("--test-data", default=None, help="labelled image folder to test on, when --data is a folder")
        e.add_argument("--data-dir", default=None, help="folder holding cifar10/ and imagenette/")
        e.add_argument("--limit-train", type=int, default=None, help="use the first N training images")
        e.add_argument("--limit-test", type=int, default=None, help="use the first N test images")
        e.add_argument("--batch-size", type=int, default=256, help="batch for feature extraction")
        e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
        e.add_argument("--json", action="store_true", help="print a JSON object with top1/top5 as the last line")
        e.add_argument("--no-progress", action="store_true", help="no progress bar")
        e.add_argument("--record", action="store_true",
                       help="write the result, with this command, into the model folder's config.json (zoo.eval), "
                            "where model cards read it")
        if name == "knn":
            e.add_argument("-k", "--k", type=int, default=20, help="neighbours that vote")
            e.add_argument("--temperature", type=float, default=0.07, help="votes weighted by exp(similarity / T)")
        else:
            e.add_argument("--epochs", type=int, default=100, help="passes of the linear classifier")
            e.add_argument("--lr", type=float, default=0.1, help="SGD learning rate of the classifier")
    return p


def _parse_options(items: list[str]) -> dict[str, Any]:
    from training.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"-o {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_fit(args: argparse.Namespace) -> int:
    from training.config import TrainConfig
    from training.trainer import Trainer

    cfg = TrainConfig(method=args.method, arch=args.arch, data=args.data, out=args.out, data_dir=args.data_dir,
                      epochs=args.epochs, batch_size=args.batch_size, limit_train=args.limit_train,
                      image_size=args.image_size, device=args.device, seed=args.seed, resume=args.resume,
                      optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                      warmup_epochs=args.warmup_epochs, num_workers=args.num_workers, amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile, sync_bn=args.sync_bn,
                      gpu_augment=args.gpu_augment, checkpoint_every=args.checkpoint_every,
                      log_every=args.log_every, max_steps=args.max_steps, progress=not args.no_progress,
                      crop=args.crop, color_strength=args.color_strength,
                      method_options=_parse_options(args.method_option))
    from zoo.backbones import arch_spec

    arch_spec(cfg.arch)  # fail on an unknown arch before loading data
    trainer = Trainer(cfg)
    folder = trainer.fit()
    if trainer.rank == 0:
        print(f"step {trainer.step}/{trainer.total_steps}; " +
              (f"encoder written to {folder}" if trainer.step >= trainer.total_steps
               else f"checkpoint in {folder}; continue with --resume"))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import zoo
    from training.data import load_dataset
    from training.errors import ConfigError
    from training.evaluate import knn_eval, linear_eval
    from training.trainer import resolve_device

    device = resolve_device(args.device)
    encoder = zoo.load(args.model, device=device)
    if args.data in ("cifar10", "imagenette"):
        train = load_dataset(args.data, "train", args.data_dir, args.limit_train)
        test = load_dataset(args.data, "test", args.data_dir, args.limit_test)
    else:
        if not args.test_data:
            raise ConfigError("--data is an image folder: also pass --test-data FOLDER to evaluate on")
        train = load_dataset(args.data, limit=args.limit_train)
        test = load_dataset(args.test_data, limit=args.limit_test)
    if args.command == "knn":
        r = knn_eval(encoder, train, test, k=args.k, temperature=args.temperature, batch_size=args.batch_size,
                     device=device, progress=not args.no_progress)
        extra = {"k": args.k, "temperature": args.temperature}
    else:
        r = linear_eval(encoder, train, test, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        device=device, progress=not args.no_progress)
        extra = {"epochs": args.epochs}
    result = {"top1": r.top1, "top5": r.top5, "n_train": r.n_train, "n_test": r.n_test, "model": args.model,
              "data": args.data, **extra}
    if args.record:
        _record(args, r, extra)
    print(f"{args.command}: top-1 {r.top1:.4f}  top-5 {r.top5:.4f}  ({r.n_train} train, {r.n_test} test images)")
    if args.json:
        print(json.dumps(result))
    return 0


def _record(args: argparse.Namespace, r: Any, extra: dict[str, Any]) -> None:
    """Store top-1/top-5 (in %) with the exact command in the folder's `zoo.eval`."""
    import shlex

    from training.errors import ConfigError
    from zoo.folder import is_model_folder, update_config

    if not is_model_folder(args.model):
        raise ConfigError(f"--record needs a model folder; {args.model!r} is not one")
    command = "python -m training " + " ".join(shlex.quote(a) for a in args.argv)
    split = "test" if args.data in ("cifar10", "imagenette") else args.test_data
    common = {"dataset": args.data, "split": split, "command": command, "n_train": r.n_train, "n_test": r.n_test,
              **extra}
    update_config(args.model, {"eval": {
        f"{args.command}_top1": {"value": 100 * r.top1, **common},
        f"{args.command}_top5": {"value": 100 * r.top5, **common}}})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("ZOO_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        if args.command == "fit":
            return cmd_fit(args)
        return cmd_eval(args)
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume (from the last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
