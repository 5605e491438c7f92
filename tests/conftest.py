"""Test-wide environment: no telemetry, Ray and MLflow kept local and quiet."""

from __future__ import annotations

import os
import tempfile

_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_DEDUP_LOGS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
}
for _key, _value in _ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
# Ray writes its session files under RAY_TMPDIR; keep them out of /tmp/ray shared with others.
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="sas-ray-"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end test (Ray/MLflow services); still runs in CI")
