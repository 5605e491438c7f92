"""Occlusion cues: border ownership found locally, then pooled over each visible object.

Why this module exists (docs/RESULTS.md, "Round 4"): a plain UNet learns *where* objects are
quickly but *which are in front* very slowly, because the evidence is local (who owns the boundary
between two regions, decided at T-junctions and by the boundary's shape) while the decision is
per object (every pixel of an occluded object must say so). This module gives the network the two
steps as structure, each with exact dense supervision from the renderer:

1. a full-resolution CNN reads RGB and ``C_k`` and predicts, per pixel,
   - ``boundary``: the pixel lies on a border between two different visible objects;
   - ``ownership``: the pixel is on the *occluded* side of such a border, and the occluder is not
     yet in ``C_k`` (target ``occluder_layer >= k`` of :func:`synth.layering.occlusion_maps`);
   - an instance embedding (at half resolution), trained so that pixels of the same visible object
     (or both background) attend to each other;
2. attention pooling: each pixel averages the ownership evidence of the boundary pixels of its own
   object (keys and queries: the embedding; weights: the boundary probability; a learned "no
   evidence" slot for objects that touch no other object). The result is the ``region`` map: "this
   pixel belongs to an object still hidden by something outside ``C_k``" (target
   ``visible_layer > k``).

The layer head (the UNet) reads ``ownership``, ``boundary`` and ``region`` as extra input channels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sas_model.config import CueConfig
from sas_model.unet import zero_module as zero_init

RGB_TAU = 50.0  # colour distance scale of the RGB similarity (images in [-1, 1])
CUE_CHANNELS = 3  # ownership, boundary, region: what the layer head reads


class Cues(NamedTuple):
    """Logits ``[B,1,H,W]`` (``embedding``: ``[B,E,H/2,W/2]``, unit length)."""

    ownership: torch.Tensor
    boundary: torch.Tensor
    region: torch.Tensor
    embedding: torch.Tensor
    attention_scale: torch.Tensor

    def channels(self) -> torch.Tensor:
        """``[B,3,H,W]`` in [-1, 1]: what the layer head reads (probabilities mapped to [-1, 1])."""
        logits = torch.cat([self.ownership, self.boundary, self.region], dim=1)
        return torch.tanh(logits.float() / 2)


class CueTargets(NamedTuple):
    """Targets for layer step ``k`` from ``OcclusionMaps`` (``[B,H,W]`` each)."""

    visible_id: torch.Tensor  # long, 0 = background
    ownership: torch.Tensor  # float 0/1
    boundary: torch.Tensor  # float 0/1: border pixel between two different objects
    region: torch.Tensor  # float 0/1
    active: torch.Tensor  # float 0/1: visible pixel of an object not in C_k (where the targets matter)
    known: torch.Tensor  # float 0/1 [B,1,1]: the scene has per-object masks (else no cue targets)
    junction: torch.Tensor  # float 0/1: within 2 px of a point where three regions meet (T-junctions)


def cue_targets(maps: torch.Tensor, k: torch.Tensor) -> CueTargets:
    """``maps`` int8 ``[B,3,H,W]`` (``OcclusionMaps.stacked()``), ``k`` long ``[B]`` → :class:`CueTargets`."""
    maps = maps.long()
    known = (maps[:, 0] >= 0).flatten(1).all(dim=1).float().view(-1, 1, 1)
    vid, vlayer, occ = maps[:, 0].clamp(min=0), maps[:, 1], maps[:, 2]
    k = k.view(-1, 1, 1).to(maps.device)
    active = (vid > 0) & (vlayer >= k)
    other = torch.zeros_like(vid, dtype=torch.bool)
    pad = F.pad(vid, (1, 1, 1, 1), value=0)
    h, w = vid.shape[-2:]
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = pad[:, dy : dy + h, dx : dx + w]
        other |= (neighbour > 0) & (neighbour != vid)
    boundary = other & (vid > 0)
    # Junctions: 3x3 neighbourhoods holding three or more distinct regions (background counts),
    # grown by 2 px. Border ownership is decided there; elsewhere only the border's shape hints.
    patches = F.unfold(F.pad(vid[:, None].float(), (1, 1, 1, 1), mode="replicate"), 3).sort(dim=1).values
    distinct = 1 + (patches[:, 1:] != patches[:, :-1]).sum(1).view_as(vid)
    junction = F.max_pool2d((distinct >= 3).float()[:, None], 5, stride=1, padding=2)[:, 0]
    return CueTargets(
        visible_id=vid,
        ownership=(occ >= k).float(),
        boundary=boundary.float(),
        region=(vlayer > k).float(),
        active=active.float() * known,
        known=known,
        junction=junction,
    )


def self_similarity(
    features: torch.Tensor, radius: int, dilations: tuple[int, ...], tau: torch.Tensor | float
) -> torch.Tensor:
    """``[B,K,H,W]`` in (-1, 1]: for each offset ``δ`` of a ``(2r+1)²`` window (centre left out) at
    each dilation, ``2 / (1 + τ·|f(p) - f(p+δ)|²) - 1``; ``K = len(dilations)·((2r+1)² - 1)``.

    Relative, centre-referenced features: they say which pixels around ``p`` look like ``p`` (its own
    region, locally) whatever the colours are, so "is my region convex here / does my border run on
    at this junction" becomes a pattern a few convolutions read. A plain CNN on RGB does not learn
    border ownership at all at this budget (per-pixel accuracy stays at chance: swapping the two
    colours swaps the answer, docs/RESULTS.md "Round 4"); on these features it does. Off-frame
    neighbours count as different (-1).
    """
    reach = radius * max(dilations)
    padded = F.pad(features, (reach,) * 4, value=1e3)
    h, w = features.shape[-2:]
    inplace = not (features.requires_grad and torch.is_grad_enabled())
    out = []
    for d in dilations:
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dy == 0 and dx == 0:
                    continue
                ys, xs = reach + dy * d, reach + dx * d
                diff = features - padded[:, :, ys : ys + h, xs : xs + w]
                out.append((diff.square_() if inplace else diff.square()).sum(1))
    distance = torch.stack(out, 1)
    if inplace:  # measured: this in-place chain is ~5x faster than unfold + exp on 2 CPU cores
        return distance.mul_(tau).add_(1).reciprocal_().mul_(2).sub_(1)
    return 2 / (1 + tau * distance) - 1


class OcclusionCues(nn.Module):
    """``forward(x [B,C,H,W]) -> Cues``; ``x`` is RGB in [-1, 1] and ``C_k`` in {-1, 1} (C = 4)."""

    def __init__(self, cfg: CueConfig, in_channels: int = 4) -> None:
        super().__init__()
        w, fine = cfg.width, max(8, cfg.width // 2)
        self.radius, self.dilations = cfg.similarity_radius, tuple(cfg.similarity_dilations)
        # What "looks alike" means: RGB (fixed, no gradient: cheap), plus optional learned channels
        # (zero at the start, so training begins from plain colour similarity; they can learn to
        # group textures) compared in a second, learned stack.
        self.appearance = None
        if cfg.learned_similarity:
            self.appearance = nn.Sequential(
                nn.Conv2d(3, fine, 3, padding=1),
                nn.SiLU(),
                zero_init(nn.Conv2d(fine, cfg.learned_similarity, 1)),
            )
        window = (2 * cfg.similarity_radius + 1) ** 2 - 1
        k = window * len(self.dilations) * (2 if cfg.learned_similarity else 1)
        # Full resolution: 1x1 mixing of the similarity stack and the input; then space-to-depth
        # keeps every pixel's detail while the blocks run at half resolution (4x cheaper).
        layers: list[nn.Module] = [nn.Conv2d(k + in_channels, fine, 1)]
        for _ in range(cfg.fine_depth):  # optional full-resolution 3x3 convs (more context, 4x the cost)
            layers += [nn.SiLU(), nn.Conv2d(fine, fine, 3, padding=1)]
        self.fine = nn.Sequential(*layers)
        self.reduce = nn.Conv2d(4 * fine, w, 1)
        self.blocks = nn.ModuleList()
        for i in range(cfg.depth):
            dilation = cfg.dilations[i % len(cfg.dilations)]
            self.blocks.append(
                nn.Sequential(
                    nn.GroupNorm(min(8, w), w),
                    nn.SiLU(),
                    nn.Conv2d(w, w, 3, padding=dilation, dilation=dilation),
                )
            )
        # ownership, boundary, trust at full resolution (depth-to-space) plus a full-resolution term;
        # "trust" weighs a border pixel's ownership in the pooling (learned from the region loss alone)
        self.local_head = nn.Conv2d(w, 3 * 4, 1)
        self.local_fine = nn.Conv2d(fine, 3, 1)
        nn.init.constant_(self.local_fine.bias, 0.0)
        with torch.no_grad():
            self.local_fine.bias[2] = 2.0
        self.embed = nn.Sequential(
            nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, cfg.embed_dim, 1)
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.attention_scale)))
        self.null_logit = nn.Parameter(torch.tensor(0.0))
        self.region_gain = nn.Parameter(torch.tensor(6.0))
        self.region_bias = nn.Parameter(torch.tensor(-3.0))
        self.pool = cfg.pool
        self.query_stride = cfg.query_stride

    def forward(self, x: torch.Tensor) -> Cues:
        rgb = x[:, :3]
        with torch.no_grad():
            similar = [self_similarity(rgb.float(), self.radius, self.dilations, RGB_TAU).to(x.dtype)]
        if self.appearance is not None:
            looks = self.appearance(rgb).float()
            similar.append(self_similarity(looks, self.radius, self.dilations, 1.0).to(x.dtype))
        fine = F.silu(self.fine(torch.cat([*similar, x], dim=1)))
        h = self.reduce(F.pixel_unshuffle(fine, 2))
        for block in self.blocks:
            h = h + block(h)
        local = F.pixel_shuffle(self.local_head(F.silu(h)), 2) + self.local_fine(fine)
        ownership, boundary, trust = local[:, :1], local[:, 1:2], local[:, 2:3]
        emb = F.normalize(self.embed(h).float(), dim=1)
        scale = self.log_scale.exp()
        if not self.pool:
            return Cues(ownership, boundary, torch.zeros_like(ownership), emb, scale)
        if self.query_stride == 4:  # queries at quarter resolution too (4x cheaper pooling)
            emb = F.normalize(F.avg_pool2d(emb, 2), dim=1)
        b, e, hh, ww = emb.shape
        p_own = torch.sigmoid(ownership.float())
        p_bnd = torch.sigmoid(boundary.float()) * torch.sigmoid(trust.float())
        # Keys at quarter resolution (16x16 for a 64x64 image: 4x fewer than the queries).
        weight = F.avg_pool2d(p_bnd, 4)
        value = (F.avg_pool2d(p_bnd * p_own, 4) / weight.clamp(min=1e-4)).flatten(1)
        keys = F.normalize(F.avg_pool2d(emb, 2), dim=1).flatten(2)
        logits = scale * torch.einsum("bep,beq->bpq", emb.flatten(2), keys)
        logits = logits + torch.log(weight.flatten(1) + 1e-4)[:, None, :]
        top = torch.maximum(logits.amax(dim=2, keepdim=True), self.null_logit.detach())
        expw = torch.exp(logits - top)
        denom = expw.sum(dim=2) + torch.exp(self.null_logit - top[..., 0])  # the "no evidence" slot
        pooled = (torch.einsum("bpq,bq->bp", expw, value) / denom).view(b, 1, hh, ww)
        region_half = self.region_gain * pooled + self.region_bias
        region = F.interpolate(region_half, scale_factor=float(self.query_stride), mode="nearest")
        return Cues(ownership, boundary, region, emb, scale)


def _masked_bce(logit: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logit.float(), target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def _balanced_bce(logit: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """BCE where the positive and the negative pixels weigh half each (borders are ~2 % of pixels)."""
    pos = (target * known).sum().clamp(min=1.0)
    neg = ((1 - target) * known).sum().clamp(min=1.0)
    weight = (target * (0.5 / pos) + (1 - target) * (0.5 / neg)) * known
    loss = F.binary_cross_entropy_with_logits(logit.float(), target, reduction="none")
    return (loss * weight).sum()


def cue_loss(
    cues: Cues, targets: CueTargets, pairs: int = 256, junction_weight: float = 0.0
) -> dict[str, torch.Tensor]:
    """Loss terms: ownership (on boundary pixels of objects not in ``C_k``), boundary (every pixel),
    region (visible pixels of objects not in ``C_k``) and embedding (same-object pairs, sampled)."""
    own_w = targets.boundary * targets.active * (1 + junction_weight * targets.junction)
    terms = {
        "ownership": _masked_bce(cues.ownership[:, 0], targets.ownership, own_w),
        "boundary": _balanced_bce(cues.boundary[:, 0], targets.boundary, targets.known),
        "region": _masked_bce(cues.region[:, 0], targets.region, targets.active),
    }
    emb = cues.embedding
    b, e, hh, ww = emb.shape
    stride = targets.visible_id.shape[-1] // ww
    vid = targets.visible_id[:, ::stride, ::stride].reshape(b, -1)
    tokens = emb.flatten(2)
    idx = torch.randint(0, hh * ww, (b, pairs), device=emb.device)
    q = torch.gather(tokens, 2, idx[:, None, :].expand(b, e, pairs))  # [B,E,P]
    sim = torch.einsum("bep,beq->bpq", q, tokens)  # [B,P,N]
    same = (torch.gather(vid, 1, idx)[:, :, None] == vid[:, None, :]).float()
    loss = F.binary_cross_entropy_with_logits(
        cues.attention_scale.detach() * (sim - 0.5), same, reduction="none"
    )
    known = targets.known.view(b, 1, 1)
    terms["embedding"] = (loss * known).sum() / (known.sum() * loss.shape[1] * loss.shape[2]).clamp(min=1.0)
    return terms
