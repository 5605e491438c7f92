"""The order head: one pass from the image to ``V``, the layer of the visible object at each pixel.

Why (docs/RESULTS.md, round 7; ``../shared/DESIGN.md``): occlusion order is a per-object decision,
and one dense map fixes all of it. With ``V`` the layer of the object visible at each pixel
(background: none), ``M_0 = {V = 0}`` and ``C_k = {V < k}`` for every k, and the layer count is
``max V + 1``. So the order, every cumulative mask and the stop come from one deterministic map,
supervised on every object pixel of every scene (no terminal samples, no free-running compounding),
and the sequential diffusion model is left the part only it does well: the hidden shape of layer k
inside ``C_k`` (``SASModel`` with ``order.enabled``).

Output: ``K = order.max_layers`` logits per pixel in the continuation-ratio form of an ordinal
target: logit 0 is "an object is visible here" (``V >= 0``), logit ``j >= 1`` is "this pixel's object
lies deeper than layer j - 1, given that it lies at least that deep" (``V >= j | V >= j - 1``). The
decoded map is monotone by construction: ``V`` = the first ``j`` whose answer is no (``K - 1`` at
most). Each logit is trained with BCE on the pixels where its question applies, and, per visible
object (ids are in every training sample), on the object's mean logit: the decision a user sees is
per object, so the loss scores it per object too.

The occlusion-cue module (``sas_model/occlusion.py``; border ownership from self-similarity features,
pooled over each object) reads the image with an empty ``C_0``; its losses train it on every border.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from sas_model.config import ModelConfig
from sas_model.occlusion import CUE_CHANNELS, Cues, OcclusionCues, cue_loss, cue_targets
from sas_model.unet import UNet


class OrderOutput(NamedTuple):
    """``logits float[B,K,H,W]`` (continuation-ratio, see the module docstring); ``cues`` when used."""

    logits: torch.Tensor
    cues: Cues | None


class LayerOrderHead(nn.Module):
    """``forward(rgb [B,3,H,W] in [-1,1]) -> OrderOutput``: a deterministic UNet (``order.unet``) on
    RGB and, with ``order.use_cues``, the three occlusion-cue channels computed with an empty ``C_0``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        oc = cfg.order
        self.max_layers = oc.max_layers
        self.cues = OcclusionCues(cfg.cues) if oc.use_cues else None
        in_channels = 3 + (CUE_CHANNELS if self.cues is not None else 0)
        self.unet = UNet(oc.unet, cfg.image_size, in_channels=in_channels, out_channels=oc.max_layers)

    def forward(self, rgb: torch.Tensor) -> OrderOutput:
        cues = None
        parts = [rgb]
        if self.cues is not None:
            empty = -torch.ones_like(rgb[:, :1])  # C_0: nothing found yet
            cues = self.cues(torch.cat([rgb, empty], dim=1))
            parts.append(cues.channels().to(rgb.dtype))
        t = torch.zeros(len(rgb), dtype=torch.long, device=rgb.device)
        return OrderOutput(self.unet(torch.cat(parts, dim=1), t), cues)


def ordinal_targets(visible_layer: torch.Tensor, max_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, applies)`` float ``[B,K,H,W]`` from ``visible_layer`` long ``[B,H,W]`` (-1: background).

    ``target[:, j] = V >= j``; ``applies[:, j]``: where question j is asked (every pixel for j = 0,
    ``V >= j - 1`` for j >= 1). Layers deeper than ``K - 1`` answer yes to every question.
    """
    j = torch.arange(max_layers, device=visible_layer.device).view(1, -1, 1, 1)
    v = visible_layer.unsqueeze(1)
    return (v >= j).float(), (v >= j - 1).float()


def _object_means(values: torch.Tensor, ids: torch.Tensor, num_ids: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per visible object: ``(mean float[B,N,K], count float[B,N])`` of ``values [B,K,H,W]`` over the
    pixels of each id ``1..N`` of ``ids long[B,H,W]`` (0 = background)."""
    b, k = values.shape[:2]
    onehot = F.one_hot(ids.flatten(1), num_ids + 1)[..., 1:].float()  # [B,HW,N]
    count = onehot.sum(1)  # [B,N]
    sums = torch.einsum("bkp,bpn->bnk", values.float().flatten(2), onehot)
    return sums / count.clamp(min=1.0).unsqueeze(-1), count


