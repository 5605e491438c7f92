"""What ``pipelines/evaluate.py`` and ``pipelines/predict.py`` are asked to do (and what an evaluation
returns), typed.

A request is built once from the command line (``evaluate.request_from_args``,
``predict.request_from_args``) and validated there; below the entry script only it travels
(``inference.evaluation``, ``inference.eval_report``, ``inference.prediction``).
Its field defaults are the flags' defaults (``field_default``), so each default has one home.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.cli import UserError

EXPERIMENT = "sas-eval"
SAMPLER_TITLE_KEYS = ("name", "steps", "ensemble_size", "consensus")  # shown in a table's title


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name`` (what the matching flag defaults to)."""
    spec = cls.__dataclass_fields__[name]
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


@dataclass(frozen=True)
class EvalRequest:
    """One evaluation: which models (``[LABEL=]URI``), on which scenes, how sampled, where reported.

    ``sampler``: ``SamplerConfig`` field overrides (``name``, ``steps``, ``ensemble_size``, ...; empty:
    each model's saved config). ``gpus_per_worker`` None: 1 when the Ray cluster has GPUs, else 0.
    """

    models: tuple[str, ...]
    data: str
    split: str = "test"
    limit: int | None = None
    out: str = "outputs/eval"
    s3_endpoint: str | None = None
    coco_out: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    gpus_per_worker: float | None = None
    progress_every: int = 0
    teacher_forced: bool = True
    sweep_passes: bool = False
    sweep: str | None = None
    sweep_limit: int | None = None
    workers: int = 1
    batch: int = 16
    sheet_rows: int = 8
    experiment: str = EXPERIMENT
    run_name: str | None = None
    mlflow: bool = True
    mlflow_uri: str | None = None

    def validate(self) -> EvalRequest:
        """Itself, or a one-line ``UserError`` naming the flag to fix (no Ray, no model loaded)."""
        if not self.models:
            raise UserError("give at least one --model")
        if self.workers < 1 or self.batch < 1:
            raise UserError("--workers and --batch must be at least 1")
        if self.sheet_rows < 0 or self.progress_every < 0:
            raise UserError("--sheet-rows and --progress-every must not be negative")
        for name in ("limit", "sweep_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
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


@dataclass(frozen=True)
class PredictRequest:
    """One batch prediction: the model (None: the champion, else the shipped model), the inputs, the
    output folder, the sampler overrides and the actors."""

    input: str
    out: str
    model: str | None = None
    limit: int | None = None
    s3_endpoint: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    gpus_per_worker: float | None = None
    progress_every: int = 0
    workers: int = 1
    batch: int = 16
    mlflow_uri: str | None = None

    def validate(self) -> PredictRequest:
        """Itself, or a one-line ``UserError`` naming the flag to fix."""
        if self.workers < 1 or self.batch < 1:
            raise UserError("--workers and --batch must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.progress_every < 0:
            raise UserError("--progress-every must not be negative")
        return self
