"""Train, evaluate and ship the service's bundled default model: DINO with a ViT-Tiny, patch 8, on Imagenette at
96 px, trained by our own trainer within a wall-clock CPU budget.

    python bench/make_default_model.py --minutes 30

Steps: size the run to the budget (training.budget), `fit` with DINO, score the teacher (what DINO exports) by
weighted kNN on the full Imagenette val split (gallery: the first --gallery train images) through
`python -m training knn --record`, write the folder as fp16 safetensors into service/default/model/, and render
its model card into model_cards/. Prints a summary table and writes bench/results/default_model.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.__main__ import main as training_cli  # noqa: E402
from training.budget import budget_config, seconds_per_step  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.trainer import Trainer  # noqa: E402
from zoo.atomic import write_json_atomic  # noqa: E402
from zoo.cards import write_card  # noqa: E402
from zoo.folder import load_encoder, read_config, save_encoder  # noqa: E402

NAME = "dino_vittiny8_imagenette"


def random_init_knn(gallery: int) -> dict:
    """kNN top-1 of the same architecture at random initialisation (seed 0): what training must beat."""
    from training.evaluate import knn_eval
    from zoo.backbones import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("vit_tiny_p8", dataset="imagenette").eval()
    r = knn_eval(enc, load_dataset("imagenette", "train", limit=gallery), load_dataset("imagenette", "test"),
                 progress=False)
    return {"metric": "knn_top1", "value": 100 * r.top1, "top5": 100 * r.top5,
            "command": f"python bench/make_default_model.py (random_init_knn, gallery {gallery})"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training budget (wall clock)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gallery", type=int, default=3000, help="train images in the kNN gallery")
    p.add_argument("--runs", default="runs/default_model")
    p.add_argument("--dest", default=str(ROOT / "service" / "default" / "model"))
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW lr (the paper's base lr, unscaled: short run)")
    p.add_argument("--color-strength", type=float, default=1.0, help="scale DINO's colour distortion (0: none)")
    p.add_argument("--option", action="append", default=[],
                   help="DINO option KEY=VALUE, added to the short-run defaults below")
    args = p.parse_args()
    # A CPU budget allows a fraction of an epoch: a smaller head, 2 local crops, a faster teacher, and no
    # frozen last layer (freezing "the first epoch" would freeze it for the whole run).
    options = {"out_dim": "4096", "num_local_crops": "2", "momentum_teacher": "0.99", "freeze_last_layer_epochs": "0",
               **dict(o.split("=", 1) for o in args.option)}

    data = load_dataset("imagenette", "train")
    base = TrainConfig(method="dino", arch="vit_tiny_p8", data="imagenette", out=args.runs, epochs=1,
                       batch_size=args.batch_size, device="cpu", checkpoint_every=50, log_every=5, lr=args.lr,
                       color_strength=args.color_strength, method_options=options)
    shutil.rmtree(args.runs, ignore_errors=True)
    s_per_step = seconds_per_step(base, data, probe_steps=2)
    cfg = budget_config(base, data, args.minutes, s_per_step)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, dataset=data.subset(cfg.limit_train))
    folder = trainer.fit()
    train_seconds = time.perf_counter() - t0

    knn_args = ["knn", "--model", str(folder), "--data", "imagenette", "--limit-train", str(args.gallery),
                "--record", "--json", "--no-progress", "--device", "cpu"]
    training_cli(knn_args)
    encoder = load_encoder(folder)
    meta = read_config(folder)["zoo"]
    meta["baselines"] = {"random init, same arch and kNN protocol": random_init_knn(args.gallery)}
    meta.update(name=NAME, budget={
        "minutes": args.minutes, "train_seconds": round(train_seconds, 1), "steps": trainer.step,
        "epochs": cfg.epochs, "train_images": cfg.limit_train, "batch_size": cfg.batch_size,
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "command": "python bench/make_default_model.py " + " ".join(sys.argv[1:])})
    dest = Path(args.dest)
    shutil.rmtree(dest, ignore_errors=True)
    save_encoder(encoder, dest, meta, dtype=torch.float16)
    card = write_card(dest, ROOT / "model_cards" / f"{NAME}.md")
    shutil.copy(card, dest / "README.md")
    ev = meta.get("eval", {})
    result = {"name": NAME, "steps": trainer.step, "train_seconds": train_seconds, "seconds_per_step": s_per_step,
              "knn_top1": ev.get("knn_top1", {}).get("value"), "knn_top5": ev.get("knn_top5", {}).get("value"),
              "random_init_knn_top1": meta["baselines"]["random init, same arch and kNN protocol"]["value"],
              "weights_bytes": (dest / "model.safetensors").stat().st_size, "command": meta["budget"]["command"]}
    write_json_atomic(ROOT / "bench" / "results" / "default_model.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
