"""BatchNorm2d whose forward-mode derivative in training mode costs two fused kernels.

The MW-Net step's JVP pass (meta_step.py) pushes a tangent through every layer. PyTorch's generic
forward-AD formula for batch norm spells the derivative out in about a dozen elementwise and reduction
ops with dtype casts; in bf16 on a CPU that made the JVP pass about 12 times slower than a plain forward
(benchmarks/README.md). Two facts make it cheap:

- In training mode the normalisation's Jacobian with respect to its input is symmetric
  (w * invstd * (I - 11'/m - xhat xhat'/m) per channel), so its JVP equals its VJP:
  native_batch_norm_backward with the tangent as the incoming gradient, one fused kernel.
- The tangent through the affine parameters, w_t * xhat + b_t, is batch norm in evaluation mode
  with the batch's statistics, weight w_t and bias b_t: a second fused kernel.

Everything else (the forward, the running-statistic update, backward) is nn.BatchNorm2d's own; the
module's state_dict is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd import forward_ad as fwAD


class _TrainBatchNorm(torch.autograd.Function):
    """native_batch_norm in training mode with a hand-written JVP (no backward: used under forward AD only)."""

    @staticmethod
    def forward(x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        return torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, *_, eps = inputs
        _, mean, invstd = output
        ctx.save_for_forward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, invstd)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, *_):
        x, weight, mean, invstd = ctx.saved_tensors
        out_t = torch.ops.aten.native_batch_norm_backward(
            x_t, x, weight, None, None, mean, invstd, True, ctx.eps, [True, False, False])[0]
        if weight_t is not None or bias_t is not None:
            # xhat * weight_t + bias_t: evaluation-mode batch norm whose variance gives back invstd.
            zeros = torch.zeros_like(mean)
            affine_t = torch.batch_norm(
                x, weight_t if weight_t is not None else zeros, bias_t if bias_t is not None else zeros,
                mean, invstd.pow(-2) - ctx.eps, False, 0.0, ctx.eps, False)
            out_t = out_t + affine_t
        return out_t, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d; in training mode under forward AD its tangent takes the fused route above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = (self.training and self.track_running_stats and self.momentum is not None
                 and fwAD.unpack_dual(x).tangent is not None)
        if not fused:
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)  # as nn.BatchNorm2d does in training
        return _TrainBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                     self.momentum, self.eps)[0]
