"""An S3 endpoint that is down: a few bounded retries, then one ``error:`` line (no traceback, no hang).

``synth.reader.open_filesystem`` gives pyarrow's S3 client a 3 s connect timeout and 2 attempts, and
the entrypoints turn the failure into exit status 2 with one line naming the location.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_support import free_port

REPO = Path(__file__).resolve().parents[1]
BOUND_S = 60  # generous for a contended 2-core box; the retries themselves take well under a second


@pytest.fixture()
def dead_endpoint_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        AWS_ACCESS_KEY_ID="test-key-id",
        AWS_SECRET_ACCESS_KEY="test-secret-value-123",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            ["pipelines/train.py", "--data", "s3://sas-data/shapes", "--storage", "s3://sas-runs/runs"],
            "cannot read",
        ),
        (["synth/generate.py", "--n", "10", "--out", "s3://sas-data/new"], "cannot access s3://sas-data/new"),
    ],
    ids=["train", "generate"],
)
def test_s3_endpoint_down_fails_fast_with_one_line(dead_endpoint_env, command, expected):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, *command],
        cwd=REPO,
        env=dead_endpoint_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr[-2000:]
    assert "Could not connect" in lines[0]  # the cause is named
    assert "Traceback" not in done.stdout + done.stderr
    assert "test-secret-value-123" not in done.stdout + done.stderr
    assert took < BOUND_S, f"took {took:.1f} s"
