"""End to end on local Ray: a 2-trial `tiny` schedule search (each trial a Ray Train run) that is
interrupted after its first trial, resumed by rerunning the same command, reported (table, plot,
best preset) and tracked in MLflow (parent + child runs); then `train.py` trains the best preset.

The tests share one local Ray (or the cluster named by ``RAY_ADDRESS``) and one MLflow store and run
in file order.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from train_support import make_dataset

pytestmark = pytest.mark.slow

NAME = "tiny-search"
SEARCH = [
    "--no-default-space",
    "--search",
    "diffusion.beta_schedule=grid:linear,cosine",
    "--search",
    "sampler.steps=2",
    "--set",
    "sampler.ensemble_size=2",
    "--trials",
    "2",
    "--max-steps",
    "4",
    "--val-every",
    "2",
    "--val-scenes",
    "4",
    "--val-free-scenes",
    "2",
    "--name",
    NAME,
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("tune")
    data = make_dataset(root / "data", n=48, shard_size=24)
    (root / "mlruns").mkdir()
    if os.environ.get("RAY_ADDRESS"):  # a running cluster (same machine: the paths are local)
        ray.init(logging_level="WARNING")
    else:
        ray.init(address="local", num_cpus=2, logging_level="WARNING")
    yield {
        "root": root,
        "data": str(data),
        "storage": str(root / "runs"),
        "mlflow_uri": f"sqlite:///{root}/mlruns/mlflow.db",
    }
    ray.shutdown()
    import mlflow

    mlflow.set_tracking_uri(None)


def _tune(env, *extra: str) -> int:
    from pipelines.tune import main

    common = ["--data", env["data"], "--storage", env["storage"], "--mlflow-uri", env["mlflow_uri"]]
    return main([*common, *SEARCH, *extra])


def _runs(env):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["mlflow_uri"])
    experiment = client.get_experiment_by_name("sas")
    return client, client.search_runs([experiment.experiment_id])


def test_interrupted_search_resumes_without_retraining_finished_trials(env):
    assert _tune(env, "--interrupt-after", "1") == 3  # as if Ctrl+C after the first trial
    client, runs = _runs(env)
    trials = [r for r in runs if r.data.tags.get("sas.tune_trial")]
    history = {
        r.info.run_id: [int(m.value) for m in client.get_metric_history(r.info.run_id, "step")]
        for r in trials
    }
    finished = [r for r in trials if history[r.info.run_id] == [2, 4]]
    assert len(finished) == 1 and len(trials) <= 2
    first = finished[0]
    steps_before = history[first.info.run_id]

    assert _tune(env) == 0  # the same command resumes the search
    client, runs = _runs(env)
    parent = next(r for r in runs if r.info.run_name == NAME)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and parent.info.status == "FINISHED"
    assert {c.data.params["tune.diffusion.beta_schedule"] for c in children} == {"linear", "cosine"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["sas.tune_status"] in ("completed", "stopped_early")
        assert "val/miou_free" in child.data.metrics and "val/unet_passes" in child.data.metrics
    again = [int(m.value) for m in client.get_metric_history(first.info.run_id, "step")]
    assert again == steps_before, "the finished trial was not trained again"
    assert {"best/val/miou_free", "trials/completed"} <= set(parent.data.metrics)
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    expected = {"trials.csv", "trials.md", "schedules.md", "miou_vs_steps.png", "best_preset.json"}
    assert {f"report/{name}" for name in expected} <= report


def test_report_table_and_best_preset(env):
    from sas_model.config import ModelConfig

    out = Path(env["storage"]) / NAME / "report"
    with open(out / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["rank"] for row in rows] == ["1", "2"]
    assert {row["schedule"] for row in rows} == {"linear", "cosine"}
    assert all(row["sampler_steps"] == "2" and row["trained_steps"] in ("2", "4") for row in rows)
    assert (out / "miou_vs_steps.png").read_bytes()[:4] == b"\x89PNG"
    best = json.loads((out / "best_trial.json").read_text())
    assert best["best_trial"] == rows[0]["trial"]
    preset = ModelConfig.load(out / "best_preset.json").validate()
    assert preset.name == f"tuned-{NAME}"
    assert preset.diffusion.beta_schedule == rows[0]["schedule"]
    assert preset.sampler.steps == 2 and preset.sampler.ensemble_size == 2
    assert preset.train.max_steps == ModelConfig.preset("tiny").train.max_steps  # the recipe, not the budget


def test_train_py_accepts_the_best_preset(env):
    from pipelines.train import main as train_main

    preset = Path(env["storage"]) / NAME / "report" / "best_preset.json"
    common = ["--storage", str(Path(env["root"]) / "train"), "--mlflow-uri", env["mlflow_uri"]]
    args = ["--data", env["data"], "--preset", str(preset), "--steps", "2", "--val-every", "0"]
    assert train_main([*args, "--no-register", *common]) == 0
