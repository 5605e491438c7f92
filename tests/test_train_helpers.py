"""Fast checks of the training pipeline's helpers: CLI parsing, LR schedule, EMA, champion policy."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.cli.args import parse_override
from pipelines.tracking.store import default_artifact_location, resolve_mlflow_uri, setup_mlflow
from pipelines.training.optim import EMA, TrainerState, load_trainer_state, lr_at, save_trainer_state
from pipelines.training.trainer import cpus_per_worker
from synth import ray_runtime
from synth.cli import fail, parse_number, parse_positive_float

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "value"), [("1e5", 100_000), ("250", 250), ("10_000", 10_000), ("2.5e3", 2500)]
)
def test_parse_number_accepts_scientific_counts(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["1.5", "-3", "abc", "1e-3", "1e9999", "inf", "nan"])
def test_parse_number_rejects_non_counts(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_number(text)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "inf", "nan", "1e9999"])
def test_parse_positive_float_rejects_what_is_not_a_finite_positive_number(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_positive_float(text)
    assert parse_positive_float("0.5") == 0.5


def test_parse_override_types_values():
    assert parse_override("train.lr=3e-4") == ("train.lr", 3e-4)
    assert parse_override("train.steps=1e5") == ("train.steps", 100_000)
    assert parse_override("unet.channel_mult=1,2,2") == ("unet.channel_mult", [1, 2, 2])
    assert parse_override("sampler.kind=ddim") == ("sampler.kind", "ddim")
    assert parse_override("train.amp=false") == ("train.amp", False)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_override("no-equals-sign")


def test_fail_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        fail("dataset missing:\n  /nowhere")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: dataset missing: /nowhere\n"


def test_cluster_mode_follows_ray_address_and_job_env(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert not ray_runtime.cluster_mode()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert ray_runtime.cluster_mode() and ray_runtime.in_ray_job()
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert ray_runtime.cluster_mode() and not ray_runtime.in_ray_job()


def test_mlflow_uri_defaults_to_local_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_mlflow_uri(None, base_dir=tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert default_artifact_location(uri) == (tmp_path / "mlruns" / "artifacts").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5055")
    assert resolve_mlflow_uri(None) == "http://127.0.0.1:5055"
    assert resolve_mlflow_uri("http://other:1") == "http://other:1"


def test_lr_warms_up_linearly_then_decays_by_cosine():
    base, warmup, total = 1e-3, 10, 110
    assert lr_at(0, base, warmup, total) == pytest.approx(base / 10)
    assert lr_at(9, base, warmup, total) == pytest.approx(base)
    assert lr_at(60, base, warmup, total) == pytest.approx(base * (0.1 + 0.9 * 0.5))
    assert lr_at(110, base, warmup, total) == pytest.approx(0.1 * base)
    assert lr_at(500, base, warmup, total) == pytest.approx(0.1 * base)
    values = [lr_at(s, base, warmup, total) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_ema_tracks_parameters_and_round_trips(tmp_path):
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.shadow["weight"].clone()
    ema.update(model)
    decay = min(0.5, 2 / 11)
    expected = before * decay + model.weight.detach() * (1 - decay)
    assert torch.allclose(ema.shadow["weight"], expected)
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(ema.state_dict())
    assert torch.allclose(fresh.weight, ema.shadow["weight"])

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_trainer_state(tmp_path, TrainerState(step=7, epoch=2, samples_seen=99), optimizer)
    optimizer2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    state = load_trainer_state(tmp_path, optimizer2)
    assert (state.step, state.epoch, state.samples_seen) == (7, 2, 99)
    assert optimizer2.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_workers_get_fractional_cpus_on_two_cores():
    assert cpus_per_worker(2, 1, False) == 1.0
    assert cpus_per_worker(2, 2, False) == 0.5
    assert cpus_per_worker(16, 4, False) == 1.0
    assert math.isclose(cpus_per_worker(1, 2, False), 0.25)


def test_champion_alias_moves_only_when_metric_improves(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    setup_mlflow(f"sqlite:///{tmp_path}/mlflow.db", "alias-test")
    client = MlflowClient()
    client.create_registered_model("m")
    source = tmp_path / "model"
    source.mkdir()

    def new_version(metric):
        version = client.create_model_version("m", str(source)).version
        client.set_model_version_tag("m", version, "val_metric", repr(metric))
        return version

    v1 = new_version(0.5)
    assert registry.update_champion("m", v1, 0.5, "better")[0]
    v2 = new_version(0.4)
    moved, reason = registry.update_champion("m", v2, 0.4, "better")
    assert not moved and "does not beat" in reason
    assert client.get_model_version_by_alias("m", "champion").version == v1
    v3 = new_version(0.7)
    assert registry.update_champion("m", v3, 0.7, "better")[0]
    assert not registry.update_champion("m", v2, 0.4, "never")[0]
    assert registry.update_champion("m", v2, 0.4, "always")[0]
    assert client.get_model_version_by_alias("m", "champion").version == v2
    mlflow.set_tracking_uri(None)


def test_train_cli_help_runs_without_ray():
    out = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--alias-policy" in out.stdout and "ray job submit" in out.stdout


def test_schedule_step_follows_the_wall_clock_budget_when_it_runs_ahead() -> None:
    import time

    from pipelines.training.worker import schedule_step

    now = time.time()
    assert schedule_step(10, 1000, now, None) == 10  # no budget: the step count
    assert schedule_step(10, 1000, now - 50, now + 50) == 500  # half the time gone: half the schedule
    assert schedule_step(900, 1000, now - 50, now + 50) == 900  # steps ahead of the clock win
    assert schedule_step(10, 1000, now - 500, now - 1) == 1000  # past the deadline: the floor


def test_validation_samples_cheaply_whatever_the_preset():
    from pipelines.training.validate import validation_sampler
    from sas_model.config import ModelConfig

    assert validation_sampler(ModelConfig.preset("tiny").sampler) == {}  # DDIM-5: as it is
    assert validation_sampler(ModelConfig.preset("paper").sampler) == {
        "name": "ddim",
        "steps": 25,
        "eta": 0.0,
    }


class _Toy(torch.nn.Module):
    """A model with the SASModel forward signature: loss = mean((w * image)^2)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, image, cumulative_mask, layer_mask, foreground, occlusion, layer_index):
        return (self.w * image.float()).pow(2).mean(), {"toy": 1.0}


