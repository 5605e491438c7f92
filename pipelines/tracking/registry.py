"""MLflow side of a training run, on the driver: find/create the run, log the final model, register it.

- ``find_or_create_run``: one MLflow run per Ray Train run directory (tag ``sas.run_dir``), so a
  resumed training keeps writing into the same MLflow run.
- ``log_and_register``: logs the final checkpoint as an MLflow pyfunc (``sas_model.pyfunc``: the full
  sequential segmenter, with a signature and an input example; ``pip_requirements`` pinned so MLflow
  skips the slow inference), registers a new version under ``name`` and applies the champion policy.
- ``update_champion``: ``better`` moves alias ``champion`` only if the new version's val metric
  beats the current champion's (stored as the version tag ``val_metric``); ``always``; ``never``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import sas_model

CHAMPION_ALIAS = "champion"
RUN_DIR_TAG = "sas.run_dir"
ALIAS_POLICIES = ("better", "always", "never")


def find_or_create_run(experiment_id: str, run_dir: str, run_name: str) -> tuple[str, bool]:
    """Return ``(run_id, created)`` for the MLflow run tagged with ``run_dir`` (newest if several)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    escaped = run_dir.replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_DIR_TAG}` = '{escaped}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id, False
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_DIR_TAG: run_dir})
    return run.info.run_id, True


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model (pinning skips MLflow's slow requirement inference)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("torch", "numpy", "pillow", "scipy", "safetensors", "pandas", "mlflow"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def log_pyfunc_model(run_id: str, checkpoint_dir: str | Path, input_image: Any) -> Any:
    """Log ``checkpoint_dir`` as a pyfunc model in ``run_id``; returns MLflow's ``ModelInfo``.

    Only the model files go into the served model (``sas_model.checkpoint.MODEL_FILES``; the optimizer
    state stays with the training checkpoint); ``sas_model`` travels as ``code_paths`` so serving needs
    no install.
    """
    import mlflow

    from sas_model import pyfunc as sas_pyfunc  # MLflow and torch: only when logging a model
    from sas_model.checkpoint import MODEL_FILES  # torch: only when logging a model

    with tempfile.TemporaryDirectory(prefix="sas-export-") as tmp:
        export = Path(tmp) / "checkpoint"
        export.mkdir()
        for name in MODEL_FILES:
            if (Path(checkpoint_dir) / name).is_file():  # a shipped model has no separate EMA file
                shutil.copy2(Path(checkpoint_dir) / name, export / name)
        with mlflow.start_run(run_id=run_id):
            return sas_pyfunc.log_model(
                checkpoint_dir=str(export),
                name="model",
                input_image=input_image,
                pip_requirements=pip_requirements(),
                code_paths=[str(Path(sas_model.__file__).parent)],
            )


def update_champion(name: str, version: str, metric: float | None, policy: str) -> tuple[bool, str]:
    """Apply the alias policy to registered ``name`` version ``version``; returns ``(moved, reason)``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    assert policy in ALIAS_POLICIES, policy
    client = MlflowClient()
    if policy == "never":
        return False, "alias policy 'never'"
    if policy == "better":
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException:
            champion = None
        if champion is not None:
            champion_metric = _float_or_none(champion.tags.get("val_metric"))
            if champion_metric is not None and (metric is None or not metric > champion_metric):
                return False, (
                    f"version {version} val metric {_fmt(metric)} does not beat champion "
                    f"v{champion.version} ({_fmt(champion_metric)})"
                )
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return True, f"alias '{CHAMPION_ALIAS}' -> version {version} (val metric {_fmt(metric)}, policy {policy})"


def register(
    model_uri: str,
    name: str,
    run_id: str,
    metric_name: str,
    metric: float | None,
    tags: dict[str, str] | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` tagged with its val metric (and ``tags``, e.g.
    the training dataset's digest from ``pipelines.tracking.lineage.version_tags``); return the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    version = mlflow.register_model(model_uri, name, tags={"run_id": run_id, **(tags or {})}).version
    client = MlflowClient()
    client.set_model_version_tag(name, version, "val_metric_name", metric_name)
    if metric is not None:
        client.set_model_version_tag(name, version, "val_metric", repr(float(metric)))
    return str(version)


def log_and_register(
    run_id: str,
    checkpoint_dir: str | Path,
    input_image: Any,
    register_name: str | None,
    metric_name: str,
    metric: float | None,
    alias_policy: str,
    version_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log the pyfunc, register it (unless ``register_name`` is None) and apply the alias policy."""
    info = log_pyfunc_model(run_id, checkpoint_dir, input_image)
    summary: dict[str, Any] = {"model_uri": info.model_uri}
    if not register_name:
        return summary
    version = register(info.model_uri, register_name, run_id, metric_name, metric, version_tags)
    moved, reason = update_champion(register_name, version, metric, alias_policy)
    summary.update(name=register_name, version=version, champion_moved=moved, champion_reason=reason)
    return summary


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
