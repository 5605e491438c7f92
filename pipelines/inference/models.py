"""Finding a model for ``evaluate.py``, ``predict.py`` and the demo, and loading its segmenter.

A model is named in one of these ways (``resolve_model``):

- ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (MLflow registry), ``runs:/RUN_ID/model`` or a
  ``models:/m-<id>`` logged model: downloaded from the tracking server; the checkpoint is the pyfunc's
  ``artifacts/checkpoint`` folder;
- a checkpoint directory (``config.json`` + weights, as written by ``sas_model.checkpoint``);
- a Ray Train run directory (``runs/sas-tiny``): its newest ``checkpoint_*``;
- a downloaded MLflow model directory (``MLmodel`` + ``artifacts/checkpoint``).

The driver resolves the model once (so a bad name fails fast with one line) and hands the
``ModelSource`` to the Ray Data actors; an actor on another node, where the driver's local path does
not exist, resolves the original name again from the tracking server.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.cli.env import PRETRAINED_ENV, pretrained_path
from sas_model.config import ModelConfig  # no torch import: the CLIs' --help stays fast
from synth.cli import UserError

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


@dataclass
class ModelSource:
    """Where a model came from (``uri``), the tracking URI to resolve it with, and its local checkpoint."""

    uri: str
    tracking_uri: str | None = None
    checkpoint_dir: str = ""
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def local_checkpoint(self) -> str:
        """The checkpoint directory on this node (resolving ``uri`` again when the path is not here)."""
        if self.checkpoint_dir and (Path(self.checkpoint_dir) / "config.json").is_file():
            return self.checkpoint_dir
        return resolve_model(self.uri, self.tracking_uri).checkpoint_dir


def default_label(uri: str) -> str:
    """A short column name for a model: ``sas@champion``, ``sas/3`` or the checkpoint folder's name."""
    for scheme in MLFLOW_SCHEMES:
        if uri.startswith(scheme):
            return uri[len(scheme) :].strip("/") or uri
    path = Path(uri.rstrip("/"))
    return path.name if path.name else uri


def parse_model_spec(text: str) -> tuple[str, str]:
    """``label=URI`` or ``URI`` → ``(label, uri)``; a ``=`` inside a URI scheme's path is kept."""
    label, sep, rest = text.partition("=")
    if sep and label and "/" not in label and ":" not in label and rest:
        return label.strip(), rest.strip()
    return default_label(text), text


def _checkpoint_in(directory: Path) -> Path | None:
    """A checkpoint directory at or inside ``directory`` (checkpoint, MLflow model or Ray Train run)."""
    if (directory / "config.json").is_file():
        return directory
    if (directory / "artifacts" / "checkpoint" / "config.json").is_file():
        return directory / "artifacts" / "checkpoint"
    runs = sorted(p for p in directory.glob("checkpoint_*") if (p / "config.json").is_file())
    return runs[-1] if runs else None


DEFAULT_MODEL = "models:/sas@champion"


def default_model(tracking_uri: str | None, pretrained: str | None = None) -> ModelSource:
    """The model a command uses when none is named: the registered champion (``DEFAULT_MODEL``), else
    the shipped pretrained model (``pipelines.cli.env.pretrained_path``), else one-line ``UserError``."""
    try:
        return resolve_model(DEFAULT_MODEL, tracking_uri)
    except UserError as champion_error:
        path = pretrained_path(pretrained)
        if (path / "config.json").is_file():
            return resolve_model(str(path), tracking_uri)
        reason = " ".join(str(champion_error).split())[:160]
        raise UserError(
            f"no model: {DEFAULT_MODEL} is not available ({reason}) and there is no pretrained "
            f"checkpoint at {path} (set --pretrained or ${PRETRAINED_ENV}); pass --model URI"
        ) from None


def resolve_model(uri: str, tracking_uri: str | None = None, cache_dir: str | None = None) -> ModelSource:
    """Find the checkpoint directory for ``uri``; raises ``UserError`` (one line) when there is none."""
    if any(uri.startswith(scheme) for scheme in MLFLOW_SCHEMES):
        local = _download(uri, tracking_uri, cache_dir)
        found = _checkpoint_in(local)
        if found is None:
            raise UserError(
                f"{uri} is not a sas model (no artifacts/checkpoint/config.json in it); "
                "log models with pipelines/train.py"
            )
        return ModelSource(uri, tracking_uri, str(found), default_label(uri))
    if "://" in uri:
        raise UserError(
            f"model {uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model "
            "or a local checkpoint directory"
        )
    path = Path(uri).expanduser()
    if not path.exists():
        raise UserError(
            f"model {uri!r} does not exist; pass a checkpoint directory or models:/NAME@ALIAS "
            "(e.g. models:/sas@champion)"
        )
    found = _checkpoint_in(path.resolve()) if path.is_dir() else None
    if found is None:
        raise UserError(
            f"{uri} is not a checkpoint directory (no config.json, artifacts/checkpoint or checkpoint_* "
            "inside); pass the folder written by pipelines/train.py"
        )
    return ModelSource(str(path.resolve()), tracking_uri, str(found), default_label(uri))


def _download(uri: str, tracking_uri: str | None, cache_dir: str | None) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI", tracking_uri))
    destination = tempfile.mkdtemp(prefix="sas-model-", dir=cache_dir)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=destination))
    except MlflowException as exc:
        reason = " ".join(str(exc.message if hasattr(exc, "message") else exc).split())[:200]
        where = tracking_uri or mlflow.get_tracking_uri()
        raise UserError(
            f"cannot load {uri} from MLflow at {where}: {reason} (check the name, the alias or version, "
            "and --mlflow-uri)"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot download {uri}: {exc}") from None


def inference_device() -> str:
    """Where the CLIs run the model: CUDA when present, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_source_segmenter(source: ModelSource, device: str | None = None) -> Any:
    """``SequentialSegmenter`` for ``source`` (EMA weights) on ``device``, else ``inference_device()``."""
    from sas_model.checkpoint import load_segmenter  # torch: the CLIs import this module before --help

    return load_segmenter(source.local_checkpoint(), device=device or inference_device())


def model_summary(source: ModelSource) -> dict[str, Any]:
    """Config facts worth printing and logging: preset name, mode, C_k input, sampler defaults, step."""
    from sas_model.checkpoint import load_meta  # torch: the CLIs import this module before --help

    cfg = ModelConfig.load(Path(source.checkpoint_dir) / "config.json")
    meta = load_meta(source.checkpoint_dir)
    return {
        "preset": cfg.name,
        "image_size": cfg.image_size,
        "mode": cfg.diffusion.mode,
        "use_cumulative_mask": cfg.diffusion.use_cumulative_mask,
        "cmask_noise_p": cfg.train.cmask_noise_p,
        "sampler": json.dumps(
            {"name": cfg.sampler.name, "steps": cfg.sampler.steps, "ensemble": cfg.sampler.ensemble_size}
        ),
        "step": meta.get("step", 0),
    }


def describe_device(device: Any) -> str:
    """``"cuda:0 (NVIDIA H200)"`` or ``"cpu"``: printed by each actor when its model is loaded."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
