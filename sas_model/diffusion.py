"""Training side of the diffusion: timestep sampling, targets, the loss and its auxiliary terms.

Conventions (all tensors ``[B,1,H,W]`` unless said otherwise): the clean layer mask is
``x0 ∈ {-s,+s}`` with ``s = mask_scale``; ``x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε``.

How the network's raw output maps to a clean-mask estimate ``x0_hat``:

- ``x0`` prediction (and the deterministic baseline): the output is a mask LOGIT ``ℓ`` and
  ``x0_hat = s·tanh(ℓ/2)`` (= ``s·(2σ(ℓ) - 1)``), so BCE-with-logits applies to ``ℓ`` directly;
- ``epsilon`` / ``v``: the usual conversions, then ``x0_hat`` clipped to ``[-s, s]``.

Loss = ``mse_weight·MSE(target)`` (optionally min-SNR weighted, Hang et al. 2023)
``+ bce_weight·BCE + dice_weight·Dice`` on the predicted clean mask, whose foreground probability
is ``p = (x0_hat/s + 1)/2``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sas_model.config import DiffusionConfig
from sas_model.schedules import NoiseSchedule

PROB_EPS = 1e-4


class LossTerms(NamedTuple):
    """Scalar loss tensors; ``total`` is what gets back-propagated."""

    total: torch.Tensor
    mse: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor
    foreground: torch.Tensor  # the auxiliary foreground head's BCE + Dice (0 when the head is off)


def sample_timesteps(
    cfg: DiffusionConfig, batch: int, device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``t long[B]`` in ``0..T-1``: uniform, or biased to high noise with density ∝ t^bias."""
    T = cfg.num_timesteps
    if cfg.timestep_sampling == "uniform":
        return torch.randint(0, T, (batch,), generator=generator).to(device)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    t = torch.floor(T * u ** (1.0 / (1.0 + cfg.timestep_bias))).long().clamp_(0, T - 1)
    return t.to(device)


def x0_from_output(
    schedule: NoiseSchedule, cfg: DiffusionConfig, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Clean-mask estimate in ``[-s, s]`` from the raw network output (see module docstring)."""
    s = cfg.mask_scale
    if cfg.mode == "deterministic" or cfg.prediction_type == "x0":
        return s * torch.tanh(output / 2)
    if cfg.prediction_type == "epsilon":
        x0 = schedule.x0_from_eps(x_t, t, output)
    else:
        x0 = schedule.x0_from_v(x_t, t, output)
    return x0.clamp(-s, s)


def min_snr_weight(schedule: NoiseSchedule, cfg: DiffusionConfig, t: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE weight ``[B]`` for min-SNR-γ (Hang et al. 2023), expressed for the target type."""
    snr = schedule.snr.gather(0, t)
    clipped = snr.clamp(max=cfg.min_snr_gamma)
    if cfg.prediction_type == "epsilon":
        return clipped / snr.clamp(min=1e-8)
    if cfg.prediction_type == "v":
        return clipped / (snr + 1)
    return clipped


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``1 - (2|p∩y| + 1)/(|p| + |y| + 1)``; an empty target pushes ``p`` to 0."""
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    return (1 - (2 * inter + smooth) / (prob.sum(dims) + target.sum(dims) + smooth)).mean()


def diffusion_loss(
    schedule: NoiseSchedule,
    cfg: DiffusionConfig,
    output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> LossTerms:
    """Loss terms from the network ``output`` for clean mask ``x0``, noisy input ``x_t`` and noise ``ε``."""
    s = cfg.mask_scale
    output, x_t, x0, noise = output.float(), x_t.float(), x0.float(), noise.float()  # loss in fp32 under AMP
    target_mask = (x0 > 0).float()
    zero = output.new_zeros(())
    deterministic = cfg.mode == "deterministic"
    x0_hat = x0_from_output(schedule, cfg, output, x_t, t)

    mse = zero
    if cfg.mse_weight > 0:
        if deterministic or cfg.prediction_type == "x0":
            err = (x0_hat - x0) ** 2
        elif cfg.prediction_type == "epsilon":
            err = (output - noise) ** 2
        else:
            err = (output - schedule.v_from_x0_eps(x0, t, noise)) ** 2
        per_sample = err.mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma is not None and not deterministic:
            per_sample = per_sample * min_snr_weight(schedule, cfg, t)
        mse = per_sample.mean()

    if deterministic or cfg.prediction_type == "x0":
        prob = torch.sigmoid(output)
        bce = F.binary_cross_entropy_with_logits(output, target_mask) if cfg.bce_weight > 0 else zero
    else:
        prob = ((x0_hat / s + 1) / 2).clamp(PROB_EPS, 1 - PROB_EPS)
        # written out: F.binary_cross_entropy is refused inside CUDA autocast regions
        bce = (
            -(target_mask * prob.log() + (1 - target_mask) * (1 - prob).log()).mean()
            if cfg.bce_weight > 0
            else zero
        )
    dice = dice_loss(prob, target_mask) if cfg.dice_weight > 0 else zero
    total = cfg.mse_weight * mse + cfg.bce_weight * bce + cfg.dice_weight * dice
    return LossTerms(total, mse, bce, dice, zero)


def foreground_loss(logits: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of auxiliary-head ``logits [B,C,H,W]`` against 0/1 targets of the same shape."""
    logits, target = logits.float(), foreground.float()
    return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(torch.sigmoid(logits), target)
