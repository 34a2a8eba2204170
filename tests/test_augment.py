"""Batched augmentation against an explicit per-image reference (F.pad reflect, slice, flip, normalise)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mwnet.augment import augment, normalize
from mwnet.config import load_params

SPEC = load_params("params").data.augmentation  # what training uses
CIFAR_MEAN_255, CIFAR_STD_255, CROP_PADDING = SPEC.mean_255, SPEC.std_255, SPEC.crop_padding


def images(n=16, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def reference_normalize(x_uint8):
    mean = torch.tensor(CIFAR_MEAN_255).view(1, 3, 1, 1) / 255
    std = torch.tensor(CIFAR_STD_255).view(1, 3, 1, 1) / 255
    return (x_uint8.float() / 255 - mean) / std


def test_params_hold_the_protocols_values():
    """docs/protocol.md, "Data": the reference code's CIFAR statistics and a 4-pixel reflect pad."""
    assert CIFAR_MEAN_255 == (125.3, 123.0, 113.9)
    assert CIFAR_STD_255 == (63.0, 62.1, 66.7)
    assert CROP_PADDING == 4


def test_normalize():
    x = images()
    out = normalize(x, SPEC)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, reference_normalize(x), rtol=1e-5, atol=1e-5)
    # A pixel equal to the mean maps to 0, mean + std to 1.
    px = torch.tensor([[125, 123, 114], [188, 185, 181]], dtype=torch.uint8).T.reshape(1, 3, 1, 2)
    expected = (px.float() - torch.tensor(CIFAR_MEAN_255).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD_255).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(px, SPEC), expected)


@pytest.mark.parametrize("h,w", [(32, 32), (9, 13)])
def test_crops_match_explicit_reflect_padding(h, w):
    """Every output is a window of F.pad(mode='reflect') at some offset, flipped or not; the offsets
    and flips recovered must be the ones the generator drew."""
    x = images(n=64, h=h, w=w, seed=1)
    out = augment(x, torch.Generator().manual_seed(5), SPEC)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.is_contiguous()
    # Recover the offsets and flips from the same generator state (the draw order of crop_flip_indices).
    g = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (64, 2), generator=g)
    flips = torch.randint(0, 2, (64, 1), generator=g, dtype=torch.bool)[:, 0]

    padded = F.pad(x.float(), (CROP_PADDING,) * 4, mode="reflect")
    seen_offsets, seen_flip = set(), set()
    for i in range(64):
        oy, ox = offsets[i].tolist()
        window = padded[i, :, oy : oy + h, ox : ox + w]
        if flips[i]:
            window = window.flip(-1)
        torch.testing.assert_close(out[i], reference_normalize(window.to(torch.uint8)[None])[0])
        seen_offsets.add((oy, ox))
        seen_flip.add(bool(flips[i]))
    # The draws cover more than one offset and both flip states (not a trivially identity augmentation).
    assert len(seen_offsets) > 20 and seen_flip == {True, False}
    assert {o for o, _ in seen_offsets} == set(range(2 * CROP_PADDING + 1))


def test_determinism_given_seed():
    x = images(seed=3)
    a = augment(x, torch.Generator().manual_seed(7), SPEC)
    b = augment(x, torch.Generator().manual_seed(7), SPEC)
    c = augment(x, torch.Generator().manual_seed(8), SPEC)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The generator advances: two calls from one generator differ.
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(augment(x, g, SPEC), augment(x, g, SPEC))


def test_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        augment(torch.zeros(2, 3, 32, 32), torch.Generator(), SPEC)
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(2, 3, 32, 32), SPEC)
