"""Our losses against independent references: lightly's implementations and naive loops from the papers."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import info_nce_queue, nt_xent


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_lightly(temperature):
    from lightly.loss import NTXentLoss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    ours = nt_xent(z1, z2, temperature)
    ref = NTXentLoss(temperature=temperature)(z1, z2)
    assert abs(float(ours) - float(ref)) < 1e-5


def test_nt_xent_matches_the_papers_formula():
    """Eq. 1 of SimCLR, a loop over the 2N anchors."""
    g = torch.Generator().manual_seed(1)
    z1, z2, t = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), 0.3
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    assert abs(float(nt_xent(z1, z2, t)) - total / (2 * n)) < 1e-5


def test_info_nce_queue_matches_a_loop():
    g = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    k = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(20, 8, generator=g), dim=1)
    t = 0.2
    total = 0.0
    for i in range(5):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(20))
        total += -math.log(pos / (pos + neg))
    assert abs(float(info_nce_queue(q, k, queue, t)) - total / 5) < 1e-5


def test_nt_xent_is_minimal_for_identical_views():
    z = torch.randn(8, 16)
    assert nt_xent(z, z, 0.1) < nt_xent(z, torch.randn(8, 16), 0.1)
