"""Test-wide environment: no telemetry, Ray and MLflow kept local and quiet."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

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


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # SIGTERM (a CI timeout, a user's kill) ends the session like Ctrl-C: pytest then tears down every
    # fixture, so the servers, clusters and network namespaces the tests started are removed too.
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    config.addinivalue_line("markers", "slow: long end-to-end test (Ray/MLflow services); still runs in CI")
    config.addinivalue_line(
        "markers",
        "cluster: starts a whole service stack or a multi-node Ray cluster (minutes); runs only with "
        "SAS_CLUSTER_TESTS=1",
    )


def pytest_collection_modifyitems(config, items):
    """Skip the ``cluster`` tests unless SAS_CLUSTER_TESTS=1 (they need minutes and, for the two-host
    test, root for network namespaces): ``SAS_CLUSTER_TESTS=1 .venv/bin/python -m pytest -m cluster``."""
    if os.environ.get("SAS_CLUSTER_TESTS") == "1":
        return
    import pytest

    skip = pytest.mark.skip(reason="cluster test: set SAS_CLUSTER_TESTS=1 to run it")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def local_ray():
    """One local 2-CPU Ray for a test module (started unless one is already up; shut down after)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
