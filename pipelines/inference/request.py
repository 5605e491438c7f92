"""What ``pipelines/evaluate.py`` and ``pipelines/predict.py`` are asked to do (and what an evaluation
returns), typed.

A request is built once from the command line (``evaluate.request_from_args``,
``predict.request_from_args``) and validated there; below the entry script only it travels
(``inference.evaluation``, ``inference.eval_report``, ``inference.prediction``).
Its field defaults are the flags' defaults (``field_default``), so each default has one home.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from synth.cli import UserError

EXPERIMENT = "sas-eval"
SAMPLER_TITLE_KEYS = ("name", "steps", "ensemble_size", "consensus")  # shown in a table's title
R = TypeVar("R", bound="InferenceRequest")


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name`` (what the matching flag defaults to)."""
    spec = cls.__dataclass_fields__[name]
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


@dataclass(frozen=True, kw_only=True)
class InferenceRequest:
    """What every Ray Data inference run is given: the sampler overrides (``SamplerConfig`` fields:
    ``name``, ``steps``, ``ensemble_size``, ...; empty: the model's saved config), the sampling seed,
    the model-holding actors (``gpus_per_worker`` None: 1 when the Ray cluster has GPUs, else 0), the
    first ``limit`` inputs only, S3 and MLflow endpoints, and the progress-line interval."""

    limit: int | None = None
    s3_endpoint: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    gpus_per_worker: float | None = None
    progress_every: int = 0
    workers: int = 1
    batch: int = 16
    mlflow_uri: str | None = None

    def validate(self) -> InferenceRequest:
        """Itself, or a one-line ``UserError`` naming the flag to fix (no Ray, no model loaded)."""
        if self.workers < 1 or self.batch < 1:
            raise UserError("--workers and --batch must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.progress_every < 0:
            raise UserError("--progress-every must not be negative")
        return self


def request_from_flags(cls: type[R], flags: Mapping[str, Any], **values: Any) -> R:
    """A validated ``cls`` whose fields are taken from the same-named ``flags`` (``vars(args)``),
    except those given in ``values`` (the fields whose flag has another name or form)."""
    taken = {
        f.name: flags[f.name] for f in dataclasses.fields(cls) if f.name in flags and f.name not in values
    }
    return cls(**taken, **values).validate()


@dataclass(frozen=True, kw_only=True)
class EvalRequest(InferenceRequest):
    """One evaluation: which models (``[LABEL=]URI``), on which scenes, where reported, whether
    teacher-forced too or a sweep of samplers instead."""

    models: tuple[str, ...]
    data: str
    split: str = "test"
    out: str = "outputs/eval"
    coco_out: str | None = None
    teacher_forced: bool = True
    sweep_passes: bool = False
    sweep: str | None = None
    sweep_limit: int | None = None
    sheet_rows: int = 8
    experiment: str = EXPERIMENT
    run_name: str | None = None
    mlflow: bool = True

    def validate(self) -> EvalRequest:
        super().validate()
        if not self.models:
            raise UserError("give at least one --model")
        if self.sheet_rows < 0:
            raise UserError("--sheet-rows must not be negative")
        if self.sweep_limit is not None and self.sweep_limit < 1:
            raise UserError("--sweep-limit must be at least 1")
        if self.sweep_passes and len(self.models) > 1:
            raise UserError("--sweep-passes takes exactly one --model")
        if self.sweep_passes and self.coco_out:
            raise UserError(
                "--coco-out writes the evaluation's predictions; leave it out with --sweep-passes"
            )
        return self

    def title(self) -> str:
        """A metrics table's title: data, split and the sampler overrides."""
        sampler = ", ".join(f"{k}={self.sampler[k]}" for k in SAMPLER_TITLE_KEYS if k in self.sampler)
        return f"{self.data} split {self.split}" + (
            f" ({sampler})" if sampler else " (each model's sampler config)"
        )


@dataclass
class EvalResult:
    """What one evaluation produced: per-model summaries (or the sweep's rows), the report files, the
    MLflow run (None with ``mlflow=False``) and the wall-clock seconds."""

    summaries: dict[str, dict[str, float]] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    mlflow_run_id: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class PredictRequest(InferenceRequest):
    """One batch prediction: the model (None: the champion, else the shipped model), the inputs and
    the output folder."""

    input: str
    out: str
    model: str | None = None
