"""Training augmentations (pipelines/training/augment.py): flips and the perturbed-cumulative-mask noise."""

from __future__ import annotations

import torch

from pipelines.training.augment import (
    add_blob,
    dilate,
    drop_region,
    erode,
    perturb_cumulative_mask,
    random_hflip,
    translate,
)


def _square_masks(batch: int = 8, size: int = 32) -> torch.Tensor:
    masks = torch.zeros(batch, size, size)
    masks[:, 8:20, 10:22] = 1.0
    return masks


def test_perturb_with_p_zero_is_identity():
    masks = _square_masks()
    assert perturb_cumulative_mask(masks, 0.0) is masks


def test_perturb_with_p_one_changes_every_non_empty_mask_and_stays_binary():
    masks = _square_masks(batch=32).to(torch.uint8)
    out = perturb_cumulative_mask(masks, 1.0, torch.Generator().manual_seed(0), max_shift=3)
    assert out.shape == masks.shape and out.dtype == torch.uint8
    assert set(out.unique().tolist()) <= {0, 1}
    changed = (out != masks).flatten(1).any(1)
    # a (0, 0) jitter is the only no-op draw; nearly all samples must change
    assert changed.float().mean() > 0.8


def test_perturb_never_touches_empty_cumulative_masks():
    """C_0 is exactly empty at inference, so layer-0 samples must stay empty."""
    masks = _square_masks(batch=16)
    masks[::2] = 0.0
    out = perturb_cumulative_mask(masks, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(out[::2], masks[::2])


def test_perturb_is_reproducible_with_a_seeded_generator():
    masks = _square_masks(batch=16)
    first = perturb_cumulative_mask(masks, 0.5, torch.Generator().manual_seed(7))
    second = perturb_cumulative_mask(masks, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_perturb_rate_follows_p():
    masks = _square_masks(batch=2000, size=16)
    masks[:, 4:10, 4:10] = 1.0
    out = perturb_cumulative_mask(masks, 0.3, torch.Generator().manual_seed(3))
    rate = (out != masks).flatten(1).any(1).float().mean().item()
    assert 0.2 < rate < 0.35


def test_erode_shrinks_and_dilate_grows():
    masks = _square_masks()
    eroded, dilated = erode(masks, 1), dilate(masks, 1)
    assert torch.all(eroded <= masks) and torch.all(dilated >= masks)
    assert eroded.sum() == 8 * 10 * 10 and dilated.sum() == 8 * 14 * 14


def test_translate_shifts_with_zero_fill():
    masks = _square_masks(batch=2)
    out = translate(masks, torch.tensor([2, -3]), torch.tensor([1, 0]))
    assert torch.equal(out[0, 10:22, 11:23], masks[0, 8:20, 10:22])
    assert out[1, 5:17, 10:22].sum() == 12 * 12
    edge = torch.ones(1, 4, 4)
    assert translate(edge, torch.tensor([1]), torch.tensor([0]))[0, 0].sum() == 0


def test_drop_region_only_removes_and_add_blob_only_adds():
    masks = _square_masks(batch=16)
    generator = torch.Generator().manual_seed(0)
    dropped = drop_region(masks, generator)
    added = add_blob(masks, generator)
    assert torch.all(dropped <= masks) and bool((dropped < masks).any())
    assert torch.all(added >= masks) and bool((added > masks).any())


def test_hflip_flips_image_and_both_masks_together():
    image = torch.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3).to(torch.uint8)
    cumulative = torch.zeros(2, 4, 5, dtype=torch.uint8)
    cumulative[:, :, 0] = 1
    layer = cumulative.clone()
    out_image, out_cumulative, out_layer = random_hflip(image, cumulative, layer, p=1.0)
    assert torch.equal(out_image, image.flip(2))
    assert torch.equal(out_cumulative[:, :, 4], cumulative[:, :, 0])
    assert torch.equal(out_layer, out_cumulative)
    same = random_hflip(image, cumulative, layer, p=0.0)
    assert all(torch.equal(a, b) for a, b in zip(same, (image, cumulative, layer), strict=True))
    foreground = torch.zeros_like(layer)
    foreground[:, 1, 0] = 1
    flipped = random_hflip(image, cumulative, layer, foreground, p=1.0)
    assert len(flipped) == 4 and torch.equal(flipped[3], foreground.flip(2))


def test_hflip_handles_channels_first_images():
    image = torch.rand(3, 3, 6, 7)
    masks = torch.zeros(3, 6, 7)
    out_image, _, _ = random_hflip(image, masks, masks, p=1.0)
    assert torch.equal(out_image, image.flip(3))
