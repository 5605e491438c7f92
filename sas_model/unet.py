"""Guided-diffusion-style UNet (Dhariwal & Nichol 2021) for one-channel mask denoising.

Input ``[B, C_in, H, W]`` with ``C_in = 3 (RGB in [-1,1]) + 1 (C_k in {-1,1}) + 1 (x_t)
(+ 1 previous x0 estimate when self-conditioning)``, timesteps ``t long[B]``; output ``[B,1,H,W]``.

ResBlocks are GroupNorm → SiLU → conv, with the timestep embedding applied as a scale/shift of the
second norm; self-attention at the configured feature sizes; one skip per encoder block, consumed
by ``num_res_blocks + 1`` decoder blocks per level as in guided-diffusion. ``stem_stride = 2`` runs
the whole UNet at half resolution (about 4× cheaper on a CPU) and restores full resolution at the
end with a nearest upsample, a full-resolution skip from the input and one small conv block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sas_model.config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017) of ``t [B]`` → ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer's parameters so its block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``[B,C_in,H,W] , emb [B,E] → [B,C_out,H,W]``; timestep as scale/shift of the 2nd norm or added."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int, scale_shift: bool = True
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.scale_shift:
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:  # improved-diffusion's default: add the embedding before the norm
            h = self.norm2(h + self.emb(emb)[:, :, None, None])
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions of ``[B,C,H,W]`` (residual)."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        out = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # [B, heads, HW, C/heads]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3×3 conv: ``[B,C,H,W] → [B,C,H/2,W/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 conv: ``[B,C,H,W] → [B,C,2H,2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """A ResBlock optionally followed by attention (one encoder or decoder step)."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """``forward(x [B,in_channels,H,W], t long[B]) -> [B,out_channels,H,W]``; H, W divisible by ``factor``."""

    def __init__(self, cfg: UNetConfig, image_size: int, in_channels: int, out_channels: int = 1) -> None:
        super().__init__()
        ch, groups = cfg.base_channels, cfg.norm_groups
        self.factor = cfg.stem_stride * 2 ** (len(cfg.channel_mults) - 1)
        self.stem_stride = cfg.stem_stride
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.base_channels = ch
        self.stem = nn.Conv2d(in_channels, ch, 3, stride=cfg.stem_stride, padding=1)

        def resblock(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, groups, cfg.scale_shift_norm)

        def attention(channels: int, size: int) -> AttentionBlock | None:
            if size in cfg.attention_resolutions:
                return AttentionBlock(channels, cfg.num_head_channels, groups)
            return None

        size = image_size // cfg.stem_stride
        self.down = nn.ModuleList()
        skip_channels, current = [ch], ch
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                out = ch * mult
                self.down.append(Level(resblock(current, out), attention(out, size)))
                current = out
                skip_channels.append(current)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(Downsample(current))
                skip_channels.append(current)
                size //= 2
        self.mid1 = resblock(current, current)
        self.mid_attn = AttentionBlock(current, cfg.num_head_channels, groups) if cfg.mid_attention else None
        self.mid2 = resblock(current, current)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for block in range(cfg.num_res_blocks + 1):
                out = ch * mult
                res = resblock(current + skip_channels.pop(), out)
                self.up.append(Level(res, attention(out, size)))
                current = out
                if level > 0 and block == cfg.num_res_blocks:
                    self.up.append(Upsample(current))
                    size *= 2
        assert not skip_channels
        self.out_norm = group_norm(current, groups)
        if cfg.stem_stride == 1:
            self.head = zero_module(nn.Conv2d(current, out_channels, 3, padding=1))
        else:  # half-res features, upsampled, fused with a cheap full-resolution view of the input
            full = max(8, ch // 2)
            self.full_res_in = nn.Conv2d(in_channels, full, 3, padding=1)
            self.full_res_fuse = nn.Conv2d(current + full, full, 3, padding=1)
            self.full_res_norm = group_norm(full, min(groups, 8))
            self.head = zero_module(nn.Conv2d(full, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not divisible by the UNet's factor {self.factor}"
            )
        emb = self.time_embed(timestep_embedding(t, self.base_channels))
        h = self.stem(x)
        skips = [h]
        for module in self.down:
            h = module(h, emb) if isinstance(module, Level) else module(h)
            skips.append(h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb)
        for module in self.up:
            if isinstance(module, Level):
                h = module(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = module(h)
        h = F.silu(self.out_norm(h))
        if self.stem_stride == 1:
            return self.head(h)
        h = F.interpolate(h, scale_factor=float(self.stem_stride), mode="nearest")
        h = self.full_res_fuse(torch.cat([h, F.silu(self.full_res_in(x))], dim=1))
        return self.head(F.silu(self.full_res_norm(h)))
