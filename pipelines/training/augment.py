"""Training-time augmentations for layer samples, as pure torch functions (CPU or GPU, batched).

- ``random_hflip``: mirror image, cumulative mask and layer mask together.
- ``perturb_cumulative_mask``: the reference implementation's "noise" idea made real. At inference
  the cumulative mask ``C_k`` is built from the model's own earlier predictions, so it is never
  perfect. With probability ``p`` per sample, ``C_k`` is replaced by an imperfect version so the
  model learns to recover: erode or dilate (min/max pooling), a small translation jitter, drop one
  region of it (an object it "missed") or add a wrong blob (a false positive). The layer mask target
  stays untouched. Samples with an empty ``C_k`` (layer 0) are never perturbed: at inference ``C_0``
  is exactly empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PERTURBATIONS = ("erode", "dilate", "jitter", "drop_region", "add_blob")
FLIP_FIELDS = ("image", "cumulative_mask", "layer_mask", "foreground", "occlusion")  # width flips


def augment_batch(
    batch: dict[str, torch.Tensor],
    hflip_p: float,
    cmask_noise_p: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The training augmentation of a sample batch: each sample mirrored left-right with probability
    ``hflip_p`` (image and every mask together), then ``C_k`` perturbed with probability
    ``cmask_noise_p`` (:func:`perturb_cumulative_mask`). Returns a new dict; other fields pass through."""
    flipped = random_hflip(*(batch[k] for k in FLIP_FIELDS), p=hflip_p, generator=generator)
    out = {**batch, **dict(zip(FLIP_FIELDS, flipped, strict=True))}
    out["cumulative_mask"] = perturb_cumulative_mask(out["cumulative_mask"], cmask_noise_p, generator)
    return out


def random_hflip(
    image: torch.Tensor,
    *masks: torch.Tensor,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """Flip each sample (its image and every mask) left-right with probability ``p``.

    Shapes: ``image`` [B,H,W,3] (channels-last) or [B,3,H,W]; masks [B,...,H,W] (width last, e.g.
    [B,H,W] or the occlusion maps [B,3,H,W]). Any dtype. Returns ``(image, *masks)``.
    """
    batch = image.shape[0]
    flip = torch.rand(batch, generator=generator, device="cpu").lt(p).to(image.device)
    if not bool(flip.any()):
        return (image, *masks)
    width_dim_image = 2 if image.shape[-1] == 3 and image.dim() == 4 else 3
    view = (-1,) + (1,) * (image.dim() - 1)
    image = torch.where(flip.view(view), image.flip(width_dim_image), image)
    return (
        image,
        *(torch.where(flip.view((-1,) + (1,) * (mask.dim() - 1)), mask.flip(-1), mask) for mask in masks),
    )


def erode(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Binary erosion of float masks [B,H,W] in {0,1} with a (2r+1)² square (min pooling)."""
    size = 2 * radius + 1
    return 1.0 - F.max_pool2d(1.0 - mask[:, None], size, stride=1, padding=radius)[:, 0]


def dilate(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Binary dilation of float masks [B,H,W] in {0,1} with a (2r+1)² square (max pooling)."""
    size = 2 * radius + 1
    return F.max_pool2d(mask[:, None], size, stride=1, padding=radius)[:, 0]


def translate(mask: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    """Shift each mask [B,H,W] by integer pixels (``shift_y``, ``shift_x``: int [B]); zero fill."""
    batch, height, width = mask.shape
    ys = torch.arange(height, device=mask.device).view(1, height, 1) - shift_y.view(-1, 1, 1)
    xs = torch.arange(width, device=mask.device).view(1, 1, width) - shift_x.view(-1, 1, 1)
    valid = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    flat_index = ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)
    shifted = torch.gather(mask.reshape(batch, -1), 1, flat_index.reshape(batch, -1)).view_as(mask)
    return shifted * valid


def _disc(
    centre_y: torch.Tensor,
    centre_x: torch.Tensor,
    radius_y: torch.Tensor,
    radius_x: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """Filled ellipses [B,H,W] (float 0/1) with per-sample centres and radii (float [B])."""
    device = centre_y.device
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)
    dy = (ys - centre_y.view(-1, 1, 1)) / radius_y.view(-1, 1, 1)
    dx = (xs - centre_x.view(-1, 1, 1)) / radius_x.view(-1, 1, 1)
    return (dy * dy + dx * dx <= 1.0).float()


def drop_region(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Erase a disc (radius 8–25 % of the side) centred on a random foreground pixel of each mask."""
    batch, height, width = mask.shape
    flat = mask.reshape(batch, -1).float().cpu() + 1e-6  # empty masks pick any pixel (no-op)
    index = torch.multinomial(flat, 1, generator=generator).view(-1).to(mask.device)
    side = min(height, width)
    radius = (0.08 + 0.17 * torch.rand(batch, generator=generator)).to(mask.device) * side
    hole = _disc((index // width).float(), (index % width).float(), radius, radius, height, width)
    return mask * (1.0 - hole)


def add_blob(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add a random filled ellipse (radii 5–20 % of the side) anywhere in each mask."""
    batch, height, width = mask.shape
    rand = torch.rand(batch, 4, generator=generator).to(mask.device)
    side = min(height, width)
    blob = _disc(
        rand[:, 0] * (height - 1),
        rand[:, 1] * (width - 1),
        (0.05 + 0.15 * rand[:, 2]) * side,
        (0.05 + 0.15 * rand[:, 3]) * side,
        height,
        width,
    )
    return torch.maximum(mask, blob)


def perturb_cumulative_mask(
    cumulative_mask: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
    max_radius: int = 2,
    max_shift: int = 3,
) -> torch.Tensor:
    """Return ``cumulative_mask`` with each non-empty sample perturbed with probability ``p``.

    ``cumulative_mask``: [B,H,W], any dtype with values in {0,1}; returned with the same dtype and
    shape, still binary. One perturbation per chosen sample, uniformly among ``PERTURBATIONS``.
    Random draws come from ``generator`` (a CPU ``torch.Generator``) so results are reproducible.
    """
    if p <= 0.0:
        return cumulative_mask
    assert cumulative_mask.dim() == 3, f"expected [B,H,W], got {tuple(cumulative_mask.shape)}"
    dtype = cumulative_mask.dtype
    mask = (cumulative_mask > 0).float()
    batch = mask.shape[0]
    non_empty = mask.flatten(1).amax(1) > 0
    chosen = (torch.rand(batch, generator=generator) < p).to(mask.device) & non_empty
    if not bool(chosen.any()):
        return cumulative_mask
    kind = torch.randint(len(PERTURBATIONS), (batch,), generator=generator).to(mask.device)
    radius = int(torch.randint(1, max_radius + 1, (1,), generator=generator))
    shifts = torch.randint(-max_shift, max_shift + 1, (2, batch), generator=generator).to(mask.device)
    candidates = torch.stack(
        [
            erode(mask, radius),
            dilate(mask, radius),
            translate(mask, shifts[0], shifts[1]),
            drop_region(mask, generator),
            add_blob(mask, generator),
        ]
    )  # [K,B,H,W]
    picked = candidates[kind, torch.arange(batch, device=mask.device)]
    out = torch.where(chosen.view(-1, 1, 1), picked, mask)
    return out.to(dtype)
