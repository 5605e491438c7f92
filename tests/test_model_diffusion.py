"""Schedules, parameterisation conversions, samplers against oracle denoisers, the training loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sas_model.config import DiffusionConfig, ModelConfig, SamplerConfig
from sas_model.diffusion import min_snr_weight, sample_timesteps
from sas_model.model import SASModel
from sas_model.samplers import make_sampler, trailing_timesteps
from sas_model.schedules import BETA_SCHEDULE_FNS, NoiseSchedule, make_betas
from synth.layering import compute_layers, occlusion_maps

SAMPLER_CASES = [
    ("ddpm", 1000, 0.0),
    ("ddpm", 50, 0.0),
    ("ddim", 50, 0.0),
    ("ddim", 50, 1.0),
    ("dpmpp2m", 10, 0.0),
]


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULE_FNS))
@pytest.mark.parametrize("zero_snr", [False, True])
def test_alpha_bar_is_monotone_with_the_right_endpoints(name: str, zero_snr: bool) -> None:
    betas = make_betas(name, 1000, zero_snr)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert betas.shape == (1000,) and (betas > 0).all() and (betas <= 1).all()
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()
    assert alpha_bar[0] > 0.99
    if zero_snr:
        assert alpha_bar[-1] == 0.0
    else:
        assert 0 < alpha_bar[-1] < 0.01


def test_zero_terminal_snr_keeps_the_first_step() -> None:
    plain, rescaled = make_betas("linear", 1000), make_betas("linear", 1000, True)
    assert torch.allclose(torch.cumprod(1 - plain, 0)[0], torch.cumprod(1 - rescaled, 0)[0])


def test_eps_x0_v_conversions_agree() -> None:
    schedule = NoiseSchedule(DiffusionConfig(beta_schedule="cosine"))
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 1, 8, 8, generator=gen), torch.randn(6, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    x_t = schedule.q_sample(x0, t, eps)
    v = schedule.v_from_x0_eps(x0, t, eps)
    low = t < 950  # x0 from ε divides by sqrt(ᾱ_t) ≈ 0 near T: fp32 round-off blows up there (v does not)
    assert torch.allclose(schedule.x0_from_eps(x_t, t, eps)[low], x0[low], atol=1e-3)
    assert torch.allclose(schedule.eps_from_x0(x_t, t, x0), eps, atol=1e-3)
    assert torch.allclose(schedule.x0_from_v(x_t, t, v), x0, atol=1e-4)
    assert torch.allclose(schedule.eps_from_v(x_t, t, v), eps, atol=1e-4)


def test_trailing_timesteps_start_at_t_minus_one() -> None:
    assert trailing_timesteps(1000, 4) == [999, 749, 499, 249]
    assert trailing_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        trailing_timesteps(10, 11)


@pytest.mark.parametrize("name, steps, eta", SAMPLER_CASES)
def test_samplers_recover_x0_with_a_point_mass_oracle(name: str, steps: int, eta: float) -> None:
    schedule = NoiseSchedule(DiffusionConfig())
    target = torch.where(
        torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5, 1.0, -1.0
    )
    seen: list[torch.Tensor] = []

    def oracle(x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None) -> torch.Tensor:
        seen.append(x_t)
        return target

    gen = torch.Generator().manual_seed(0)
    sampler = make_sampler(schedule, SamplerConfig(name=name, steps=steps, eta=eta), mask_scale=1.0)
    x0, passes = sampler.sample(oracle, lambda: torch.randn(2, 1, 16, 16, generator=gen))
    assert passes == steps == len(seen)
    assert torch.equal(x0, target)
    # every intermediate x_t must be a plausible q(x_t | x0) draw: implied noise has unit scale
    for index, x_t in zip(range(1, steps), seen[1:], strict=False):
        ab = schedule.alphas_cumprod64[sampler.timesteps[index]].item()
        implied = (x_t - math.sqrt(ab) * target) / math.sqrt(1 - ab)
        assert 0.8 < implied.std().item() < 1.2


@pytest.mark.parametrize("name, steps, eta", SAMPLER_CASES)
@pytest.mark.parametrize(
    "schedule_kw", [{}, {"beta_schedule": "cosine"}, {"zero_terminal_snr": True, "prediction_type": "v"}]
)
def test_samplers_reproduce_a_two_point_distribution_with_its_exact_denoiser(
    name: str, steps: int, eta: float, schedule_kw: dict
) -> None:
    """Pixels are +1 with probability 0.8, else -1; E[x0 | x_t] is known in closed form."""
    schedule = NoiseSchedule(DiffusionConfig(**schedule_kw))
    prior = 0.8

    def oracle(x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None) -> torch.Tensor:
        ab = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        log_odds = math.log(prior / (1 - prior)) + 2 * ab.sqrt() * x_t / (1 - ab)
        return torch.tanh(log_odds / 2)

    gen = torch.Generator().manual_seed(0)
    sampler = make_sampler(schedule, SamplerConfig(name=name, steps=steps, eta=eta), mask_scale=1.0)
    x0, _ = sampler.sample(oracle, lambda: torch.randn(16, 1, 32, 32, generator=gen))
    assert abs((x0 > 0).float().mean().item() - prior) < 0.025
    assert (x0.abs() > 0.9).float().mean().item() > 0.94


def test_high_noise_timestep_sampling_is_biased_towards_large_t() -> None:
    gen = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(DiffusionConfig(), 20000, "cpu", gen).float()
    biased = sample_timesteps(
        DiffusionConfig(timestep_sampling="high_noise", timestep_bias=1.0), 20000, "cpu", gen
    ).float()
    assert abs(uniform.mean().item() - 499.5) < 10
    assert abs(biased.mean().item() - 2 / 3 * 1000) < 10  # density ∝ t
    assert biased.min() >= 0 and biased.max() <= 999


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_min_snr_weights_match_hang_et_al(prediction: str) -> None:
    cfg = DiffusionConfig(prediction_type=prediction, min_snr_gamma=5.0)
    schedule = NoiseSchedule(cfg)
    t = torch.tensor([0, 999])
    snr = schedule.snr[t]
    expected = {"epsilon": snr.clamp(max=5) / snr, "x0": snr.clamp(max=5), "v": snr.clamp(max=5) / (snr + 1)}
    assert torch.allclose(min_snr_weight(schedule, cfg, t), expected[prediction])


def _batch(n: int = 8) -> tuple[torch.Tensor, ...]:
    """``(image, C_k, M_k, foreground, occlusion, layer_index)``: a readable layer mask, half the
    samples with a C_k; the occlusion maps of the two regions as objects (the layer mask in front)."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=gen)
    layer = torch.zeros(n, 64, 64, dtype=torch.uint8)
    cumulative = torch.zeros(n, 64, 64, dtype=torch.uint8)
    for i in range(n):
        layer[i, 8 + i : 30 + i, 10:40] = 1
        cumulative[i, 30:50, 20 + i : 50] = i % 2
    image[layer.bool()] = 255  # the mask is readable from the image
    occlusion = []
    for i in range(n):
        amodal = np.stack([layer[i].numpy() > 0, cumulative[i].numpy() > 0])
        amodal = amodal[amodal.reshape(2, -1).any(1)]
        info = compute_layers(amodal, np.arange(len(amodal)))
        occlusion.append(occlusion_maps(amodal, info.visible_masks, info.object_layer).stacked())
    occlusion = torch.from_numpy(np.stack(occlusion))
    return image, cumulative, layer, layer | cumulative, occlusion, torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize(
    "overrides",
    [
        {"diffusion.prediction_type": "epsilon", "diffusion.bce_weight": 1.0, "diffusion.min_snr_gamma": 5.0},
        {"diffusion.prediction_type": "v", "diffusion.zero_terminal_snr": True, "diffusion.dice_weight": 1.0},
        {"diffusion.prediction_type": "x0", "unet.self_condition": True, "diffusion.self_cond_prob": 1.0},
        {
            "diffusion.mode": "deterministic",
            "diffusion.mse_weight": 0.0,
            "diffusion.use_cumulative_mask": False,
        },
    ],
)
def test_every_objective_gives_a_finite_loss_and_gradients(overrides: dict) -> None:
    torch.manual_seed(0)
    model = SASModel(ModelConfig.preset("tiny-sequential").replace(**overrides))
    loss, logs = model(*_batch(4))
    loss.backward()
    cue_logs = {"cues", "cue/ownership", "cue/boundary", "cue/region", "cue/embedding"}
    assert torch.isfinite(loss) and set(logs) == {"loss", "mse", "bce", "dice", "foreground"} | cue_logs
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_tiny_model_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = SASModel(ModelConfig.preset("tiny-sequential"))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch = _batch(8)
    losses = []
    for _ in range(30):
        loss, _ = model(*batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_foreground_head_adds_its_loss_and_stays_out_of_the_sampler_path() -> None:
    torch.manual_seed(0)
    image, cumulative, layer, foreground, occlusion, k = _batch(4)
    cues = {"occlusion": occlusion, "layer_index": k}
    with_head = SASModel(
        ModelConfig.preset("tiny-sequential").replace(**{"diffusion.foreground_weight": 2.0})
    )
    assert with_head.unet.head.out_channels == 2
    with pytest.raises(ValueError, match="pass foreground=") as info:
        with_head(image, cumulative, layer)
    assert "\n" not in str(info.value)
    torch.nn.init.normal_(with_head.unet.head.weight, std=0.1)  # a head that is not all-zero yet
    torch.manual_seed(1)
    loss, logs = with_head(image, cumulative, layer, foreground, **cues)
    assert logs["foreground"] > 0
    expected = logs["mse"] + logs["bce"] + logs["dice"] + 2.0 * logs["foreground"] + logs["cues"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert with_head.unet.head.weight.grad[1].abs().sum() > 0  # the head's channel is trained
    cond = with_head.condition(image, cumulative)
    x_t, t = torch.zeros(4, 1, 64, 64), torch.full((4,), 999)
    assert with_head.predict_x0(cond, x_t, t).shape == (4, 1, 64, 64)  # samplers see one channel

    without = SASModel(ModelConfig.preset("tiny-sequential").replace(**{"diffusion.foreground_weight": 0.0}))
    assert without.unet.head.out_channels == 1
    _, logs = without(image, cumulative, layer, **cues)  # no foreground needed
    assert logs["foreground"] == 0.0
