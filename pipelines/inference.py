"""Shared by ``evaluate.py`` and ``predict.py``: finding a model, sampler flags, the Ray Data actor base.

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

import argparse
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common import UserError
from sas_model.config import PRECISIONS, ModelConfig  # no torch import: the CLIs' --help stays fast

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
SAMPLER_FLAGS = {
    "sampler": "name",
    "steps": "steps",
    "ensemble": "ensemble_size",
    "consensus": "consensus",
    "precision": "precision",
}


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
    from sas_model.checkpoint import load_segmenter

    return load_segmenter(source.local_checkpoint(), device=device or inference_device())


def model_summary(source: ModelSource) -> dict[str, Any]:
    """Config facts worth printing and logging: preset name, mode, C_k input, sampler defaults, step."""
    from sas_model.checkpoint import load_meta

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


# ---- CLI pieces ----------------------------------------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser, repeatable: bool = False) -> None:
    help_text = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a checkpoint directory"
    if repeatable:
        parser.add_argument(
            "--model",
            action="append",
            required=True,
            metavar="[LABEL=]URI",
            help=help_text + "; repeat to compare models in one table",
        )
    else:
        parser.add_argument("--model", required=True, metavar="URI", help=help_text)
    parser.add_argument(
        "--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)"
    )


def add_sampler_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampler (default: each model's saved config)")
    group.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp2m"), help="ddpm, ddim or dpmpp2m (fast)")
    group.add_argument("--steps", type=int, help="denoising steps per layer (UNet passes per member)")
    group.add_argument("--ensemble", type=int, help="ensemble members per layer")
    group.add_argument("--consensus", choices=("medoid", "vote"), help="medoid (reference) or pixel vote")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="autocast dtype of the UNet passes (auto: bf16 where the GPU or CPU has it natively, else fp32)",
    )
    group.add_argument("--seed", type=int, default=0, help="sampling seed (per image; default 0)")


def sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``SamplerConfig`` field overrides from the sampler flags that were given."""
    return {
        field: getattr(args, flag) for flag, field in SAMPLER_FLAGS.items() if getattr(args, flag) is not None
    }


def check_sampler_overrides(source: ModelSource, overrides: dict[str, Any]) -> None:
    """Fail with one line when the overrides do not fit the model (e.g. more steps than timesteps)."""
    import torch

    from sas_model.precision import autocast_dtype

    cfg = ModelConfig.load(Path(source.checkpoint_dir) / "config.json")
    try:
        sampler = cfg.replace(**{f"sampler.{k}": v for k, v in overrides.items()}).validate().sampler
        autocast_dtype(torch.device(inference_device()), sampler.precision, "sampler.precision")
    except ValueError as exc:
        raise UserError(f"{source.label}: {exc}") from None


def actor_pool(workers: int) -> Any:
    """Ray Data compute strategy: a fixed pool of ``workers`` model-holding actors."""
    import ray.data

    return ray.data.ActorPoolStrategy(size=max(1, workers))


# ---- GPUs for the inference actors -----------------------------------------------------------------
def add_resource_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        metavar="N",
        help="GPUs each model actor requests (fractions share a GPU; default: 1 when the Ray cluster "
        "has GPUs, else 0)",
    )
    parser.add_argument(
        "--progress-every",
        type=int,
        default=0,
        metavar="N",
        help="when stdout is not a terminal (logs, CI): one progress line every N items "
        "(default 0: about every 10 %%)",
    )


def cluster_gpus() -> float:
    """GPUs Ray sees in the cluster (0 when none)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0) or 0)


def resolve_gpus_per_worker(flag: float | None, gpus_in_cluster: float) -> float:
    """``--gpus-per-worker``: the flag when given (>= 0), else 1 when the cluster has GPUs, else 0."""
    if flag is None:
        return 1.0 if gpus_in_cluster > 0 else 0.0
    if flag < 0:
        raise UserError(f"--gpus-per-worker must be >= 0, got {flag:g}")
    if flag > 0 and gpus_in_cluster <= 0:
        raise UserError(f"--gpus-per-worker {flag:g} asked for, but the Ray cluster has no GPU")
    return float(flag)


def actor_resources(gpus_per_worker: float) -> dict[str, float]:
    """The ``map_batches`` resource request of each model-holding actor."""
    return {"num_cpus": 1, "num_gpus": gpus_per_worker} if gpus_per_worker > 0 else {"num_cpus": 1}


def describe_device(device: Any) -> str:
    """``"cuda:0 (NVIDIA H200)"`` or ``"cpu"``: printed by each actor when its model is loaded."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
