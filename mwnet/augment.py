"""CIFAR augmentation on the tensor's device, one batched gather per call (docs/protocol.md, "Data").

Train: pad (reflect), random crop back to the input size, random horizontal flip, normalise.
Test: normalise only. Input is uint8 NCHW; output float32 NCHW. The mean, std and padding are
params/data.yaml's `augmentation` (mwnet.config.Augmentation), passed in as `spec`.
"""

from __future__ import annotations

import torch

def normalize(x_uint8: torch.Tensor, spec) -> torch.Tensor:
    """uint8 (N,3,H,W) in 0..255 -> float32 (x/255 - mean) / std, per channel."""
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4 or x_uint8.shape[1] != 3:
        raise ValueError(f"expected uint8 (N,3,H,W) images, got {x_uint8.dtype} {tuple(x_uint8.shape)}")
    dev = x_uint8.device
    mean = torch.tensor(spec.mean_255, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(spec.std_255, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    # (x/255 - m/255) / (s/255) == (x - m) / s
    return (x_uint8.float() - mean) / std


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size+1, 2*size-2] to [0, size) by reflection without repeating the edge
    (the same as F.pad mode='reflect')."""
    idx = idx.abs()
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def crop_flip_indices(
    n: int, height: int, width: int, padding: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source row (n,H) and column (n,W) indices into the unpadded images for a random crop of the
    reflect-padded image, with the horizontal flip folded into the column order."""
    if padding >= min(height, width):
        raise ValueError(f"reflect padding {padding} needs images larger than {height}x{width}")
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    flip = torch.randint(0, 2, (n, 1), generator=generator, device=device, dtype=torch.bool)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    # Output column c of a flipped crop is crop column W-1-c.
    cols = torch.where(flip, (width - 1) - cols, cols)
    src_rows = _reflect(rows + offsets[:, :1] - padding, height)
    src_cols = _reflect(cols + offsets[:, 1:] - padding, width)
    return src_rows, src_cols


def augment(x_uint8: torch.Tensor, generator: torch.Generator, spec, channels_last: bool = False) -> torch.Tensor:
    """Random reflect-padded crop + random horizontal flip + normalisation, batched on x's device.

    All randomness comes from `generator`, which must live on x's device. channels_last: the output
    is in that memory format (the gather writes NHWC anyway, so it costs no copy); same values.
    """
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4 or x_uint8.shape[1] != 3:
        raise ValueError(f"expected uint8 (N,3,H,W) images, got {x_uint8.dtype} {tuple(x_uint8.shape)}")
    n, _, h, w = x_uint8.shape
    rows, cols = crop_flip_indices(n, h, w, spec.crop_padding, generator, x_uint8.device)
    batch = torch.arange(n, device=x_uint8.device)
    # Advanced indices separated by a slice: result is (N, H, W, C).
    out = x_uint8[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    out = out.permute(0, 3, 1, 2)  # an NCHW view with channels_last strides
    if not channels_last:
        out = out.contiguous()
    return normalize(out, spec)
