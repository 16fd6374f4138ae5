"""Frozen-feature evaluation: weighted kNN (the DINO protocol) and a linear probe. Both report top-1/top-5."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from training.augment import eval_transform
from training.data import ImageData
from zoo.backbones import Encoder

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    top1: float
    top5: float
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, float | int]:
        return {"top1": self.top1, "top5": self.top5, "n_train": self.n_train, "n_test": self.n_test}


class _Prepared(torch.utils.data.Dataset):
    def __init__(self, data: ImageData, transform: nn.Module):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.data.image(i)), self.data.label(i)


@torch.no_grad()
def extract_features(encoder: Encoder, data: ImageData, batch_size: int = 256, device: str | None = None,
                     num_workers: int = 0, progress: bool = True, desc: str = "features") -> tuple[Tensor, Tensor]:
    """Features (N, D) in float32 on the CPU and labels (N,), images prepared with the encoder's preprocessing."""
    device = device or next(encoder.parameters()).device.type
    pre = encoder.preprocessing
    transform = eval_transform(pre.image_size, pre.mean, pre.std, pre.crop_pct)
    loader = DataLoader(_Prepared(data, transform), batch_size=batch_size, num_workers=num_workers)
    encoder.eval().to(device)
    feats, labels = [], []
    cuda = device.startswith("cuda")
    channels_last = not encoder.is_vit  # NHWC convolutions are faster on CPU and GPU alike
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            f = encoder(x)
        feats.append(f.float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def knn_classify(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                 chunk: int = 1024) -> EvalResult:
    """Weighted kNN of Wu et al. 2018 as DINO evaluates it: cosine similarity of L2-normalised features,
    the k nearest training samples vote for their label with weight exp(similarity / T)."""
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    correct1 = correct5 = 0
    for start in range(0, test.shape[0], chunk):
        sim = test[start:start + chunk] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        pred = votes.topk(min(5, num_classes), dim=1).indices
        truth = test_labels[start:start + chunk].unsqueeze(1)
        correct1 += int((pred[:, :1] == truth).any(1).sum())
        correct5 += int((pred == truth).any(1).sum())
    n = test.shape[0]
    return EvalResult(correct1 / n, correct5 / n, train.shape[0], n)


def knn_eval(encoder: Encoder, train: ImageData, test: ImageData, k: int = 20, temperature: float = 0.07,
             batch_size: int = 256, device: str | None = None, progress: bool = True) -> EvalResult:
    _require_labels(train, test)
    ftr, ytr = extract_features(encoder, train, batch_size, device, progress=progress, desc="train features")
    fte, yte = extract_features(encoder, test, batch_size, device, progress=progress, desc="test features")
    return knn_classify(ftr, ytr, fte, yte, k, temperature, num_classes=max(len(train.classes), 1) or None)


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 epochs: int = 100, lr: float = 0.1, weight_decay: float = 0.0, batch_size: int = 256,
                 num_classes: int | None = None, seed: int = 0) -> EvalResult:
    """A linear classifier on frozen, standardised features: SGD with momentum and a cosine schedule.

    Features are extracted once without augmentation (a common cheap variant of the protocol; the papers'
    linear evaluation also augments the training images, which needs an encoder pass per epoch)."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    xtr, xte = (train_features - mean) / std, (test_features - mean) / std
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * max(1, (xtr.shape[0] + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(xtr.shape[0], generator=g)
        for i in range(0, xtr.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(head(xtr[idx]), train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = head(xte).topk(min(5, num_classes), dim=1).indices
    truth = test_labels.unsqueeze(1)
    n = xte.shape[0]
    return EvalResult(float((pred[:, :1] == truth).any(1).sum()) / n, float((pred == truth).any(1).sum()) / n,
                      xtr.shape[0], n)


def linear_eval(encoder: Encoder, train: ImageData, test: ImageData, epochs: int = 100, lr: float = 0.1,
                batch_size: int = 256, device: str | None = None, progress: bool = True) -> EvalResult:
    _require_labels(train, test)
    ftr, ytr = extract_features(encoder, train, batch_size, device, progress=progress, desc="train features")
    fte, yte = extract_features(encoder, test, batch_size, device, progress=progress, desc="test features")
    return linear_probe(ftr, ytr, fte, yte, epochs=epochs, lr=lr, num_classes=len(train.classes) or None)


def _require_labels(*sets: ImageData) -> None:
    for s in sets:
        if s.labels is None:
            from training.errors import ConfigError

            raise ConfigError(f"data set {s.name!r} has no labels; kNN and linear evaluation need labelled data "
                              "(an image folder with one sub-folder per class)")
