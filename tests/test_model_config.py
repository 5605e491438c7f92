"""ModelConfig: presets, JSON round trip, dotted overrides, one-line validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sas_model.config import ModelConfig
from sas_model.model import SASModel


@pytest.mark.parametrize("name", ["tiny", "small", "paper"])
def test_presets_validate_and_round_trip_through_json(name: str) -> None:
    cfg = ModelConfig.preset(name).validate()
    text = cfg.to_json()
    assert json.loads(text)["name"] == name
    assert ModelConfig.from_json(text) == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_paper_preset_is_the_reference_protocol_with_about_83m_parameters() -> None:
    cfg = ModelConfig.preset("paper")
    assert (cfg.image_size, cfg.unet.base_channels, cfg.unet.channel_mults) == (64, 128, (1, 2, 3, 4))
    assert cfg.unet.attention_resolutions == (16,) and cfg.unet.num_res_blocks == 2
    assert (cfg.diffusion.num_timesteps, cfg.diffusion.beta_schedule, cfg.diffusion.prediction_type) == (
        1000,
        "linear",
        "epsilon",
    )
    s = cfg.sampler
    assert (s.name, s.steps, s.ensemble_size, s.threshold, s.min_foreground, s.consensus, s.max_layers) == (
        "ddpm",
        1000,
        3,
        0.5,
        0.0025,
        "medoid",
        6,
    )
    assert s.merge_disconnected and cfg.train.batch_size == 256 and cfg.train.ema_decay == 0.9999
    with torch.device("meta"):
        params = SASModel(cfg).num_parameters()
    assert 82e6 < params < 84e6


def test_json_round_trip_gives_identical_model_outputs(tmp_path) -> None:
    cfg = ModelConfig.preset("tiny").replace(**{"unet.self_condition": True})
    cfg.save(tmp_path / "config.json")
    loaded = ModelConfig.load(tmp_path / "config.json")
    torch.manual_seed(0)
    a = SASModel(cfg).eval()
    torch.manual_seed(0)
    b = SASModel(loaded).eval()
    image, empty = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8), torch.zeros(2, 64, 64)
    cond = a.condition(image, empty, empty)  # tiny completes layers: C_k and the visible part
    x_t, t = torch.randn(2, 1, 64, 64), torch.tensor([3, 900])
    for p in a.parameters():  # zero-initialised heads would make the comparison trivial
        p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    for p in b.parameters():
        p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    assert torch.equal(a.predict_x0(cond, x_t, t), b.predict_x0(cond, x_t, t))


def test_replace_takes_dotted_overrides_and_coerces_cli_strings() -> None:
    cfg = ModelConfig.preset("tiny").replace(
        **{
            "diffusion.beta_schedule": "cosine",
            "sampler.steps": "20",
            "unet.channel_mults": "1,2,4",
            "diffusion.min_snr_gamma": "5",
            "train.hflip": "false",
            "train.steps": 77,
        }
    )
    assert cfg.diffusion.beta_schedule == "cosine" and cfg.sampler.steps == 20
    assert cfg.unet.channel_mults == (1, 2, 4) and cfg.diffusion.min_snr_gamma == 5.0
    assert cfg.train.hflip is False and cfg.train.hflip_p == 0.0
    assert cfg.train.max_steps == cfg.train.steps == 77
    assert ModelConfig.preset("tiny").diffusion.beta_schedule == "linear"  # the original is untouched


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"diffusion.zero_terminal_snr": True, "diffusion.prediction_type": "epsilon"}, "zero_terminal_snr"),
        ({"sampler.steps": 1001}, "sampler.steps"),
        ({"diffusion.beta_schedule": "quadratic"}, "beta_schedule"),
        ({"diffusion.prediction_type": "score"}, "prediction_type"),
        ({"sampler.name": "euler"}, "sampler.name"),
        ({"sampler.consensus": "mean"}, "consensus"),
        ({"train.precision": "fp8"}, "train.precision"),
        ({"sampler.precision": "half"}, "sampler.precision"),
        ({"unet.stem_stride": 4}, "stem_stride"),
        ({"image_size": 60}, "divisible"),
        ({"unet.attention_resolutions": (7,)}, "attention_resolutions"),
        ({"diffusion.mse_weight": 0, "diffusion.bce_weight": 0, "diffusion.dice_weight": 0}, "loss weights"),
    ],
)
def test_validate_rejects_bad_combinations_with_one_line_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ModelConfig.preset("tiny").replace(**overrides).validate()
    assert "\n" not in str(info.value)


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown config key 'diffusion.nope'"):
        ModelConfig.preset("tiny").replace(**{"diffusion.nope": 1})
    with pytest.raises(ValueError, match="unknown config key"):
        ModelConfig.from_dict({"unet": {"channels": 3}})
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("huge")


RETIRED = {"val_every": 250, "ckpt_every": 250, "seed": 7}  # run settings TrainConfig once held


def test_configs_written_with_the_retired_run_settings_still_load(tmp_path) -> None:
    old = ModelConfig.preset("tiny").to_dict()
    old["train"].update(RETIRED)
    assert ModelConfig.from_dict(old) == ModelConfig.preset("tiny")
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert ModelConfig.load(tmp_path / "config.json") == ModelConfig.preset("tiny")
    assert old["train"]["seed"] == 7  # the caller's dict is left as it was
    assert not set(RETIRED) & set(ModelConfig.preset("tiny").to_dict()["train"])


def test_the_shipped_model_config_loads_unchanged() -> None:
    path = Path(__file__).resolve().parents[1] / "models" / "pretrained" / "config.json"
    cfg = ModelConfig.load(path).validate()
    saved = json.loads(path.read_text())
    assert cfg.name == saved["name"] and cfg.train.lr == saved["train"]["lr"]
    assert cfg.to_dict()["train"] == {k: v for k, v in saved["train"].items() if k not in RETIRED}


@pytest.mark.parametrize(
    "key, flag", [("val_every", "--val-every"), ("ckpt_every", "--ckpt-every"), ("seed", "--seed")]
)
def test_setting_a_retired_run_setting_names_the_run_flag(key: str, flag: str) -> None:
    with pytest.raises(ValueError, match=f"'train.{key}' is a run setting now.*{flag}") as info:
        ModelConfig.preset("tiny").replace(**{f"train.{key}": 1})
    assert "\n" not in str(info.value)


def test_v_prediction_with_zero_terminal_snr_is_accepted() -> None:
    ModelConfig.preset("tiny").replace(
        **{"diffusion.zero_terminal_snr": True, "diffusion.prediction_type": "v"}
    ).validate()


def test_precision_resolves_per_device_and_cpu_flags(tmp_path) -> None:
    from sas_model.precision import autocast_dtype, cpu_has_native_bf16

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        autocast_dtype(cpu, "fp16")
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("processor : 0\nflags : fpu sse2 avx512f avx512_bf16\n")
    without.write_text("processor : 0\nflags : fpu sse2 avx2\n")
    assert cpu_has_native_bf16(str(with_bf16)) and not cpu_has_native_bf16(str(without))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert autocast_dtype(cpu, "auto") == expected
