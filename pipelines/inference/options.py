"""The flags ``evaluate.py`` and ``predict.py`` share, and what they turn into: ``--model`` specs, sampler
overrides (checked against the model before any work starts), and the Ray Data actor pool and its
CPU/GPU request per actor.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.cli.flags import add_flags
from pipelines.inference.models import ModelSource, inference_device
from pipelines.inference.request import InferenceRequest
from sas_model.config import PRECISIONS, ModelConfig  # no torch import: the CLIs' --help stays fast
from synth.cli import UserError

SAMPLER_FLAGS = {
    "sampler": "name",
    "steps": "steps",
    "ensemble": "ensemble_size",
    "consensus": "consensus",
    "precision": "precision",
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
        parser.add_argument(
            "--model",
            metavar="URI",
            help=help_text + " (default: models:/sas@champion, else the shipped model in models/pretrained)",
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
    add_flags(group, InferenceRequest, only=("seed",))


def sampler_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    """``SamplerConfig`` field overrides from the sampler flags that were given (``flags``: the parsed
    command line as a mapping, ``vars(args)``)."""
    return {field: flags[flag] for flag, field in SAMPLER_FLAGS.items() if flags.get(flag) is not None}


def check_sampler_overrides(source: ModelSource, overrides: dict[str, Any]) -> None:
    """Fail with one line when the overrides do not fit the model (e.g. more steps than timesteps)."""
    import torch

    from sas_model.precision import autocast_dtype  # torch: the CLIs import this module before --help

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
