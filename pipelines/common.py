"""Shared helpers for the Ray entrypoints: environment defaults, Ray/MLflow connection, CLI parsing.

Two runtime modes, chosen from the environment and never from code edits:

- **embedded** (no cluster configured): ``ray.init()`` starts a local Ray; MLflow writes to
  ``./mlruns/mlflow.db`` (SQLite, with the model registry) and ``./mlruns/artifacts``.
- **cluster**: ``RAY_ADDRESS`` is set, or the script runs as a ``ray job submit`` entrypoint (Ray
  then sets ``RAY_JOB_CONFIG_JSON_ENV_VAR`` and ``RAY_ADDRESS`` for the driver). The driver connects
  to the running cluster. Under ``ray job submit --working-dir .`` the job's runtime env already
  ships the repository to every worker; when a plain ``python`` driver connects through
  ``RAY_ADDRESS`` instead, ``init_ray`` ships ``synth``, ``sas_model`` and ``pipelines`` as
  ``py_modules`` so that workers on other nodes can import them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("synth", "sas_model", "pipelines")
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


class UserError(Exception):
    """An error the user caused and can fix; reported as one line, without a traceback."""


def apply_env_defaults() -> None:
    """Set the quiet/no-telemetry environment defaults without overriding user settings."""
    from pipelines.progress import interactive

    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not interactive():  # Ray Data's own bars only on a terminal, never in logs or under CI=true
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``code`` (no traceback)."""
    first_line = " ".join(str(message).split())
    print(f"error: {first_line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def parse_number(text: str | int | float) -> int:
    """Parse a count written as ``1000``, ``1e5``, ``2.5e3`` or ``10_000`` into an int.

    Raises ``argparse.ArgumentTypeError`` for anything that is not a whole non-negative number.
    """
    if isinstance(text, int):
        value = float(text)
    else:
        try:
            value = float(str(text).replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole non-negative number, got {text!r}")
    return int(value)


def parse_positive_float(text: str) -> float:
    """Parse a strictly positive float (``--minutes 0.5``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_value(raw: str) -> Any:
    """Parse a ``--set`` value: JSON (``3``, ``1e-4``, ``[1,2]``, ``"x"``), ``true/false/none``,
    ``1,2,3`` as a list, else the raw string. ``1e5`` (no decimal point) becomes the int 100000."""
    import json

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


def in_ray_job() -> bool:
    """True when this process is the entrypoint of a ``ray job submit`` job."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def cluster_mode() -> bool:
    """True when a Ray cluster is configured (``RAY_ADDRESS`` or a job entrypoint)."""
    return bool(os.environ.get("RAY_ADDRESS")) or in_ray_job()


def project_runtime_env() -> dict[str, Any]:
    """Runtime env that lets remote workers import the project's packages (``py_modules``)."""
    return {"py_modules": [str(REPO_ROOT / name) for name in PROJECT_PACKAGES]}


def init_ray(num_cpus: int | None = None, quiet: bool = True) -> str:
    """Start or connect to Ray; returns ``"embedded"`` or ``"cluster"``.

    Already-initialised Ray (tests call ``ray.init(address="local", ...)`` themselves) is reused.
    """
    import ray

    if ray.is_initialized():
        return "cluster" if cluster_mode() else "embedded"
    log_level = "WARNING" if quiet else "INFO"
    if in_ray_job():
        ray.init(logging_level=log_level)  # the job's runtime env (working_dir) applies to workers
        return "cluster"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=project_runtime_env(), logging_level=log_level)
        return "cluster"
    ray.init(address="local", num_cpus=num_cpus, logging_level=log_level)
    return "embedded"


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
