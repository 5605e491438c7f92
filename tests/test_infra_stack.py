"""The local service stack (``infra/stack.py``) end to end on loopback.

One stack per module (S3 + MLflow server + Ray head with token auth, free ports, its own state dir),
always torn down by PID at the end. What is pinned down:

- ``up`` prints the URLs and is idempotent, ``status`` sees every service, all servers listen on
  127.0.0.1 only, ``down`` leaves none of the stack's processes;
- the jobs API refuses a submission without the token (HTTP 401, CLI error);
- an S3-backed training job (``ray job submit``: data and checkpoints on ``s3://``, MLflow server
  with S3 artifacts) succeeds, and no secret value appears in its logs, MLflow params/tags or
  artifacts, or the stack's own logs;
- a corrupt newest checkpoint: the rerun resumes from the previous one;
- the MLflow server down during training: rank 0's logger neither raises nor stalls, buffers the
  metrics and sends them once the server is back (``stack up`` restarts only MLflow).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from infra_support import (
    client_env,
    leaked,
    new_state_dir,
    run_stack,
    stack,
    stack_down,
    stack_up,
    submit,
    write_s3_dataset,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(900)]
UP_ARGS = (
    "--num-cpus",
    "2",
    "--s3-port",
    "0",
    "--mlflow-port",
    "0",
    "--ray-port",
    "0",
    "--dashboard-port",
    "0",
)


@pytest.fixture(scope="module")
def live(request):
    state_dir = new_state_dir()
    failed_before = request.session.testsfailed
    try:
        info = stack_up(state_dir, "--num-cpus", "2")
        info["state_dir"] = state_dir
        info["secrets"] = stack.secret_values(state_dir)
        yield info
    finally:
        state = stack.load_state(state_dir)
        stack_down(state_dir, keep=request.session.testsfailed > failed_before)
        left = [pid for record in state.get("services", {}).values() for pid in stack._ours(record)]
        assert not left, f"processes left after down: {left}"


def test_up_is_idempotent_prints_urls_and_listens_on_loopback_only(live):
    for url in live["urls"].values():
        assert url.split("//")[-1] in live["up_output"]
    again = run_stack(live["state_dir"], "up", *UP_ARGS)
    again_ray = again.stdout.count("already running")
    assert again.returncode == 0 and again_ray == 3, again.stdout + again.stderr
    status = run_stack(live["state_dir"], "status")
    assert status.returncode == 0, status.stdout + status.stderr
    addresses = []
    for name, record in live["state"]["services"].items():
        found = stack.listening(stack._ours(record))
        assert found, f"{name} listens nowhere"
        addresses += found
    hosts = {a.rsplit(":", 1)[0] for a in addresses}
    assert hosts <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, hosts
    texts = {"up": live["up_output"], "up again": again.stdout + again.stderr, "status": status.stdout}
    texts["env"] = run_stack(live["state_dir"], "env").stdout
    assert not leaked(live["secrets"], texts)
    for name in ("credentials", "ray_auth_token"):
        assert (live["state_dir"] / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"


def test_job_submission_without_the_token_is_refused(live, tmp_path):
    request = urllib.request.Request(
        live["urls"]["ray_dashboard"] + "/api/jobs/",
        data=json.dumps({"entrypoint": "echo hi"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    for override in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN_PATH": str(wrong)}):
        env = {**live["env"], **override}
        done = submit(env, "echo", "should-not-run", timeout=180)
        assert done.returncode != 0 and "should-not-run" not in done.stdout
        assert "Authentication" in done.stdout + done.stderr or "Unauthorized" in done.stdout + done.stderr


def _train(live, *extra: str):
    return submit(
        live["env"],
        "python",
        "pipelines/train.py",
        "--data",
        "s3://sas-data/shapes",
        "--storage",
        "s3://sas-runs/runs",
        "--name",
        "stack-run",
        "--workers",
        "2",
        "--batch",
        "4",
        "--ckpt-every",
        "1",
        "--val-every",
        "0",
        "--log-every",
        "1",
        "--cache",
        "off",
        "--no-register",
        *extra,
    )


def _s3(live):
    import boto3

    key, secret = stack.s3_credentials(live["state_dir"])
    return boto3.client(
        "s3", endpoint_url=live["urls"]["s3"], aws_access_key_id=key, aws_secret_access_key=secret
    )


@pytest.mark.timeout(1800)  # two Ray Train jobs: minutes on a busy 2-core machine
def test_s3_backed_job_leaks_no_secret_and_resume_skips_a_corrupt_checkpoint(live, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    for key, value in live["env"].items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    write_s3_dataset("s3://sas-data/shapes", live["urls"]["s3"], n=24, shard_size=12)

    first = _train(live, "--steps", "2")
    log1 = first.stdout + first.stderr
    assert first.returncode == 0 and "[train] done" in log1, log1[-4000:]

    s3 = _s3(live)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sas-runs", Prefix="runs/stack-run/")["Contents"]]
    folders = {k.split("/")[2] for k in keys if k.count("/") >= 3}  # not checkpoint_manager_snapshot.json
    checkpoints = sorted(name for name in folders if name.startswith("checkpoint_"))
    assert len(checkpoints) == 2, checkpoints  # steps 1 and 2
    newest = f"runs/stack-run/{checkpoints[-1]}/model.safetensors"
    s3.put_object(Bucket="sas-runs", Key=newest, Body=b"not a safetensors file")

    second = _train(live, "--steps", "3")
    log2 = second.stdout + second.stderr
    assert second.returncode == 0, log2[-4000:]
    assert f"{checkpoints[-1]} unreadable" in log2
    assert "[train] resumed from step 1" in log2  # the previous checkpoint, not a fresh start
    assert '"step": 3' in log2

    client = MlflowClient(live["urls"]["mlflow"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("sas").experiment_id], "attributes.run_name = 'stack-run'"
    )
    texts: dict[str, bytes | str] = {"job 1": log1, "job 2": log2}
    texts["params"] = json.dumps(run.data.params)
    texts["tags"] = json.dumps(run.data.tags)
    artifacts = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, dst_path=str(tmp_path / "a"), tracking_uri=live["urls"]["mlflow"]
        )
    )
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert files and any(p.name == "config.json" for p in files)
    texts.update({str(p): p.read_bytes() for p in files})
    texts.update({str(p): p.read_bytes() for p in (live["state_dir"] / "logs").iterdir()})
    assert not leaked(live["secrets"], texts)
    artifact_objects = s3.list_objects_v2(Bucket="sas-mlflow", Prefix="artifacts/")
    assert artifact_objects.get("KeyCount", 0) > 0  # the server stores artifacts in the S3 store


def test_mlflow_server_down_during_training_buffers_metrics_and_sends_them_later(live):
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.store import setup_mlflow
    from pipelines.training.worker_log import RankZeroLogger

    uri = live["urls"]["mlflow"]
    experiment_id = setup_mlflow(uri, "outage")
    run_id = MlflowClient(uri).create_run(experiment_id).info.run_id
    logger = RankZeroLogger(uri, run_id, enabled=True)
    logger.metrics(1, {"train/loss": 1.0})

    assert stack._stop(live["state"]["services"]["mlflow"]) > 0  # the server goes down
    started = time.monotonic()
    for step in (2, 3, 4):
        logger.metrics(step, {"train/loss": float(5 - step)})
    assert time.monotonic() - started < 30, "logging must not stall training while MLflow is down"
    assert len(logger._pending) == 3

    back = run_stack(live["state_dir"], "up", *UP_ARGS)
    assert back.returncode == 0 and "mlflow: started" in back.stdout, back.stdout + back.stderr
    assert back.stdout.count("already running") == 2  # S3 and Ray were left alone
    live["state"] = stack.load_state(live["state_dir"])
    logger.metrics(5, {"train/loss": 0.5})
    logger.close()
    history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3, 4, 5]
    assert client_env(live["state_dir"])["MLFLOW_TRACKING_URI"] == uri
