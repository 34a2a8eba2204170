"""The backbones' BatchNorm2d: nn.BatchNorm2d everywhere, but a fused tangent under forward-mode AD.

References: central finite differences in float64 (independent of any AD formula) and PyTorch's own
forward-AD formula for batch norm.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call

from mwnet.batchnorm import BatchNorm2d

pytestmark = pytest.mark.usefixtures("single_thread")

C = 6


def inputs(dtype=torch.float64, channels_last=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, C, 4, 4, generator=g, dtype=torch.float64) * 2 + 1
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, x_t = (t.to(dtype).contiguous(memory_format=fmt) for t in (x, torch.randn(x.shape, generator=g, dtype=torch.float64)))
    w, b, w_t, b_t = (torch.randn(C, generator=g, dtype=torch.float64) for _ in range(4))
    return x, x_t, {"weight": w + 2, "bias": b}, {"weight": w_t, "bias": b_t}


def forward_with_tangent(module_cls, x, x_t, params, tangents):
    """(output, its tangent, the module after the pass) with params and input as dual tensors."""
    m = module_cls(C).to(params["weight"].dtype).train()
    with fwAD.dual_level():
        duals = {k: fwAD.make_dual(params[k], tangents[k]) for k in params}
        out = functional_call(m, duals, (fwAD.make_dual(x, x_t),))
        primal, tangent = fwAD.unpack_dual(out)
    return primal, tangent, m


def finite_difference(x, x_t, params, tangents, eps=1e-6):
    def f(s):
        m = nn.BatchNorm2d(C).double().train()
        shifted = {k: params[k] + s * tangents[k] for k in params}
        return functional_call(m, shifted, (x + s * x_t,))
    return (f(eps) - f(-eps)) / (2 * eps)


@pytest.mark.parametrize("channels_last", [True, False])
def test_tangent_matches_finite_differences_and_torchs_formula(channels_last):
    x, x_t, params, tangents = inputs(channels_last=channels_last)
    primal, tangent, _ = forward_with_tangent(BatchNorm2d, x, x_t, params, tangents)
    ref_primal, ref_tangent, _ = forward_with_tangent(nn.BatchNorm2d, x, x_t, params, tangents)
    fd = finite_difference(x, x_t, params, tangents)
    assert torch.equal(primal, ref_primal)
    torch.testing.assert_close(tangent, fd, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-12, atol=1e-12)


def test_only_the_input_or_only_the_parameters_carry_a_tangent():
    x, x_t, params, tangents = inputs()
    zero = {k: torch.zeros_like(v) for k, v in tangents.items()}
    for xt, pt in ((x_t, zero), (torch.zeros_like(x_t), tangents)):
        _, tangent, _ = forward_with_tangent(BatchNorm2d, x, xt, params, pt)
        torch.testing.assert_close(tangent, finite_difference(x, xt, params, pt), rtol=1e-7, atol=1e-8)


def test_running_statistics_are_updated_as_nn_batchnorm_does():
    x, x_t, params, tangents = inputs()
    *_, fused = forward_with_tangent(BatchNorm2d, x, x_t, params, tangents)
    *_, plain = forward_with_tangent(nn.BatchNorm2d, x, x_t, params, tangents)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(fused.state_dict()[k], v), k
    assert int(fused.num_batches_tracked) == 1


def test_bf16_tangent_is_as_accurate_as_torchs_formula():
    """bf16 activations (what autocast hands batch norm), fp32 parameters; error against float64."""
    x64, x_t64, p64, t64 = inputs(seed=1)
    truth = finite_difference(x64.to(torch.bfloat16).double(), x_t64.to(torch.bfloat16).double(), p64, t64)
    x, x_t = x64.to(torch.bfloat16), x_t64.to(torch.bfloat16)
    p32, t32 = ({k: v.float() for k, v in d.items()} for d in (p64, t64))
    errors = {}
    for cls in (BatchNorm2d, nn.BatchNorm2d):
        _, tangent, _ = forward_with_tangent(cls, x, x_t, p32, t32)
        assert tangent.dtype == torch.bfloat16
        errors[cls] = ((tangent.double() - truth).norm() / truth.norm()).item()
    assert errors[BatchNorm2d] < 1e-2  # bf16 keeps 8 bits: ~0.4% per element
    assert errors[BatchNorm2d] <= 1.5 * errors[nn.BatchNorm2d]


def test_without_forward_ad_it_is_nn_batchnorm():
    x, _, params, _ = inputs()
    for train in (True, False):
        a, b = BatchNorm2d(C).double().train(train), nn.BatchNorm2d(C).double().train(train)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = functional_call(a, params, (xa,)), functional_call(b, params, (xb,))
        assert torch.equal(ya, yb)
        (ga,), (gb,) = torch.autograd.grad(ya.square().sum(), xa), torch.autograd.grad(yb.square().sum(), xb)
        assert torch.equal(ga, gb)
