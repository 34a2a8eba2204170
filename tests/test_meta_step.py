"""The MW-Net step against slow, independent references, in float64 on a tiny conv net with BatchNorm
(the backbones' own BatchNorm2d, whose forward-mode derivative the jvp route uses).

Reference for the weighting-net gradient: central finite differences, one per weighting-net
parameter, of the meta loss computed through a plain re-implementation of the virtual step
(first-order autograd.grad for dL/dtheta, theta' = theta - lr * g, mean CE on the meta batch).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mwnet.batchnorm import BatchNorm2d
from mwnet.meta_step import MetaWeightStep, normalize_weights, weight_curve
from mwnet.nets import WeightingNet

pytestmark = pytest.mark.usefixtures("single_thread")

LR = 0.3  # virtual-step (classifier) lr
EPS = 1e-6  # finite-difference step in float64


def tiny_classifier(num_classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, bias=False),
        BatchNorm2d(5),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, num_classes),
    )


def make_problem(seed=0, shape="1-5-1", n=8, n_meta=6):
    torch.manual_seed(seed)
    model = tiny_classifier().double()
    vnet = WeightingNet(shape).double()
    x = torch.randn(n, 3, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    xm = torch.randn(n_meta, 3, 6, 6, dtype=torch.float64)
    ym = torch.randint(0, 3, (n_meta,))
    return model, vnet, (x, y, xm, ym)


def run_step(model, vnet, batch, *, meta_gradient, weight_normalization="sum", vnet_lr=0.01):
    """One step on copies; returns (model, vnet, out, vnet grads)."""
    model, vnet = copy.deepcopy(model), copy.deepcopy(vnet)
    model_opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    vnet_opt = torch.optim.SGD(vnet.parameters(), lr=vnet_lr)
    step = MetaWeightStep(
        model, vnet, model_opt, vnet_opt,
        meta_gradient=meta_gradient, weight_normalization=weight_normalization,
    )
    out = step(*batch, LR)
    grads = [p.grad.clone() for p in vnet.parameters()]
    return model, vnet, out, grads


def reference_meta_loss(model, vnet, vnet_params, batch, lr, weight_normalization):
    """M(phi): plain virtual step on copies of the buffers, first-order dL/dtheta only."""
    x, y, xm, ym = batch
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    losses = F.cross_entropy(functional_call(model, (theta, bufs), (x,)), y, reduction="none")
    w = functional_call(vnet, vnet_params, (losses.detach()[:, None],))[:, 0]
    if weight_normalization == "sum":
        L = (w / w.sum() * losses).sum()
    else:
        L = (w * losses).mean()
    g = torch.autograd.grad(L, list(theta.values()))
    theta_prime = {n: t - lr * gi for (n, t), gi in zip(theta.items(), g)}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    return F.cross_entropy(functional_call(model, (theta_prime, bufs), (xm,)), ym)


def finite_difference_grad(model, vnet, batch, lr, weight_normalization):
    model = copy.deepcopy(model).train()
    phi = {n: p.detach().clone() for n, p in vnet.named_parameters()}
    out = []
    for name, p in phi.items():
        g = torch.zeros_like(p)
        for j in range(p.numel()):
            vals = []
            for sign in (1, -1):
                shifted = dict(phi)
                q = p.clone()
                q.view(-1)[j] += sign * EPS
                shifted[name] = q
                vals.append(reference_meta_loss(model, vnet, shifted, batch, lr, weight_normalization))
            g.view(-1)[j] = (vals[0] - vals[1]) / (2 * EPS)
        out.append(g)
    return out


def rel_err(a, b):
    a = torch.cat([t.reshape(-1) for t in a])
    b = torch.cat([t.reshape(-1) for t in b])
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("weight_normalization", ["sum", "none"])
@pytest.mark.parametrize("meta_gradient", ["jvp", "double_backward"])
@pytest.mark.parametrize("shape", ["1-5-1", "1-4-4-1"])
def test_weighting_net_gradient_matches_finite_differences(meta_gradient, weight_normalization, shape):
    model, vnet, batch = make_problem(shape=shape)
    _, _, _, grads = run_step(model, vnet, batch, meta_gradient=meta_gradient, weight_normalization=weight_normalization)
    fd = finite_difference_grad(model, vnet, batch, LR, weight_normalization)
    assert torch.cat([g.reshape(-1) for g in fd]).norm() > 1e-4  # not a vacuous comparison
    assert rel_err(grads, fd) < 1e-6
    # The comparison is sharp enough to see a 10% error in the virtual-step lr (or a sign flip, which
    # gives rel err 2): the reference computed with 1.1 * lr is far outside the tolerance.
    fd_wrong_lr = finite_difference_grad(model, vnet, batch, 1.1 * LR, weight_normalization)
    assert rel_err(grads, fd_wrong_lr) > 1e-3


@pytest.mark.parametrize("meta_gradient", ["jvp", "double_backward"])
def test_second_step_gradient_matches_finite_differences(meta_gradient):
    """After a real step the classifier's optimiser has a momentum buffer and weight decay acts: the
    virtual step must still be plain SGD at the lr passed in (here not the optimiser's lr), so the
    weighting-net gradient of the second step must match the plain reference."""
    model, vnet, batch = make_problem(seed=5, shape="1-5-1")
    _, _, batch2 = make_problem(seed=6, shape="1-5-1")
    model, vnet = copy.deepcopy(model), copy.deepcopy(vnet)
    model_opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-2)
    vnet_opt = torch.optim.SGD(vnet.parameters(), lr=0.01, momentum=0.9)
    step = MetaWeightStep(model, vnet, model_opt, vnet_opt, meta_gradient=meta_gradient)
    step(*batch, LR)
    assert all(model_opt.state[p].get("momentum_buffer") is not None for p in model.parameters())
    before_model, before_vnet = copy.deepcopy(model), copy.deepcopy(vnet)
    lr2 = 0.17  # the scheduled lr of this step, unlike the optimiser's
    step(*batch2, lr2)
    grads = [p.grad.clone() for p in vnet.parameters()]
    fd = finite_difference_grad(before_model, before_vnet, batch2, lr2, "sum")
    assert rel_err(grads, fd) < 1e-6
    assert rel_err(grads, finite_difference_grad(before_model, before_vnet, batch2, LR, "sum")) > 1e-3


def test_jvp_equals_double_backward():
    model, vnet, batch = make_problem(seed=3, shape="1-10-10-1", n=10)
    m1, v1, out1, g1 = run_step(model, vnet, batch, meta_gradient="jvp")
    m2, v2, out2, g2 = run_step(model, vnet, batch, meta_gradient="double_backward")
    assert rel_err(g1, g2) < 1e-10
    for a, b in zip(list(m1.state_dict().values()) + list(v1.parameters()),
                    list(m2.state_dict().values()) + list(v2.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for k in ("loss", "meta_loss", "mean_weight"):
        torch.testing.assert_close(out1[k], out2[k], rtol=1e-10, atol=0)


@pytest.mark.parametrize("meta_gradient", ["jvp", "double_backward"])
@pytest.mark.parametrize("weight_normalization", ["sum", "none"])
def test_actual_step_uses_updated_weighting_net(meta_gradient, weight_normalization):
    model, vnet, batch = make_problem(seed=1)
    x, y, xm, ym = batch
    new_model, new_vnet, out, grads = run_step(
        model, vnet, batch, meta_gradient=meta_gradient, weight_normalization=weight_normalization, vnet_lr=0.5
    )
    # V moved by one plain SGD step along the gradient it reported.
    for p0, p1, g in zip(vnet.parameters(), new_vnet.parameters(), grads):
        torch.testing.assert_close(p1, p0 - 0.5 * g, rtol=0, atol=1e-14)

    # Reference: one forward, weights from the UPDATED V, the same SGD config, one step.
    ref = copy.deepcopy(model).train()
    losses = F.cross_entropy(ref(x), y, reduction="none")
    with torch.no_grad():
        w_raw = new_vnet(losses.detach()[:, None])[:, 0]
    L = (w_raw / w_raw.sum() * losses).sum() if weight_normalization == "sum" else (w_raw * losses).mean()
    opt = torch.optim.SGD(ref.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    L.backward()
    opt.step()
    for (n, a), b in zip(new_model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=n)
    torch.testing.assert_close(out["loss"], L.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out["mean_weight"], w_raw.mean(), rtol=1e-12, atol=0)
    # The weights really changed with V's update (otherwise this test could not tell old from new V).
    with torch.no_grad():
        w_old = vnet(losses.detach()[:, None])[:, 0]
    assert (w_old - w_raw).abs().max() > 1e-6
    assert out["meta_loss"].shape == () and not out["meta_loss"].requires_grad


@pytest.mark.parametrize("meta_gradient", ["jvp", "double_backward"])
def test_running_stats_updated_exactly_once(meta_gradient):
    model, vnet, batch = make_problem(seed=2)
    new_model, *_ = run_step(model, vnet, batch, meta_gradient=meta_gradient)
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        ref(batch[0])  # one plain training-mode forward on the training batch
    for (n, a), b in zip(new_model.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert new_model[1].num_batches_tracked.item() == 1


def test_zero_weight_sum_is_left_alone():
    model, vnet, batch = make_problem(seed=4)
    with torch.no_grad():
        vnet.layers[-1].bias.fill_(-1e4)  # sigmoid underflows to exactly 0 for every loss
    for route in ("jvp", "double_backward"):
        new_model, new_vnet, out, grads = run_step(model, vnet, batch, meta_gradient=route)
        assert out["mean_weight"].item() == 0.0 and out["loss"].item() == 0.0
        assert all(torch.isfinite(g).all() for g in grads)
        assert all(torch.isfinite(p).all() for p in new_model.parameters())


def test_normalize_weights():
    w = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(normalize_weights(w, "sum"), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(normalize_weights(w, "none"), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(normalize_weights(torch.zeros(3), "sum"), torch.zeros(3))


def test_weight_curve_is_unnormalised_v():
    torch.manual_seed(0)
    vnet = WeightingNet("1-10-1")
    grid = torch.linspace(0, 5, 7)
    w = weight_curve(vnet, grid)
    assert w.shape == (7,) and not w.requires_grad
    torch.testing.assert_close(w, vnet(grid[:, None])[:, 0].detach())


def test_bad_options_are_rejected():
    model, vnet, _ = make_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    vopt = torch.optim.SGD(vnet.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="meta_gradient"):
        MetaWeightStep(model, vnet, opt, vopt, meta_gradient="first_order")
    with pytest.raises(ValueError, match="weight_normalization"):
        MetaWeightStep(model, vnet, opt, vopt, weight_normalization="softmax")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/device_run.sh smoke runs it)")
def test_cuda_paths_agree():
    """What training runs on a GPU: channels_last, cuDNN BatchNorm under forward-mode AD, bf16 autocast.
    fp32: the JVP route equals double backward; bf16: the weighting-net gradient points the same way."""
    from mwnet.config import BackboneSpec
    from mwnet.nets import build_backbone

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def vnet_grad(route, amp):
        torch.manual_seed(0)
        model = build_backbone(BackboneSpec(name="resnet", depth=8, width=16, dropout=0.0), 10).to(dev)
        model = model.to(memory_format=torch.channels_last)
        vnet = WeightingNet("1-100-1").to(dev)
        step = MetaWeightStep(model, vnet, torch.optim.SGD(model.parameters(), lr=0.1),
                              torch.optim.SGD(vnet.parameters(), lr=0.0), meta_gradient=route, autocast_dtype=amp)
        g = torch.Generator(device=dev).manual_seed(1)
        x, xm = (torch.randn(64, 3, 32, 32, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
                 for _ in range(2))
        y, ym = (torch.randint(0, 10, (64,), device=dev, generator=g) for _ in range(2))
        step(x, y, xm, ym, 0.1)
        return torch.cat([p.grad.reshape(-1) for p in vnet.parameters()]).double()

    jvp, db = vnet_grad("jvp", None), vnet_grad("double_backward", None)
    assert jvp.norm() > 0 and ((jvp - db).norm() / db.norm()).item() < 1e-3
    bf16 = vnet_grad("jvp", torch.bfloat16)
    assert F.cosine_similarity(bf16, jvp, dim=0).item() > 0.99
