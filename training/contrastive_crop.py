"""ContrastiveCrop (Peng, Wang, Wang, You, CVPR 2022, "Crafting Better Contrastive Views for Siamese
Representation Learning"), a crop any method can use (`--crop contrastive`).

After a warm-up of random crops (the first 10% of epochs), every image gets a bounding box around what
the model itself finds salient: the encoder's last feature map summed over channels, min-max normalised,
upsampled to the image and thresholded at 0.1. Boxes are refreshed every 10% of the epochs. A crop's
scale and aspect ratio are drawn as in RandomResizedCrop; its centre is drawn inside the box from a
Beta(0.6, 0.6) per axis, which favours the box's borders over its centre, so the two views of an image
overlap less (center-suppressed sampling) while both stay on the object. The boxes and the epoch of their
last refresh are buffers: the trainer checkpoints them, so a resumed run crops exactly as before."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from training.augment import ViewConfig, _random_crop, eval_transform
from training.data import ImageData


class ContrastiveCrop(nn.Module):
    """The crop function (`crop_fn(image_uint8_chw, index, view_config)`) plus the per-image boxes."""

    def __init__(self, num_images: int, epochs: int, warmup_fraction: float = 0.1, interval_fraction: float = 0.1,
                 threshold: float = 0.1, alpha: float = 0.6):
        super().__init__()
        self.warmup_epochs = max(1, math.ceil(warmup_fraction * epochs))
        self.interval = max(1, round(interval_fraction * epochs))
        self.threshold = threshold
        self.alpha = alpha
        # (x0, y0, x1, y1) as fractions of the image; the whole image until the first refresh.
        self.register_buffer("boxes", torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(num_images, 1))
        self.register_buffer("boxes_epoch", torch.tensor(-1))  # epoch of the last refresh; -1: none yet

    @property
    def active(self) -> bool:
        return int(self.boxes_epoch) >= 0

    def due(self, epoch: int) -> bool:
        """Whether boxes are to be (re)computed at the start of `epoch` (and have not been yet)."""
        return (epoch >= self.warmup_epochs and (epoch - self.warmup_epochs) % self.interval == 0
                and int(self.boxes_epoch) < epoch)

    @torch.no_grad()
    def refresh(self, encoder: nn.Module, data: ImageData, image_size: int, device: str, epoch: int,
                batch_size: int = 256) -> None:
        """Recompute every image's box from `encoder.feature_map`, in eval mode (no RNG, no BN update)."""
        was_training = encoder.training
        encoder.eval()
        pre = encoder.preprocessing
        to_input = eval_transform(image_size, pre.mean, pre.std, crop_pct=1.0)
        for start in range(0, len(data), batch_size):
            idx = range(start, min(start + batch_size, len(data)))
            x = torch.stack([to_input(data.image(i)) for i in idx]).to(device)
            heat = encoder.feature_map(x).float().sum(dim=1)  # (B, h, w)
            self.boxes[start:start + len(idx)] = boxes_from_heatmaps(heat, self.threshold).cpu()
        encoder.train(was_training)
        self.boxes_epoch.fill_(epoch)

    def __call__(self, image: Tensor, index: int, vc: ViewConfig) -> Tensor:
        if not self.active or index < 0:
            return _random_crop(image, vc)
        h, w = image.shape[-2:]
        top, left, ch, cw = sample_crop(h, w, self.boxes[index].tolist(), vc.scale, vc.ratio, self.alpha)
        return TF.resized_crop(image, top, left, ch, cw, [vc.size, vc.size], antialias=True)


def boxes_from_heatmaps(heat: Tensor, threshold: float) -> Tensor:
    """(B, h, w) heat maps -> (B, 4) boxes (x0, y0, x1, y1) in [0, 1] around the cells whose min-max
    normalised heat is >= threshold (cell edges, so one hot cell gives a box of its size)."""
    b, h, w = heat.shape
    flat = heat.reshape(b, -1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    norm = ((flat - lo) / (hi - lo).clamp(min=1e-12)).reshape(b, h, w)
    mask = norm >= threshold  # the maximum is always in
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # (B, h), (B, w)
    ar_h, ar_w = torch.arange(h, device=heat.device), torch.arange(w, device=heat.device)
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    return torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=1).float()


def sample_crop(height: int, width: int, box: list[float], scale: tuple[float, float], ratio: tuple[float, float],
                alpha: float = 0.6, attempts: int = 10) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop inside the image whose centre lies in `box` (fractions x0, y0, x1, y1),
    drawn per axis from Beta(alpha, alpha) over the box; size and aspect as in RandomResizedCrop."""
    area = height * width
    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        r = math.exp(float(torch.empty(1).uniform_(*log_r)))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= width and 0 < ch <= height:
            x0, y0, x1, y1 = box
            cx = (x0 + (x1 - x0) * float(beta.sample())) * width
            cy = (y0 + (y1 - y0) * float(beta.sample())) * height
            left = min(max(round(cx - cw / 2), 0), width - cw)
            top = min(max(round(cy - ch / 2), 0), height - ch)
            return top, left, ch, cw
    return 0, 0, height, width  # no fitting size drawn: the whole image, as RandomResizedCrop falls back
