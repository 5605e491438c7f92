"""README command 1 in small: the main job end to end (generate, preview, train, evaluate, predict) on a
few scenes, and what its log looks like to a user: the project's own lines, no line that reads as an
error on a run that went well, no third-party progress bar when the output is not a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READS_AS_AN_ERROR = (
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r"\] \w+\.cc:\d+: |\bE \d+ \d+\]|\bE\d{4} "),  # Ray's C++ log lines at level E
    re.compile(r"\bFailed to\b"),
    re.compile(r"^error:", re.MULTILINE),
)


@pytest.mark.timeout(900)
def test_a_short_main_job_succeeds_and_its_log_looks_clean(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    argv = [
        *("--scenes", "120", "--steps", "3", "--val-scenes", "4", "--eval-scenes", "4"),
        *("--predict-images", "2", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")),
        *(
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "smoke",
            "--mlflow-uri",
            f"sqlite:///{tmp_path}/m.db",
        ),
    ]
    proc = subprocess.run(
        [sys.executable, "pipelines/main_job.py", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=840,
    )
    log = proc.stdout
    assert proc.returncode == 0, log[-4000:]
    assert "=== main job done" in log and "| metric | shipped | trained |" in log
    assert (tmp_path / "out" / "stages" / "train.log").is_file()  # the whole output is kept
    errors = [line for line in log.splitlines() if any(p.search(line) for p in READS_AS_AN_ERROR)]
    assert errors == [], "\n".join(errors[:20])
    assert "Downloading artifacts" not in log and "it/s]" not in log
    assert "exclude_resources" not in log  # Ray Train's own deprecated option, silenced by name
