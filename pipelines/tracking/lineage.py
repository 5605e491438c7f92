"""Lineage in MLflow: which dataset made a run and a model, and which evaluations describe a model.

- ``dataset_for(data, manifest)``: the dataset as an MLflow ``MetaDataset`` (name = the folder's
  name, source = its path or ``s3://`` URI, digest = ``manifest_digest``) with input tags
  ``sas.schema_version``, ``sas.family`` (when the manifest has one), ``sas.num_scenes`` and
  ``sas.count.<split>``;
- ``log_dataset_input(run_id, ...)``: ``mlflow.log_input`` of that dataset into the run (context
  ``training`` or ``evaluation``);
- ``version_tags(...)``: the tags a registered model version carries (``dataset_digest``,
  ``dataset_name``, ``dataset_uri``);
- ``registered_version(uri)``: the registry version behind ``models:/NAME/VERSION`` or
  ``models:/NAME@ALIAS`` and its MLflow 3 logged-model id, so ``evaluate.py`` logs its metrics linked to
  that model (``mlflow.log_metrics(..., model_id=..., dataset=...)``: they show on the model's page)
  and tags the version with the evaluation run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synth.schema import Manifest

DIGEST_CHARS = 32  # MLflow stores dataset digests in a 36-character column


def manifest_digest(manifest: Manifest | dict[str, Any]) -> str:
    """sha256 (first 32 hex digits) of the manifest as canonical JSON: same manifest, same digest
    (a ``Manifest`` read from a file digests like the file's JSON object)."""
    data = manifest.to_dict() if hasattr(manifest, "to_dict") else manifest
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def dataset_name(data: str) -> str:
    return PurePosixPath(data.rstrip("/")).name or data


def dataset_tags(manifest: Manifest) -> dict[str, str]:
    """Input tags: schema version, family (generated datasets), scene counts."""
    tags = {"sas.schema_version": str(manifest.schema_version)}
    if manifest.family:
        tags["sas.family"] = manifest.family
    tags["sas.num_scenes"] = str(manifest.num_scenes)
    for split, count in manifest.counts.items():
        tags[f"sas.count.{split}"] = str(count)
    return tags


def dataset_for(data: str, manifest: Manifest) -> Any:
    """An ``mlflow.data.meta_dataset.MetaDataset`` for the dataset at ``data`` (path or URI)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": the local source twice
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(data)  # a local path or s3:// URI -> its artifact source
    return MetaDataset(source, name=dataset_name(data), digest=manifest_digest(manifest))


def log_dataset_input(run_id: str, data: str, manifest: Manifest, context: str) -> None:
    """``mlflow.log_input`` of the dataset (with its tags) into the existing run ``run_id``.

    The run keeps its status: the fluent API ends the run it resumes, so the status is restored.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    status = client.get_run(run_id).info.status
    with mlflow.start_run(run_id=run_id):
        mlflow.log_input(dataset_for(data, manifest), context=context, tags=dataset_tags(manifest))
    client.update_run(run_id, status=status)


def version_tags(data: str, manifest: Manifest) -> dict[str, str]:
    """Tags of a registered model version: the dataset it was trained on."""
    return {
        "dataset_digest": manifest_digest(manifest),
        "dataset_name": dataset_name(data),
        "dataset_uri": data,
    }


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


def registered_version(uri: str) -> Any | None:
    """The ``ModelVersion`` behind ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``; None for any
    other URI (a checkpoint directory, ``runs:/``)."""
    from mlflow.tracking import MlflowClient

    match = _MODELS_URI.match(uri)
    if not match:
        return None
    client = MlflowClient()
    if match["version"]:
        return client.get_model_version(match["name"], match["version"])
    return client.get_model_version_by_alias(match["name"], match["alias"])


def logged_model_id(version: Any) -> str | None:
    """The MLflow 3 logged-model id of a registry version (its ``model_id``, else its ``models:/m-...``
    source); None for versions registered from a run's artifact path."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = str(getattr(version, "source", "") or "")
    found = re.match(r"^models:/(m-[0-9a-f]+)$", source)
    return found[1] if found else None
