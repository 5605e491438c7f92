"""Samplers behind one interface; all of them step from the model's clean-mask estimate x0_hat.

    sampler = make_sampler(model.schedule, cfg.sampler, mask_scale)
    sampler.set_timesteps(cfg.sampler.steps)              # descending timesteps, one UNet pass each
    x0, passes = sampler.sample(denoise, noise_fn, shape)

``denoise(x_t [B,1,H,W], t long[B], self_cond [B,1,H,W] | None) -> x0_hat [B,1,H,W]`` and
``noise_fn() -> ε [B,1,H,W]`` (the caller owns the randomness, so each image can have its own
generator). ``x0_hat`` is clipped to ``[-s, s]``; the result is the last clean-mask estimate.
Timesteps use "trailing" spacing (Lin et al. 2023, Table 2): the first step is always ``T-1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sas_model.config import SamplerConfig
from sas_model.schedules import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
NoiseFn = Callable[[], torch.Tensor]


def trailing_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` descending timesteps from ``T-1``, evenly spaced: T=1000, k=4 → 999, 749, 499, 249."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampler steps must be in 1..{num_timesteps}, got {steps}")
    return [round(num_timesteps - i * num_timesteps / steps) - 1 for i in range(steps)]


class Sampler:
    """Base: holds ᾱ (float64) and the timesteps; subclasses implement ``step``."""

    stochastic = False

    def __init__(self, schedule: NoiseSchedule, cfg: SamplerConfig, mask_scale: float) -> None:
        self.alphas_cumprod = schedule.alphas_cumprod64.tolist()
        self.num_timesteps = schedule.num_timesteps
        self.cfg = cfg
        self.mask_scale = mask_scale
        self.timesteps: list[int] = []

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = trailing_timesteps(self.num_timesteps, steps)
        self.reset()

    def reset(self) -> None:
        """Clear multistep history (called by ``set_timesteps`` and at the start of ``sample``)."""

    def alpha_bar(self, index: int) -> float:
        """ᾱ at the ``index``-th timestep; 1.0 past the end (the clean mask)."""
        return self.alphas_cumprod[self.timesteps[index]] if index < len(self.timesteps) else 1.0

    def step(self, x0_hat: torch.Tensor, index: int, x_t: torch.Tensor, noise_fn: NoiseFn) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self, denoise: Denoiser, noise_fn: NoiseFn, self_condition: bool = False
    ) -> tuple[torch.Tensor, int]:
        """Run the chain from pure noise; returns ``(x0_hat [B,1,H,W], UNet passes per sample)``."""
        assert self.timesteps, "call set_timesteps first"
        self.reset()
        s = self.mask_scale
        x_t = noise_fn()
        x0_hat, self_cond = x_t, None
        for index, t in enumerate(self.timesteps):
            t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
            x0_hat = denoise(x_t, t_batch, self_cond).clamp(-s, s)
            self_cond = x0_hat if self_condition else None
            if index < len(self.timesteps) - 1:
                x_t = self.step(x0_hat, index, x_t, noise_fn)
        return x0_hat, len(self.timesteps)


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, eq. 6-7), respaced to any step count (Nichol & Dhariwal 2021)."""

    stochastic = True

    def step(self, x0_hat: torch.Tensor, index: int, x_t: torch.Tensor, noise_fn: NoiseFn) -> torch.Tensor:
        ab_t, ab_prev = self.alpha_bar(index), self.alpha_bar(index + 1)
        beta = 1 - ab_t / ab_prev  # the respaced step's β
        # 1. posterior mean  μ = sqrt(ᾱ_prev) β / (1-ᾱ_t) x0 + sqrt(1-β) (1-ᾱ_prev) / (1-ᾱ_t) x_t
        coef_x0 = math.sqrt(ab_prev) * beta / (1 - ab_t)
        coef_xt = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
        # 2. posterior variance  β̃ = β (1-ᾱ_prev) / (1-ᾱ_t)
        var = beta * (1 - ab_prev) / (1 - ab_t)
        return coef_x0 * x0_hat + coef_xt * x_t + math.sqrt(var) * noise_fn()


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12) with stochasticity ``eta``."""

    def __init__(self, schedule: NoiseSchedule, cfg: SamplerConfig, mask_scale: float) -> None:
        super().__init__(schedule, cfg, mask_scale)
        self.eta = cfg.eta
        self.stochastic = cfg.eta > 0

    def step(self, x0_hat: torch.Tensor, index: int, x_t: torch.Tensor, noise_fn: NoiseFn) -> torch.Tensor:
        ab_t, ab_prev = self.alpha_bar(index), self.alpha_bar(index + 1)
        # 1. ε implied by the clean estimate: ε = (x_t - sqrt(ᾱ_t) x0) / sqrt(1-ᾱ_t)
        eps = (x_t - math.sqrt(ab_t) * x0_hat) / math.sqrt(1 - ab_t)
        # 2. σ_t = η sqrt((1-ᾱ_prev)/(1-ᾱ_t)) sqrt(1-ᾱ_t/ᾱ_prev)   (eq. 16)
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        # 3. x_prev = sqrt(ᾱ_prev) x0 + sqrt(1-ᾱ_prev-σ²) ε + σ z   (eq. 12)
        x_prev = math.sqrt(ab_prev) * x0_hat + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        return x_prev + sigma * noise_fn() if sigma > 0 else x_prev


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M), data prediction, multistep (Lu et al. 2022, Algorithm 2); first order on step 1."""

    def reset(self) -> None:
        self.previous_x0: torch.Tensor | None = None
        self.previous_h: float | None = None

    def _alpha_sigma(self, index: int) -> tuple[float, float]:
        ab = self.alpha_bar(index)
        return math.sqrt(ab), math.sqrt(1 - ab)

    def step(self, x0_hat: torch.Tensor, index: int, x_t: torch.Tensor, noise_fn: NoiseFn) -> torch.Tensor:
        alpha_s, sigma_s = self._alpha_sigma(index)
        alpha_t, sigma_t = self._alpha_sigma(index + 1)
        # 1. λ = log(α/σ); h = λ_t - λ_s (may be +inf when the first step starts at zero SNR)
        lam_s = math.log(alpha_s / sigma_s) if alpha_s > 0 else -math.inf
        lam_t = math.log(alpha_t / sigma_t) if sigma_t > 0 else math.inf
        h = lam_t - lam_s
        # 2. second-order data estimate D = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev,  r = h_prev / h
        denoised = x0_hat
        if (
            self.previous_x0 is not None
            and math.isfinite(h)
            and self.previous_h is not None
            and math.isfinite(self.previous_h)
        ):
            r = self.previous_h / h
            denoised = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * self.previous_x0
        self.previous_x0, self.previous_h = x0_hat, h
        # 3. x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D,   with α_t e^{-h} = α_s σ_t / σ_s (inf-safe)
        return (sigma_t / sigma_s) * x_t + (alpha_t - alpha_s * sigma_t / sigma_s) * denoised


SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmpp2m": DPMSolverPP2MSampler,
}


def make_sampler(schedule: NoiseSchedule, cfg: SamplerConfig, mask_scale: float) -> Sampler:
    """Sampler named by ``cfg.name`` with ``cfg.steps`` timesteps already set."""
    if cfg.name not in SAMPLERS:
        raise ValueError(f"unknown sampler {cfg.name!r}; choose one of {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[cfg.name](schedule, cfg, mask_scale)
    sampler.set_timesteps(cfg.steps)
    return sampler
