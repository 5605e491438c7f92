"""The schedule search's space: default, file and flag overrides, the zero-SNR rule, and the one-line
rejection of invalid spaces before Ray starts (no Ray in this module)."""

from __future__ import annotations

import json

import pytest

from pipelines.tuning import space as tune_space
from sas_model.config import ModelConfig

TINY = ModelConfig.preset("tiny").to_dict()


def test_default_space_is_valid_and_grids_every_schedule():
    space = tune_space.build_space()
    assert space["diffusion.beta_schedule"] == {"grid": ["linear", "cosine", "sigmoid", "scaled_linear"]}
    assert tune_space.grid_size(space) == 4
    assert tune_space.check_space(space, TINY) > 4  # every discrete combination validated


def test_flags_override_file_and_file_overrides_default(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("sampler.steps: [2, 4]\ntrain.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    space = tune_space.build_space(
        str(path),
        [
            "sampler.steps=grid:3,6",
            "sampler.name=",
            "diffusion.num_timesteps=500",
            "train.lr=uniform:1e-4,2e-4",
        ],
    )
    assert space["sampler.steps"] == {"grid": [3, 6]}
    assert "sampler.name" not in space  # dropped: the preset's value is used
    assert space["diffusion.num_timesteps"] == {"fixed": 500}
    assert space["train.lr"] == {"uniform": [1e-4, 2e-4]}
    json_path = tmp_path / "space.json"
    json_path.write_text(json.dumps({"diffusion.beta_schedule": ["cosine", "sigmoid"]}))
    only = tune_space.build_space(str(json_path), default=False)
    assert only == {"diffusion.beta_schedule": {"choice": ["cosine", "sigmoid"]}}


def test_zero_snr_trials_never_use_epsilon():
    drawn = {"diffusion.zero_terminal_snr": True, "diffusion.prediction_type": "epsilon"}
    assert tune_space.effective_params(drawn, ["x0", "v", "epsilon"])["diffusion.prediction_type"] == "v"
    assert tune_space.effective_params(drawn, ["epsilon", "x0"])["diffusion.prediction_type"] == "x0"
    cfg = tune_space.trial_config(TINY, drawn, ["v", "epsilon"])
    assert cfg.diffusion.zero_terminal_snr and cfg.diffusion.prediction_type == "v"
    off = {"diffusion.zero_terminal_snr": False, "diffusion.prediction_type": "epsilon"}
    assert tune_space.trial_config(TINY, off, ["v", "epsilon"]).diffusion.prediction_type == "epsilon"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["diffusion.beta_schedule=grid:linear,quadratic"], "unknown diffusion.beta_schedule 'quadratic'"),
        (
            ["diffusion.zero_terminal_snr=true", "diffusion.prediction_type=epsilon"],
            "zero_terminal_snr=true needs v- or x0-prediction",
        ),
        (
            ["diffusion.num_timesteps=10,1000", "sampler.steps=5,20"],
            "sampler.steps must be in 1..10 (num_timesteps), got 20",
        ),
        (["diffusion.noise_level=0.5"], "unknown config key 'diffusion.noise_level'"),
        (["train.lr=loguniform:0,1e-3"], "loguniform needs [low, high]"),
        (["sampler.name=grid:"], "grid needs a non-empty list"),
    ],
)
def test_invalid_space_is_rejected_with_one_line(flags, message):
    with pytest.raises(tune_space.SpaceError) as info:
        tune_space.check_space(tune_space.build_space(flags=flags), TINY)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_cli_rejects_invalid_space_before_ray_starts(tmp_path, capsys):
    import ray

    from pipelines.tune import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"diffusion.beta_schedule": {"grid": ["linear", "warp"]}}))
    cases = [
        ["--space", str(bad)],
        ["--search", "diffusion.zero_terminal_snr=true", "--search", "diffusion.prediction_type=epsilon"],
        ["--search", "diffusion.num_timesteps=8", "--search", "sampler.steps=16"],
        ["--space", str(tmp_path / "missing.yaml")],
        ["--trials", "2"],  # the default grid has 4 schedules
    ]
    for extra in cases:
        with pytest.raises(SystemExit) as info:
            main(["--data", str(tmp_path / "no-data-needed"), "--storage", str(tmp_path / "runs"), *extra])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists()  # nothing written before the space is accepted
