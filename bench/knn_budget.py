"""Train each method for the same CPU time budget on CIFAR-10, then score its encoder by weighted kNN on the
full test set, next to the same architecture at random initialisation.

    python bench/knn_budget.py --methods simclr --minutes 20
    python bench/knn_budget.py --methods simclr,mocov2,byol --minutes 5 --out bench/results/knn_budget_all.json

The schedule must fit the budget (a cosine that never decays is a worse model), so each method is timed for
a few steps first, and its run is sized to the number of steps the budget allows. Prints a table and writes
JSON (one row per method, plus the random-init baseline). Columns: steps done, images/s, wall time, kNN
top-1/top-5 on the 10,000 test images (gallery: the first --gallery train images), and the collapse check:
std of the L2-normalised test embeddings times sqrt(D) (about 1 when spread out, 0 when collapsed).

Two things differ per method, both printed in the JSON so the table can be reproduced:
- Memory-bank methods (InstDisc, CMC) make several passes over a smaller prefix of the training set: a bank
  entry is the image's feature from its previous visit, so a single pass scores every image against a random
  vector. `--min-epochs METHOD=N` changes it.
- Short-run options (SHORT_RUN_OPTIONS): the papers' EMA momenta and queue lengths are set for runs of
  hundreds of thousands of steps. In a few hundred, a 0.996-0.999 momentum network hardly leaves its random
  init (DINO exports it), and a 65536-key queue is mostly the random vectors it starts with: momentum 0.99 and
  a 4096-key queue here, and a 4096-way DINO head with 2 small crops. DINO's exported teacher gets 0.95: at
  0.99 it is still more than half its random init after the ~60 steps DINO makes in 3 minutes (with the BN
  head below, that teacher scored 21.4% and its own student 22.2%); its head uses the authors'
  `use_bn_in_head` option, which spreads the teacher's outputs apart from the start, where centring otherwise
  leaves nearly uniform targets. InstDisc and CMC use the softmax variant: NCE's normaliser Z, fixed from the
  first batch (scored against a random bank), is off by orders of magnitude once the bank holds real features,
  and the loss diverges. The SGD methods' ImageNet learning rates (0.03-0.06 per 256 images) barely move a
  network in a few hundred steps: they get 0.3 per 256, solo-learn's CIFAR-10 value for MoCo v2+; DINO gets
  2e-3. Even so, MoCo v1/v2 and SimSiam stayed below random init with SGD: from a random network every image
  embeds in nearly the same direction, the gradients are tiny, and MoCo's loss sat at ln(K+1) all run. LARS
  scales each layer's step to its weight norm, as SimCLR, BYOL, Barlow Twins and MoCo v3 (all above random
  init here) do, so these three use LARS (SHORT_RUN_OPTIMIZER). `--option METHOD:KEY=VALUE`, `--lr
  METHOD=VALUE` and `--optimizer METHOD=NAME` override them.
A method whose exported encoder is a composite of the backbone (CPC's patch grid, CMC's L/ab halves, SimCLR
v2's backbone plus head layer) is compared with a random init of that same composite as well.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.budget import budget_config, seconds_per_step  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.evaluate import extract_features, knn_classify  # noqa: E402
from training.trainer import Trainer  # noqa: E402
from zoo.atomic import write_json_atomic  # noqa: E402
from zoo.backbones import build_encoder  # noqa: E402
from zoo.folder import build_from_config, read_config  # noqa: E402


def embedding_spread(features: torch.Tensor) -> float:
    z = F.normalize(features.float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def score(encoder, gallery, test, k: int, temperature: float) -> dict:
    ftr, ytr = extract_features(encoder, gallery, batch_size=512, device="cpu", desc="gallery")
    fte, yte = extract_features(encoder, test, batch_size=512, device="cpu", desc="test")
    r = knn_classify(ftr, ytr, fte, yte, k=k, temperature=temperature, num_classes=10)
    return {"knn_top1": r.top1, "knn_top5": r.top5, "embedding_std": embedding_spread(fte)}


MIN_EPOCHS = {"instdisc": 4, "cmc": 4}
SHORT_RUN_OPTIONS = {"dino": {"momentum_teacher": "0.95", "out_dim": "4096", "num_local_crops": "2",
                              "use_bn_in_head": "true"},
                     "byol": {"momentum_ema": "0.99"},
                     "mocov1": {"queue_size": "4096", "momentum_ema": "0.99"},
                     "mocov2": {"queue_size": "4096", "momentum_ema": "0.99"},
                     "instdisc": {"loss": "softmax"}, "cmc": {"loss": "softmax"}}
SHORT_RUN_LR = {"mocov1": 0.3, "mocov2": 0.3, "simsiam": 0.3, "invaspread": 0.3, "instdisc": 0.3, "cmc": 0.3,
                "dino": 0.002}  # per 256 images
SHORT_RUN_OPTIMIZER = {"mocov1": "lars", "mocov2": "lars", "simsiam": "lars"}


def random_twin(folder: Path, seed: int):
    """The encoder a folder holds, at random initialisation (same arch and arguments)."""
    torch.manual_seed(seed)
    return build_from_config(read_config(folder)).eval()


def run_method(method: str, args, train_all, gallery, test) -> dict:
    out = Path(args.runs) / f"{method}_{args.arch}"
    options = {**SHORT_RUN_OPTIONS.get(method, {}), **args.option.get(method, {})}
    lr = args.lr.get(method)
    lr = lr * args.batch_size / 256 if lr is not None else None
    base = TrainConfig(method=method, arch=args.arch, data="cifar10", out=str(out), epochs=1, lr=lr,
                       optimizer=args.optimizer.get(method),
                       batch_size=args.batch_size, seed=args.seed, checkpoint_every=10**9, log_every=10,
                       progress=True, device="cpu", method_options=options)
    shutil.rmtree(out, ignore_errors=True)  # this script owns its run folders
    s_per_step = seconds_per_step(base, train_all, args.probe_steps)
    cfg = budget_config(base, train_all, args.minutes, s_per_step, min_epochs=args.min_epochs.get(method, 1))
    limit, epochs = cfg.limit_train, cfg.epochs
    t0 = time.perf_counter()
    trainer = Trainer(cfg, dataset=train_all.subset(limit))
    folder = trainer.fit()
    wall = time.perf_counter() - t0
    import zoo

    row = {"method": method, "arch": args.arch, "steps": trainer.step, "epochs": epochs, "train_images": limit,
           "batch_size": args.batch_size, "train_seconds": wall, "images_per_s": trainer.step * args.batch_size / wall,
           "probe_seconds_per_step": s_per_step, "method_options": options, "lr": trainer.base_lr,
           "optimizer": trainer.optimizer_name, "encoder": str(folder),
           "command": "python " + " ".join(sys.argv)}
    row.update(score(zoo.load(str(folder), device="cpu"), gallery, test, args.k, args.temperature))
    exported_arch = read_config(folder)["zoo"]["arch"]
    if exported_arch != args.arch:
        twin = score(random_twin(folder, args.seed), gallery, test, args.k, args.temperature)
        row["random_init_same_encoder"] = {"arch": exported_arch, **twin}
    return row


def parse_options(items: list[str]) -> dict[str, dict[str, str]]:
    """--option byol:proj_dim=128 -> {"byol": {"proj_dim": "128"}}"""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        method, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        out.setdefault(method, {})[k] = v
    return out


def per_method(parser: argparse.ArgumentParser, flag: str, items: list[str], defaults: dict[str, Any],
               cast: Callable[[str], Any]) -> dict[str, Any]:
    """{method: value} from a repeated METHOD=VALUE flag, over `defaults`; a malformed item is a usage error."""
    out = dict(defaults)
    for item in items:
        method, sep, value = item.partition("=")
        try:
            if not (sep and method):
                raise ValueError
            out[method] = cast(value)
        except ValueError:
            parser.error(f"{flag} {item!r}: expected METHOD=VALUE")
    return out


def _listed(defaults: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in defaults.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="simclr", help="comma-separated method names")
    p.add_argument("--arch", default="resnet18_cifar")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per method (wall clock)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--gallery", type=int, default=10000, help="train images in the kNN gallery")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--probe-steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], help="METHOD:KEY=VALUE method option")
    p.add_argument("--lr", action="append", default=[],
                   help=f"METHOD=LR per 256 images (default: {_listed(SHORT_RUN_LR)}; others: their paper's)")
    p.add_argument("--optimizer", action="append", default=[],
                   help=f"METHOD=sgd|lars|adamw (default: {_listed(SHORT_RUN_OPTIMIZER)}; others: their paper's)")
    p.add_argument("--min-epochs", action="append", default=[],
                   help=f"METHOD=N passes at least (default: {_listed(MIN_EPOCHS)})")
    p.add_argument("--runs", default="runs/knn_budget")
    p.add_argument("--out", default="bench/results/knn_budget.json")
    p.add_argument("--update", action="store_true",
                   help="keep the other methods' rows of an existing --out (same settings) and replace these")
    args = p.parse_args()
    args.option = parse_options(args.option)
    args.optimizer = per_method(p, "--optimizer", args.optimizer, SHORT_RUN_OPTIMIZER, str)
    args.lr = per_method(p, "--lr", args.lr, SHORT_RUN_LR, float)
    args.min_epochs = per_method(p, "--min-epochs", args.min_epochs, MIN_EPOCHS, int)
    torch.manual_seed(args.seed)

    train_all = load_dataset("cifar10", "train")
    gallery = train_all.subset(args.gallery)
    test = load_dataset("cifar10", "test")
    rows = _previous_rows(args) if args.update else []
    random_init = build_encoder(args.arch, image_size=32, dataset="cifar10").eval()
    _put(rows, {"method": "random-init", "arch": args.arch, "steps": 0, "images_per_s": None,
                **score(random_init, gallery, test, args.k, args.temperature)})
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        _put(rows, run_method(method, args, train_all, gallery, test))
        _write(args, rows)
        _print(rows)
    _write(args, rows)
    _print(rows)


def _previous_rows(args) -> list[dict]:
    path = Path(args.out)
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    same = {"minutes_per_method": args.minutes, "arch": args.arch, "batch_size": args.batch_size,
            "gallery_train_images": args.gallery}
    differs = {k: (old.get(k), v) for k, v in same.items() if old.get(k) != v}
    if differs:
        sys.exit(f"error: --update needs the settings of {path}; these differ (old, new): {differs}")
    return old["rows"]


def _put(rows: list[dict], row: dict) -> None:
    """Replace the row of the same method, or append."""
    for i, r in enumerate(rows):
        if r["method"] == row["method"]:
            rows[i] = row
            return
    rows.append(row)


def _write(args, rows) -> None:
    write_json_atomic(args.out, {
        "benchmark": "knn_budget", "minutes_per_method": args.minutes, "arch": args.arch,
        "batch_size": args.batch_size, "gallery_train_images": args.gallery, "test_images": 10000,
        "knn": {"k": args.k, "temperature": args.temperature}, "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(), "rows": rows,
        "command": " ".join(sys.argv)})


def _print(rows) -> None:
    base = rows[0]["knn_top1"]
    print(f"\n{'method':<14}{'steps':>7}{'epochs':>7}{'img/s':>8}{'minutes':>9}{'kNN top-1':>11}{'top-5':>8}"
          f"{'emb std':>9}{'random init':>13}")
    for r in rows:
        ips = f"{r['images_per_s']:.1f}" if r.get("images_per_s") else "-"
        mins = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "-"
        twin = r.get("random_init_same_encoder")
        ref = f"{twin['knn_top1']:.4f}*" if twin else f"{base:.4f}"
        print(f"{r['method']:<14}{r['steps']:>7}{r.get('epochs', '-'):>7}{ips:>8}{mins:>9}{r['knn_top1']:>11.4f}"
              f"{r['knn_top5']:>8.4f}{r['embedding_std']:>9.3f}{ref:>13}")
    if any(r.get("random_init_same_encoder") for r in rows):
        print("* random init of the method's own composite encoder (same arch and arguments as it exports)")


if __name__ == "__main__":
    main()
