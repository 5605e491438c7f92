"""Which MLflow store a command tracks to, and its experiment.

MLflow tracks to ``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else ``./mlruns/mlflow.db`` (SQLite,
with the model registry) with artifacts in ``./mlruns/artifacts``. ``flatten_dict`` turns a nested
config into dotted MLflow params.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_MLFLOW_DIR = "mlruns"
DEFAULT_EXPERIMENT = "sas"


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
