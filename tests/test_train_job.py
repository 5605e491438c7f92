"""`ray job submit --working-dir . -- python pipelines/train.py ...` against a real local Ray head.

The test starts its own head on 127.0.0.1 (free ports, its own temp dir, auth disabled), submits the
training job through the Jobs API, checks that the workers ran the code shipped in the job's working
dir and that the run checkpointed, then stops the head by process group (SIGTERM, SIGKILL fallback).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from train_support import free_port, make_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _stop_group(process: subprocess.Popen, grace_s: float = 5) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:  # daemons of the group (gcs_server, raylet, ...) can outlive the `ray start --block` parent
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@pytest.fixture()
def ray_head(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="sas-head-")  # short: Ray's socket paths must stay < 108 chars
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TMPDIR": temp_dir,
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    env.pop("RAY_ADDRESS", None)
    ports = {
        name: free_port()
        for name in (
            "port",
            "dashboard-port",
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "node-manager-port",
            "object-manager-port",
        )
    }
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        "--disable-usage-stats",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        *[f"--{name}={port}" for name, port in ports.items()],
    ]
    log = open(tmp_path / "head.log", "wb")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.time() + 90
        while True:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{dashboard}/api/version", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "Ray head did not answer in 90 s"
            time.sleep(1)
        yield {"dashboard": dashboard, "env": env}
    finally:
        _stop_group(head)
        log.close()


def test_ray_job_submit_runs_training_on_the_cluster(ray_head, tmp_path):
    data = make_dataset(tmp_path / "data", n=24, shard_size=12)
    storage = tmp_path / "runs"
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        ray_head["dashboard"],
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "pipelines/train.py",
        "--data",
        str(data),
        "--storage",
        str(storage),
        "--mlflow-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--workers",
        "2",
        "--steps",
        "4",
        "--ckpt-every",
        "2",
        "--val-every",
        "0",
        "--log-every",
        "2",
        "--no-register",
    ]
    result = subprocess.run(command, env=ray_head["env"], capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output, output[-4000:]
    assert "[train] done" in output
    # the workers imported the packages shipped with the job, not this checkout
    code_lines = [line for line in output.splitlines() if "[train] rank 0 of 2" in line]
    assert code_lines and "_ray_pkg_" in code_lines[0], code_lines
    checkpoints = sorted(p for p in (storage / "sas-tiny").glob("checkpoint_*") if p.is_dir())
    assert checkpoints

    from pipelines.training.optim import load_trainer_state

    assert load_trainer_state(checkpoints[-1]).step == 4