def order_loss(
    out: OrderOutput, occlusion: torch.Tensor, object_weight: float, junction_weight: float = 0.0
) -> dict[str, torch.Tensor]:
    """Loss terms of the order head against the occlusion maps ``int8 [B,3,H,W]``
    (``synth.layering.OcclusionMaps.stacked``: visible ids, visible layers, occluded-side borders).

    ``pixels``: BCE of every logit where its question applies; ``objects``: BCE of each visible
    object's mean logit against its layer (weighted by ``object_weight`` in the total the caller
    sums); ``cue/<term>``: the cue module's losses at ``k = 0``. Scenes without per-object masks
    (occlusion maps of -1) contribute nothing.
    """
    maps = occlusion.long()
    known = (maps[:, 0] >= 0).flatten(1).all(dim=1).float()  # [B]
    logits = out.logits.float()
    target, applies = ordinal_targets(maps[:, 1], logits.shape[1])
    weight = applies * known.view(-1, 1, 1, 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    terms = {"pixels": (bce * weight).sum() / weight.sum().clamp(min=1.0)}
    ids = maps[:, 0].clamp(min=0)
    num_ids = int(ids.max()) if ids.numel() else 0
    if object_weight > 0 and num_ids > 0:
        mean_logit, count = _object_means(logits, ids, num_ids)
        # each object's layer: the visible layer at its pixels (one value per object)
        layer, _ = _object_means(maps[:, 1:2].float(), ids, num_ids)
        obj_target, obj_applies = ordinal_targets(layer[..., 0].round().long().unsqueeze(-1), logits.shape[1])
        obj_target, obj_applies = obj_target[..., 0].transpose(1, 2), obj_applies[..., 0].transpose(1, 2)
        obj_weight = obj_applies * (count > 0).float().unsqueeze(-1) * known.view(-1, 1, 1)
        obj_bce = F.binary_cross_entropy_with_logits(mean_logit, obj_target, reduction="none")
        terms["objects"] = object_weight * (obj_bce * obj_weight).sum() / obj_weight.sum().clamp(min=1.0)
    if out.cues is not None:
        k0 = torch.zeros(len(maps), dtype=torch.long, device=maps.device)
        cue_terms = cue_loss(out.cues, cue_targets(occlusion, k0), junction_weight=junction_weight)
        terms.update({f"cue/{name}": value for name, value in cue_terms.items()})
    return terms


def decode_visible_layers(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V long[B,H,W], p float[B,K+1,H,W])`` from continuation-ratio ``logits [B,K,H,W]``.

    ``V`` is -1 on the background, else the first ``j`` whose continuation answer is no (``K - 1`` at
    most); ``p[:, 0]`` is P(background) and ``p[:, 1 + j]`` = P(V = j), the last one P(V >= K - 1).
    """
    q = torch.sigmoid(logits.float())  # q0 = P(fg); qj = P(V >= j | V >= j-1)
    reach = torch.cumprod(q, dim=1)  # P(V >= j)
    deeper = torch.cat([reach[:, 1:], torch.zeros_like(reach[:, :1])], dim=1)
    p = torch.cat([1 - reach[:, :1], reach - deeper], dim=1)
    yes = q > 0.5
    fg = yes[:, 0]
    depth = (
        torch.cumprod(yes[:, 1:].long(), dim=1).sum(1) if logits.shape[1] > 1 else torch.zeros_like(fg).long()
    )
    return torch.where(fg, depth, torch.full_like(depth, -1)), p


def absorb_small_regions(layer_map: np.ndarray, min_area: int) -> np.ndarray:
    """``layer_map int[H,W]`` (-1: background) with every 4-connected region of one layer smaller than
    ``min_area`` px relabelled to the most common layer on its 4-neighbour ring (the background when
    it touches only background), smallest regions first."""
    out = np.array(layer_map, dtype=np.int64, copy=True)
    if min_area <= 1:
        return out
    small = []
    for k in np.unique(out[out >= 0]):
        labels, count = ndimage.label(out == k)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        small += [(int(sizes[c]), labels == c) for c in range(1, count + 1) if sizes[c] < min_area]
    for _, region in sorted(small, key=lambda item: item[0]):
        ring = ndimage.binary_dilation(region) & ~region
        around = out[ring]
        around = around[around >= 0]
        out[region] = np.bincount(around).argmax() if len(around) else -1
    return out


def clean_layer_map(layer_map: np.ndarray, min_area: int, max_layers: int) -> np.ndarray:
    """A decoded ``V`` (int[H,W], -1: background) ready to cut into layers: speckle absorbed
    (:func:`absorb_small_regions`), then layers renumbered 0..L-1 in depth order over the layers the
    map uses (a layer with no visible pixel cannot exist) and capped at ``max_layers - 1``."""
    v = absorb_small_regions(layer_map, min_area)
    used = np.unique(v[v >= 0])
    if len(used) and (used[-1] != len(used) - 1 or len(used) > max_layers):
        lookup = np.full(int(used[-1]) + 1, -1, dtype=np.int64)
        lookup[used] = np.minimum(np.arange(len(used)), max_layers - 1)
        v = np.where(v >= 0, lookup[v.clip(min=0)], -1)
    return v
