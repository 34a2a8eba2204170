"""One plain-training iteration: the "CE, same schedule" baseline of every column.

Same call and outputs as mwnet.meta_step.MetaWeightStep, so the training loop does not know which
one it runs: every sample weighted equally (mean cross-entropy), one SGD step. The meta batch is
accepted and ignored, so that a baseline and an MW-Net run of the same seed draw the same data
order, augmentation and meta stream.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn


class PlainStep:
    def __init__(self, model: nn.Module, model_opt: torch.optim.Optimizer, *,
                 autocast_dtype: torch.dtype | None = None):
        self.model, self.model_opt, self.autocast_dtype = model, model_opt, autocast_dtype

    def __call__(self, x, y, x_meta, y_meta, lr):
        return self.step(x, y, x_meta, y_meta, lr)

    def step(self, x, y, x_meta=None, y_meta=None, lr: float | None = None) -> dict[str, torch.Tensor]:
        """lr is the optimiser's own scheduled lr here; the argument exists for the common call."""
        self.model.train()
        amp = torch.autocast(x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with amp:
            logits = self.model(x)
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        loss = losses.mean()
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.model_opt.step()
        return {
            "loss": loss.detach(),
            "weights": torch.ones_like(losses.detach()),  # every sample weighted equally
            "acc": (logits.detach().argmax(1) == y).float().mean() * 100,
        }
