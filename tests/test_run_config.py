"""The run configuration: built once, validated once, a dict round trip for the workers, no secrets
in its params, and trials derived with ``replace``."""

from __future__ import annotations

import json

import pytest

from pipelines import train
from pipelines.training.config import RunConfig
from sas_model.config import ModelConfig


def _run(**changes) -> RunConfig:
    return RunConfig(model=ModelConfig.preset("tiny"), data_path="data/x", name="r", **changes).validate()


def test_round_trip_through_a_json_dict_rebuilds_the_same_run():
    run = _run(workers=2, minutes=3.0, mlflow_uri="http://user:secret@mlflow:5000", deadline_unix=12.5)
    data = json.loads(json.dumps(run.to_dict()))  # what a Ray Train worker receives
    assert RunConfig.from_dict(data) == run
    assert run.steps == run.model.train.max_steps and run.per_worker_batch == run.global_batch // 2


def test_params_hold_the_choices_and_no_launch_facts_or_credentials():
    params = _run(mlflow_uri="http://user:secret@mlflow:5000", mlflow_run_id="abc").params()
    assert params["run.workers"] == 1 and params["run.val_free_scenes"] == 64
    assert not any("secret" in str(v) for v in params.values())
    assert "run.mlflow_uri" not in params and "run.deadline_unix" not in params


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workers": 0}, "--workers must be at least 1"),
        ({"workers": 3}, "not divisible by --workers 3"),
        ({"shuffle": "random"}, "--shuffle 'random'"),
        ({"minutes": 0.0}, "--minutes must be positive"),
        ({"keep": 0}, "--keep must be at least 1"),
    ],
)
def test_bad_values_are_refused_with_one_line_naming_the_flag(changes, message):
    with pytest.raises(ValueError, match=message):
        _run(**changes)


def test_trials_derive_their_run_with_replace():
    base = _run(val_every=5)
    trial = base.replace(name="trial-1", model=base.model.replace(**{"train.lr": 1e-3}))
    assert trial.model.train.lr == 1e-3 and trial.val_every == 5 and base.model.train.lr != 1e-3


def _request(*flags: str):
    return train.request_from_args(train.build_parser().parse_args(["--data", "d", *flags]))


def test_train_cli_builds_the_run_once_from_its_flags():
    request = _request("--workers", "2", "--steps", "7", "--val-every", "0", "--set", "train.lr=0.01")
    run = request.run
    assert (run.steps, run.workers, run.val_every, run.model.train.lr) == (7, 2, 0, 0.01)
    assert (run.name, run.storage, run.data_path) == ("sas-tiny", "runs", "d")  # resolved at launch
    assert (request.register, request.register_name, request.preset) == (True, "sas", "tiny")
    assert _request("--no-register", "--name", "x").register is False
    with pytest.raises(train.UserError, match="not divisible"):
        _request("--workers", "3")


def test_every_train_and_tune_flag_default_has_one_home():
    from pipelines import tune
    from pipelines.cli.flags import flag_fields, mismatched_defaults
    from pipelines.training.config import TrainRequest
    from pipelines.tuning.request import TuneRequest

    assert mismatched_defaults(train.build_parser(), RunConfig, TrainRequest) == []
    assert mismatched_defaults(tune.build_parser(), TuneRequest) == []
    defaults = vars(train.build_parser().parse_args(["--data", "d"]))
    for f in flag_fields(RunConfig) + flag_fields(TrainRequest):
        if f.name in ("val_every", "ckpt_every"):  # None: the preset's cadence (tested below)
            continue
        assert defaults[f.name] == getattr(_request(), f.name, getattr(_request().run, f.name, None)), f.name


@pytest.mark.parametrize("flag", ["--keep", "--ckpt-every", "--log-every", "--max-bad-steps"])
def test_train_cli_rejects_zero_counts_instead_of_clamping_them(flag):
    with pytest.raises(train.UserError, match=f"{flag} must be at least 1"):
        _request(flag, "0")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--reduction", "1"], "--reduction must be above 1"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
def test_tune_cli_refuses_bad_values_with_one_line(flags, message):
    from pipelines import tune

    with pytest.raises(train.UserError, match=message):
        tune.request_from_args(tune.build_parser().parse_args(["--data", "d", *flags]))


def test_a_search_refuses_fewer_trials_than_its_grid():
    from pipelines import tune
    from pipelines.tuning.search import make_plan

    def request(trials: str):
        return tune.request_from_args(tune.build_parser().parse_args(["--data", "d", "--trials", trials]))

    space = {"diffusion.beta_schedule": {"grid": ["linear", "cosine"]}}
    plan = make_plan(request("5"), space, 100)
    assert (plan.grid, plan.num_samples, plan.trials, plan.val_every) == (2, 2, 4, 20)
    with pytest.raises(train.UserError, match="below the grid size 2"):
        make_plan(request("1"), space, 100)


def test_model_config_is_the_one_builder_of_a_runs_model(tmp_path):
    from pipelines.training.config import model_config

    cfg = model_config("tiny", {"train.lr": 1e-3}, steps=7, batch=8)
    assert (cfg.train.lr, cfg.train.steps, cfg.train.batch_size) == (1e-3, 7, 8)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert model_config(str(path)).to_dict() == cfg.to_dict()
    with pytest.raises(train.UserError, match="does not exist"):
        model_config(str(tmp_path / "missing.json"))
    with pytest.raises(train.UserError, match=r"bad config \(tiny\)"):
        model_config("tiny", {"train.lr": -1.0})


def test_validation_and_checkpoint_cadence_is_the_presets_unless_given():
    from pipelines.training.config import CADENCE

    for preset in ("tiny", "small", "paper"):
        run = RunConfig(model=ModelConfig.preset(preset), data_path="d", name="r")
        assert run.val_every == run.ckpt_every == CADENCE[preset]
    assert (_request().run.val_every, _request("--preset", "paper").run.ckpt_every) == (250, 5000)
    assert _request("--val-every", "0", "--ckpt-every", "7").run.val_every == 0
    assert _request("--ckpt-every", "7").run.ckpt_every == 7


def test_a_search_saved_with_retired_config_keys_still_resumes(tmp_path):
    from pipelines.tuning.search import SEARCH_STATE_FILE, check_resume

    config = ModelConfig.preset("tiny").to_dict()
    old = json.loads(json.dumps(config))
    old["train"].update(val_every=250, ckpt_every=250, seed=0)  # what a search saved before #28 holds
    state = {"space": {"a": 1}, "base_config": config, "trials": 2}
    (tmp_path / SEARCH_STATE_FILE).write_text(json.dumps({**state, "base_config": old}))
    assert check_resume(str(tmp_path), state) is True
    with pytest.raises(train.UserError, match="another trials"):
        check_resume(str(tmp_path), {**state, "trials": 3})
