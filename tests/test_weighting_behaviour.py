"""What MW-Net should learn, on tiny synthetic problems (CPU, about a second each).

Gaussian blobs in 8 dimensions, 4 classes, a small MLP classifier with BatchNorm, a clean balanced meta
set of 10 per class. The weighting-net lr is much larger than the paper's (Adam 1e-2) so that V moves in
a few hundred steps. Each test has a negative control: the same training with the weighting net's
optimiser *maximising* the meta loss (the meta-gradient's sign flipped) must fail the same criteria, so
the criteria can tell a working meta step from a broken one.

- 40% uniform label noise: V decreases with the loss, noisy samples get far less weight than clean ones.
- Class imbalance (clean labels, rare classes): V increases with the loss, the rare classes (high loss)
  get more weight than the majority class.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mwnet.meta_step import MetaWeightStep, weight_curve
from mwnet.nets import WeightingNet

pytestmark = pytest.mark.usefixtures("single_thread")

DIM, CLASSES, META_PER_CLASS = 8, 4, 10
LOSS_GRID = torch.linspace(0.0, 4.0, 41)


def make_blobs(counts, separation, generator):
    """Training points per class `counts` and a clean balanced meta set, from the same class means."""
    means = torch.randn(CLASSES, DIM, generator=generator) * separation

    def draw(per_class):
        x = torch.cat([means[c] + torch.randn(n, DIM, generator=generator) for c, n in enumerate(per_class)])
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
        return x, y

    x, y = draw(counts)
    xm, ym = draw([META_PER_CLASS] * CLASSES)
    return x, y, xm, ym


def train(x, y, xm, ym, *, meta_gradient, epochs, generator, seed, maximize=False):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(DIM, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, CLASSES))
    vnet = WeightingNet("1-10-1")
    model_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    vnet_opt = torch.optim.Adam(vnet.parameters(), lr=1e-2, maximize=maximize)
    step = MetaWeightStep(model, vnet, model_opt, vnet_opt, meta_gradient=meta_gradient)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for batch in order.split(100):
            step(x[batch], y[batch], xm, ym, 0.1)
    model.eval()
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
    return weight_curve(vnet, losses), weight_curve(vnet, LOSS_GRID)


def spearman(a, b):
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra @ rb / (ra.norm() * rb.norm())).item()


def uniform_noise_criteria(meta_gradient, maximize=False) -> dict[str, bool]:
    g = torch.Generator().manual_seed(0)
    x, y_true, xm, ym = make_blobs([100] * CLASSES, separation=1.0, generator=g)
    y = y_true.clone()
    redraw = torch.rand(len(y), generator=g) < 0.4  # uniform over all classes, as the protocol
    y[redraw] = torch.randint(0, CLASSES, (int(redraw.sum()),), generator=g)
    noisy = y != y_true
    assert 0.25 < noisy.float().mean() < 0.4

    w, curve = train(x, y, xm, ym, meta_gradient=meta_gradient, epochs=30, generator=g, seed=0, maximize=maximize)
    return {
        "decreasing": spearman(LOSS_GRID, curve) < -0.9,
        "high losses weigh < half": bool(curve[-5:].mean() < 0.5 * curve[:5].mean()),
        "noisy weigh < 0.8 x clean": bool(w[noisy].mean() / w[~noisy].mean() < 0.8),
    }


def imbalance_criteria(maximize=False) -> dict[str, bool]:
    g = torch.Generator().manual_seed(0)
    x, y, xm, ym = make_blobs([300, 60, 20, 8], separation=0.7, generator=g)

    w, curve = train(x, y, xm, ym, meta_gradient="jvp", epochs=30, generator=g, seed=0, maximize=maximize)
    return {
        "increasing": spearman(LOSS_GRID, curve) > 0.9,
        "high losses weigh > 2x": bool(curve[-5:].mean() > 2 * curve[:5].mean()),
        "rare classes weigh more": bool(w[y == 0].mean() < w[y > 0].mean()),
    }


@pytest.mark.parametrize("meta_gradient", ["jvp", "double_backward"])
def test_uniform_noise_learns_decreasing_weights(meta_gradient):
    met = uniform_noise_criteria(meta_gradient)
    assert all(met.values()), met


def test_uniform_noise_criteria_fail_with_the_wrong_sign():
    met = uniform_noise_criteria("jvp", maximize=True)
    assert not any(met.values()), met


def test_imbalance_learns_increasing_weights():
    met = imbalance_criteria()
    assert all(met.values()), met


def test_imbalance_criteria_fail_with_the_wrong_sign():
    met = imbalance_criteria(maximize=True)
    assert not any(met.values()), met
