"""Write the bundled default gallery: a class-balanced sample of Imagenette val images (96 px JPEGs).

    python bench/make_default_gallery.py [--per-class 30] [--data-dir ../shared/data]

The JPEG bytes are copied as stored in `imagenette/val_96.npz` (no re-encoding) into
`service/default/gallery/<class>/<file>.jpg`, with a README stating their origin and terms.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "service" / "default" / "gallery"

README = """# Default gallery: {n} Imagenette validation images ({per} per class, 96x96 JPEG)

The service embeds these images into its `default` gallery on first start (and again when the model changes),
so `/knn` and the web page work offline out of the box. Folder names are the labels.

**Origin.** Imagenette (fast.ai, https://github.com/fastai/imagenette), `imagenette2` validation split, a
10-class subset of ImageNet. The files are the first {per} images per class, in the stored order, of
`imagenette/val_96.npz` of the project's offline data: the 224x224 mirror `thunderInfy/imagenette` (commit
b850f030ff0701c36a4adc8b928ea9483a46915b) resized to 96x96 with Pillow LANCZOS and saved as JPEG quality 90.
File names keep the ImageNet file name (`n03000684_17382.jpg` is `val/n03000684/n03000684_17382.JPEG`).
Made by `python bench/make_default_gallery.py`.

**Terms.** These are ImageNet images. ImageNet's terms of access allow **non-commercial research and
educational use only**; the copyright of each image stays with its owner. The fastai/imagenette repository is
Apache-2.0 for its code and documentation and states no separate licence for the images. Replace this folder
with your own images before any commercial use.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = p.parse_args()
    z = np.load(Path(args.data_dir) / "imagenette" / "val_96.npz")
    jpeg, offsets, labels = z["jpeg"], z["offsets"], z["labels"]
    classes = [str(c).lower().replace(" ", "_") for c in z["classes"]]
    if OUT.exists():
        shutil.rmtree(OUT)
    taken = {c: 0 for c in range(len(classes))}
    total = 0
    for i, label in enumerate(labels):
        if taken[int(label)] >= args.per_class:
            continue
        taken[int(label)] += 1
        name = Path(str(z["filenames"][i])).stem + ".jpg"
        folder = OUT / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(jpeg[offsets[i]:offsets[i + 1]].tobytes())
        total += offsets[i + 1] - offsets[i]
    n = sum(taken.values())
    (OUT / "README.md").write_text(README.format(n=n, per=args.per_class))
    print(f"wrote {n} images ({total / 1e6:.2f} MB) to {OUT}")


if __name__ == "__main__":
    main()
