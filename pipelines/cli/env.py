"""The environment every command line starts with: quiet, local-only defaults (no usage stats, no
telemetry, no EC2 metadata lookups, unbuffered output) that never override what the user exported;
and where the shipped pretrained model is (``pretrained_path``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.cli.progress import interactive
from synth.ray_runtime import REPO_ROOT

# The model that ships with the project (pipelines/pretrain.py --ship writes it).
PRETRAINED_ENV = "SAS_PRETRAINED_MODEL"
DEFAULT_PRETRAINED = REPO_ROOT / "models" / "pretrained"

# Quiet, local-only defaults; anything the user already exported wins.
ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
    "PYTHONUNBUFFERED": "1",
    # Ray Train's own DatasetManager sets the deprecated option on every run (Ray 2.60); the warning
    # names no setting of ours. Only this message: any other warning still shows.
    "PYTHONWARNINGS": "ignore:`ExecutionOptions.exclude_resources` is deprecated",
}


def apply_env_defaults() -> None:
    """Set the quiet/no-telemetry environment defaults without overriding user settings."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not interactive():  # third-party bars (Ray Data, MLflow downloads) only on a terminal
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def pretrained_path(flag: str | None = None) -> Path:
    """The shipped model's checkpoint folder: ``flag``, else ``$SAS_PRETRAINED_MODEL``, else
    ``models/pretrained`` in the checkout."""
    return Path(flag or os.environ.get(PRETRAINED_ENV) or DEFAULT_PRETRAINED).expanduser()