def _toy_batch() -> dict[str, torch.Tensor]:
    from pipelines.training.optim import MODEL_INPUTS

    return {name: torch.ones(2, 4, 4) for name in MODEL_INPUTS}


def test_train_step_updates_model_and_ema_and_skips_non_finite_losses():
    from pipelines.training.optim import TrainStep, make_optimizer

    model = _Toy()
    ema = EMA(model, 0.5)
    step = TrainStep(model, make_optimizer(model, 0.1, 0.0), ema, torch.device("cpu"), "fp32", 1.0)
    result = step(_toy_batch(), lr=0.1)
    assert result.finite and result.logs == {"toy": 1.0} and float(result.loss) == 1.0
    assert float(model.w.detach()) < 1.0 and ema.num_updates == 1  # AdamW moved w; the EMA followed
    before = float(model.w.detach())
    skipped = step(_toy_batch(), lr=0.1, poison=True)
    assert not skipped.finite and float(model.w.detach()) == before and ema.num_updates == 1
    assert step.optimizer.param_groups[0]["lr"] == 0.1 and step.precision_label() == "fp32"


def test_bad_step_policy_aborts_after_max_in_a_row_and_meter_skips_the_start_up_window():
    from pipelines.training.worker import BadSteps, ThroughputMeter

    bad = BadSteps(3)
    assert bad.skipped(5, rank=1) == "" and bad.skipped(5, rank=1) == ""
    assert "3 steps in a row at step 5" in bad.skipped(5, rank=1)
    meter = ThroughputMeter()
    meter.step(2.0, 32)
    meter.step(4.0, 32)
    first = meter.close(lr=0.1, grad_norm=1.0, epoch=0)
    assert first["train/loss"] == 3.0 and meter.steady()["steady_samples_per_s"] is None
    meter.step(1.0, 32)
    meter.close(lr=0.1, grad_norm=1.0, epoch=0)
    assert meter.steady()["steady_samples_per_s"] > 0  # only windows after the first count


def test_the_step_plan_logs_validates_checkpoints_and_stops_on_schedule():
    from pipelines.training.worker import plan_step

    plans = {s: plan_step(s, 10, log_every=2, val_every=4, ckpt_every=5) for s in range(1, 11)}
    assert [s for s, p in plans.items() if p.log] == [2, 4, 6, 8, 10]
    assert [s for s, p in plans.items() if p.validate] == [4, 8, 10]  # and at the end
    assert [s for s, p in plans.items() if p.checkpoint] == [5, 10]
    assert [s for s, p in plans.items() if p.report] == [4, 5, 8, 10]  # the same steps on every rank
    assert [s for s, p in plans.items() if p.stop] == [10]
    early = plan_step(3, 10, log_every=2, val_every=0, ckpt_every=5, out_of_time=True)
    assert early.stop and early.checkpoint and early.log and not early.validate  # validation off
    notice = plan_step(3, 10, log_every=2, val_every=4, ckpt_every=5, preempted=True)
    assert notice.checkpoint and notice.report and not notice.stop
