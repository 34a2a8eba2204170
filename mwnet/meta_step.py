"""One MW-Net training iteration (docs/protocol.md, "One training iteration") on plain modules.

Notation: classifier parameters theta, weighting-net parameters phi, per-sample training losses l_i,
normalised weights w_hat_i = norm(V(l_i; phi)), weighted loss L = sum_i w_hat_i * l_i, virtual step
theta' = theta - lr * dL/dtheta, meta loss M(theta') = mean CE on the meta batch.

Since theta' depends on phi only through the weights,
    dM/dphi = sum_i c_i * d(w_hat_i)/dphi,   c_i = -lr * <grad_theta' M(theta'), grad_theta l_i(theta)>.
Two exact ways to get it:
  "jvp" (default): the vector c is one forward-mode JVP (dual tensors) of theta -> (l_1..l_n) along
      v = grad_theta' M (BN in train mode inside that map, so its batch coupling is included), then
      backward(w_hat, grad_tensors=c) into V. No double backward, so it needs no second-order kernels.
      The backbones' BatchNorm2d (mwnet/batchnorm.py) gives that pass batch norm's tangent in two fused
      kernels; other modules use PyTorch's own forward-AD formulas.
  "double_backward": autograd.grad(L, theta, create_graph=True) and backprop M through the virtual
      step, as the official code does.
BatchNorm is in training mode in every pass. Only the first forward (training batch, real model)
updates the model's running statistics; the virtual, meta and JVP passes run functionally on scratch
copies of the buffers. The actual step reuses that first forward's graph with the new weights: theta
has not moved yet, so recomputing l_i would give the same values.
With dropout > 0 (WRN option; 0 in every recipe) the JVP pass draws its own dropout mask, so "jvp" is
then exact only in expectation; "double_backward" differentiates the first pass's mask.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

META_GRADIENTS = ("jvp", "double_backward")
WEIGHT_NORMALIZATIONS = ("sum", "none")


def _full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Losses in at least fp32: autocast logits (bf16/fp16) are upcast; fp64 stays fp64."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def normalize_weights(w: torch.Tensor, mode: str) -> torch.Tensor:
    """sum: w_i / sum_j w_j, left as is when the sum is 0 (no host sync); none: w_i / n, so that
    sum_i w_hat_i * l_i is mean(w_i * l_i)."""
    if mode == "sum":
        s = w.sum()
        # A safe denominator instead of where(s == 0, w, w / s): the unused branch would put NaN in the grad.
        return w / torch.where(s == 0, torch.ones_like(s), s)
    return w / w.numel()


@torch.no_grad()
def weight_curve(vnet: nn.Module, losses: torch.Tensor) -> torch.Tensor:
    """V(loss) on the given losses, unnormalised: the learned weighting function, for plotting."""
    p = next(vnet.parameters())
    losses = torch.as_tensor(losses, dtype=p.dtype, device=p.device)
    return vnet(losses.reshape(-1, 1)).reshape(losses.shape)


class MetaWeightStep:
    """Callable MW-Net iteration: step(x, y, x_meta, y_meta, lr) -> dict of detached tensors (scalars,
    and "weights": each sample's unnormalised weight).

    model_opt steps theta (the recipe's SGD); vnet_opt steps phi. Build it after the model is on its
    device: the parameter and buffer lists are taken here.
    """

    def __init__(
        self,
        model: nn.Module,
        vnet: nn.Module,
        model_opt: torch.optim.Optimizer,
        vnet_opt: torch.optim.Optimizer,
        *,
        meta_gradient: str = "jvp",
        weight_normalization: str = "sum",
        autocast_dtype: torch.dtype | None = None,
    ):
        if meta_gradient not in META_GRADIENTS:
            raise ValueError(f"meta_gradient {meta_gradient!r}: expected one of {META_GRADIENTS}")
        if weight_normalization not in WEIGHT_NORMALIZATIONS:
            raise ValueError(
                f"weight_normalization {weight_normalization!r}: expected one of {WEIGHT_NORMALIZATIONS}"
            )
        self.model, self.vnet = model, vnet
        self.model_opt, self.vnet_opt = model_opt, vnet_opt
        self.meta_gradient = meta_gradient
        self.weight_normalization = weight_normalization
        self.autocast_dtype = autocast_dtype
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        named_buffers = list(model.named_buffers())
        self.buffer_names = [n for n, _ in named_buffers]
        self.buffers = [b for _, b in named_buffers]
        # Scratch copies absorb the running-stat updates of the functional passes.
        self.scratch_buffers = [b.detach().clone() for b in self.buffers]
        self.vnet_params = [p for p in vnet.parameters() if p.requires_grad]

    # ---------------------------------------------------------------------------------------
    def _amp(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def _functional_logits(self, params, x: torch.Tensor) -> torch.Tensor:
        tensors = dict(zip(self.param_names, params))
        tensors.update(zip(self.buffer_names, self.scratch_buffers))
        with self._amp(x.device):
            return functional_call(self.model, tensors, (x,))

    def _weights(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw V(l), normalised weights), both shape (N,); V runs in fp32 outside autocast."""
        raw = self.vnet(losses.detach().unsqueeze(1)).squeeze(1)
        return raw, normalize_weights(raw, self.weight_normalization)

    # ---------------------------------------------------------------------------------------
    def __call__(self, x, y, x_meta, y_meta, lr):
        return self.step(x, y, x_meta, y_meta, lr)

    def step(self, x, y, x_meta, y_meta, lr: float) -> dict[str, torch.Tensor]:
        """One full iteration; lr is the classifier's current scheduled lr (virtual step)."""
        self.model.train()
        if self.buffers:
            torch._foreach_copy_(self.scratch_buffers, self.buffers)

        # 1-2. Per-sample losses on the real model (its one running-stat update), weights from V.
        with self._amp(x.device):
            logits = self.model(x)
        losses = F.cross_entropy(_full_precision(logits), y, reduction="none")
        _, w_hat = self._weights(losses)

        # 3-4. Virtual step, meta loss, dM/dphi into V's .grad; then V's optimiser step.
        self.vnet_opt.zero_grad(set_to_none=True)
        if self.meta_gradient == "jvp":
            meta_loss = self._meta_grad_jvp(x, y, x_meta, y_meta, losses, w_hat, lr)
        else:
            meta_loss = self._meta_grad_double_backward(x_meta, y_meta, losses, w_hat, lr)
        self.vnet_opt.step()

        # 5. Actual step: weights from the updated V (no grad), backward through the first forward.
        with torch.no_grad():
            w_raw, w_new = self._weights(losses)
        self.model_opt.zero_grad(set_to_none=True)
        torch.autograd.backward(losses, grad_tensors=w_new.to(losses.dtype))
        self.model_opt.step()
        return {
            "loss": (w_new * losses.detach()).sum(),
            "meta_loss": meta_loss.detach(),
            "mean_weight": w_raw.mean(),
            "weights": w_raw.detach(),  # per sample, unnormalised V(l_i): the loop groups them (clean/noisy)
            # on the labels trained with (corrupted ones included); free, from the first forward
            "acc": (logits.detach().argmax(1) == y).float().mean() * 100,
        }

    def _meta_loss(self, theta_prime, x_meta, y_meta) -> torch.Tensor:
        return F.cross_entropy(_full_precision(self._functional_logits(theta_prime, x_meta)), y_meta)

    def _meta_grad_jvp(self, x, y, x_meta, y_meta, losses, w_hat, lr) -> torch.Tensor:
        # dL/dtheta with the weights as constants; keep the graph for the actual step.
        grads = torch.autograd.grad(losses, self.params, grad_outputs=w_hat.detach(), retain_graph=True)
        theta = [p.detach() for p in self.params]
        theta_prime = torch._foreach_add(theta, grads, alpha=-lr)
        for t in theta_prime:
            t.requires_grad_(True)
        meta_loss = self._meta_loss(theta_prime, x_meta, y_meta)
        v = torch.autograd.grad(meta_loss, theta_prime)

        # <grad l_i(theta), v> for every i at once: the directional derivative of the loss vector, one
        # forward-mode pass. Dual tensors (torch.autograd.forward_ad, the machinery under torch.func.jvp)
        # rather than torch.func.jvp itself, because functorch refuses BatchNorm's in-place update of
        # the (scratch) running statistics.
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t, d) for t, d in zip(theta, v)]
            per_sample = F.cross_entropy(_full_precision(self._functional_logits(duals, x)), y, reduction="none")
            directional = fwAD.unpack_dual(per_sample).tangent
        coeff = directional.mul(-lr).to(w_hat.dtype)
        torch.autograd.backward(w_hat, grad_tensors=coeff, inputs=self.vnet_params)
        return meta_loss

    def _meta_grad_double_backward(self, x_meta, y_meta, losses, w_hat, lr) -> torch.Tensor:
        # create_graph keeps second-order dependence on phi (through w_hat) and retains the graph.
        grads = torch.autograd.grad(losses, self.params, grad_outputs=w_hat.to(losses.dtype), create_graph=True)
        theta_prime = torch._foreach_add(self.params, grads, alpha=-lr)
        meta_loss = self._meta_loss(theta_prime, x_meta, y_meta)
        torch.autograd.backward(meta_loss, inputs=self.vnet_params)
        return meta_loss
