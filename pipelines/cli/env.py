"""The environment every command line starts with: quiet, local-only defaults (no usage stats, no
telemetry, no EC2 metadata lookups, unbuffered output) that never override what the user exported.
"""

from __future__ import annotations

import os

from pipelines.cli.progress import interactive

# Quiet, local-only defaults; anything the user already exported wins.
ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
    "PYTHONUNBUFFERED": "1",
}


def apply_env_defaults() -> None:
    """Set the quiet/no-telemetry environment defaults without overriding user settings."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not interactive():  # Ray Data's own bars only on a terminal, never in logs or under CI=true
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
