"""Shared helpers for the Ray entrypoints: environment defaults, MLflow connection, ``--set`` parsing.

The pieces ``synth``'s command lines need as well live in ``synth`` and are imported from here by the
``pipelines`` entry points: ``UserError``, ``fail`` and number parsing (``synth.cli``), Ray start-up
in embedded or cluster mode (``synth.ray_runtime.init_ray``).

MLflow tracks to ``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else ``./mlruns/mlflow.db`` (SQLite,
with the model registry) with artifacts in ``./mlruns/artifacts``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pipelines.progress import interactive
from synth.cli import UserError, fail, parse_number, parse_positive_float  # noqa: F401 - re-exported
from synth.ray_runtime import init_ray  # noqa: F401 - re-exported

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MLFLOW_DIR = "mlruns"
DEFAULT_EXPERIMENT = "sas"

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


def parse_value(raw: str) -> Any:
    """Parse a ``--set`` value: JSON (``3``, ``1e-4``, ``[1,2]``, ``"x"``), ``true/false/none``,
    ``1,2,3`` as a list, else the raw string. ``1e5`` (no decimal point) becomes the int 100000."""
    text = raw.strip()
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        if lowered in ("true", "false", "none", "null"):
            return {"true": True, "false": False}.get(lowered)
        if "," in text:
            return [parse_value(part) for part in text.split(",")]
        return text
    if isinstance(value, float) and value.is_integer() and "." not in text:
        return int(value)
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key.sub=value`` into ``("key.sub", value)``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    return key.strip(), parse_value(raw)


def training_parser(doc: str, preset_help: str, set_help: str) -> argparse.ArgumentParser:
    """The parser train.py and tune.py share: description from ``doc``; --data, --preset, --set."""
    summary, _, details = doc.partition("\n\n")
    p = argparse.ArgumentParser(
        description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="dataset directory or s3:// URI written by synth")
    p.add_argument("--preset", default="tiny", help=preset_help)
    p.add_argument(
        "--result",
        metavar="FILE",
        help="also write the outcome as JSON to FILE (what a pipeline such as main_job reads)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=parse_override,
        metavar="KEY=VALUE",
        help=set_help,
    )
    return p


def resolve_mlflow_uri(flag: str | None = None, base_dir: str | Path = ".") -> str:
    """Tracking URI: ``--mlflow-uri`` flag, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite file.

    The embedded default is ``sqlite:///<abs base_dir>/mlruns/mlflow.db`` (absolute, so Ray workers
    with another working directory write to the same store).
    """
    if flag:
        return flag
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = (Path(base_dir) / DEFAULT_MLFLOW_DIR / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifact root for a new experiment: ``<mlruns>/artifacts`` next to a SQLite DB, else the server's."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def setup_mlflow(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow tracking and registry at ``tracking_uri``; select/create ``experiment``; return its id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI", tracking_uri))
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=default_artifact_location(tracking_uri))
    except Exception:  # created concurrently by another process
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def resolve_local_or_remote(path: str) -> str:
    """Absolute local path (``~`` and relative resolved) or an unchanged ``scheme://`` URI."""
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def flatten_dict(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists/tuples are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_dict(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
