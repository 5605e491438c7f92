"""Noise schedules as small pure functions, and a module that holds them as buffers.

Every schedule function returns ``betas float64[T]``; ``NoiseSchedule`` turns them into the
tensors the loss and the samplers need (non-persistent buffers: they follow ``.to(device)`` but are
not saved, since the config rebuilds them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sas_model.config import DiffusionConfig


def linear_beta_schedule(num_timesteps: int) -> torch.Tensor:
    """Linear betas (Ho et al. 2020), rescaled to T steps as in Nichol & Dhariwal 2021."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def cosine_beta_schedule(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Cosine ᾱ schedule (Nichol & Dhariwal 2021, "Improved DDPM")."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alphas_cumprod = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(0, 0.999)


def sigmoid_beta_schedule(
    num_timesteps: int, start: float = -3, end: float = 3, tau: float = 1
) -> torch.Tensor:
    """Sigmoid ᾱ schedule (Jabri et al. 2022, "Scalable Adaptive Computation", RIN)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    v_start, v_end = torch.tensor(start / tau).sigmoid(), torch.tensor(end / tau).sigmoid()
    alphas_cumprod = (-((steps * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start)
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(0, 0.999)


def scaled_linear_beta_schedule(num_timesteps: int) -> torch.Tensor:
    """Linear in sqrt(β) from 0.00085 to 0.012 (Rombach et al. 2022, latent diffusion)."""
    scale = 1000.0 / num_timesteps
    return (
        torch.linspace(
            math.sqrt(scale * 0.00085), math.sqrt(scale * 0.012), num_timesteps, dtype=torch.float64
        )
        ** 2
    )


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(ᾱ) so that ᾱ_T = 0 (Lin et al. 2023, "Common Diffusion Noise Schedules...")."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alphas_cumprod = sqrt_ab**2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


BETA_SCHEDULE_FNS = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
    "scaled_linear": scaled_linear_beta_schedule,
}


def make_betas(name: str, num_timesteps: int, zero_terminal_snr: bool = False) -> torch.Tensor:
    """``betas float64[T]`` for a named schedule, optionally rescaled to zero terminal SNR."""
    if name not in BETA_SCHEDULE_FNS:
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {', '.join(BETA_SCHEDULE_FNS)}")
    betas = BETA_SCHEDULE_FNS[name](num_timesteps)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


class NoiseSchedule(nn.Module):
    """ᾱ and friends as buffers, indexed by integer timesteps ``t long[B]`` in ``0..T-1``.

    ``q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)``. The float64 copy ``alphas_cumprod64`` is
    what samplers use for their coefficients.
    """

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        betas = make_betas(cfg.beta_schedule, cfg.num_timesteps, cfg.zero_terminal_snr)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.num_timesteps = cfg.num_timesteps
        self.alphas_cumprod64 = alphas_cumprod  # CPU float64, for sampler coefficients
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "snr": alphas_cumprod / (1 - alphas_cumprod),  # inf-free: 1 - ᾱ_t > 0 for every t
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    @staticmethod
    def gather(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``values[t]`` reshaped to ``[B,1,1,1]`` for broadcasting over ``[B,C,H,W]``."""
        return values.gather(0, t).view(-1, 1, 1, 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε``; all ``[B,1,H,W]``, ``t long[B]``."""
        return (
            self.gather(self.sqrt_alphas_cumprod, t) * x0
            + self.gather(self.sqrt_one_minus_alphas_cumprod, t) * noise
        )

    # --- conversions between the three parameterisations (all [B,C,H,W], t long[B]) ---
    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a, s = self.gather(self.sqrt_alphas_cumprod, t), self.gather(self.sqrt_one_minus_alphas_cumprod, t)
        return (x_t - a * x0) / s

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a, s = self.gather(self.sqrt_alphas_cumprod, t), self.gather(self.sqrt_one_minus_alphas_cumprod, t)
        return (x_t - s * eps) / a

    def v_from_x0_eps(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0`` (Salimans & Ho 2022)."""
        a, s = self.gather(self.sqrt_alphas_cumprod, t), self.gather(self.sqrt_one_minus_alphas_cumprod, t)
        return a * eps - s * x0

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a, s = self.gather(self.sqrt_alphas_cumprod, t), self.gather(self.sqrt_one_minus_alphas_cumprod, t)
        return a * x_t - s * v

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a, s = self.gather(self.sqrt_alphas_cumprod, t), self.gather(self.sqrt_one_minus_alphas_cumprod, t)
        return s * x_t + a * v
