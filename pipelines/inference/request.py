"""What ``pipelines/evaluate.py`` and ``pipelines/predict.py`` are asked to do (and what an evaluation
returns), typed.

A request is built once from the command line (``evaluate.request_from_args``,
``predict.request_from_args``) and validated there; below the entry script only it travels
(``inference.evaluation``, ``inference.eval_report``, ``inference.prediction``).
The fields declared with ``option`` are the flags (``pipelines.cli.flags``): name, default and help
have their one home here. ``models``/``model``, ``data``, ``input`` and ``out`` of predict, and the
sampler overrides are flags of their own (``inference.options``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.cli.flags import option
from synth.cli import UserError, parse_number

EXPERIMENT = "sas-eval"
SAMPLER_TITLE_KEYS = ("name", "steps", "ensemble_size", "consensus")  # shown in a table's title


@dataclass(frozen=True, kw_only=True)
class InferenceRequest:
    """What every Ray Data inference run is given: the sampler overrides (``SamplerConfig`` fields:
    ``name``, ``steps``, ``ensemble_size``, ...; empty: the model's saved config), the sampling seed,
    the model-holding actors (``gpus_per_worker`` None: 1 when the Ray cluster has GPUs, else 0), the
    first ``limit`` inputs only, S3 and MLflow endpoints, and the progress-line interval."""

    limit: int | None = option(None, "only the first N scenes or images", parse=parse_number)
    s3_endpoint: str | None = option(None, "S3-compatible endpoint URL (else AWS_ENDPOINT_URL)")
    sampler: dict[str, Any] = field(default_factory=dict)
    seed: int = option(0, "sampling seed (per image)", parse=int)
    gpus_per_worker: float | None = option(
        None,
        "GPUs each model actor requests (fractions share a GPU; default: 1 when the Ray cluster has GPUs, "
        "else 0)",
        parse=float,
        metavar="N",
    )
    progress_every: int = option(
        0,
        "when stdout is not a terminal (logs, CI): one progress line every N items (0: about every 10 %%)",
        parse=int,
        metavar="N",
    )
    workers: int = option(1, "Ray Data actors holding a model", parse=int)
    batch: int = option(16, "scenes or images per actor batch", parse=int)
    mlflow_uri: str | None = option(None, "tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")

    def validate(self) -> InferenceRequest:
        """Itself, or a one-line ``UserError`` naming the flag to fix (no Ray, no model loaded)."""
        if self.workers < 1 or self.batch < 1:
            raise UserError("--workers and --batch must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.progress_every < 0:
            raise UserError("--progress-every must not be negative")
        return self


@dataclass(frozen=True, kw_only=True)
class EvalRequest(InferenceRequest):
    """One evaluation: which models (``[LABEL=]URI``), on which scenes, where reported, whether
    teacher-forced too or a sweep of samplers instead."""

    models: tuple[str, ...]
    data: str
    split: str = option("test", "train, val or test")
    out: str = option("outputs/eval", "report folder")
    coco_out: str | None = option(
        None,
        "write ground truth and each model's detections as COCO JSON (amodal masks, RLE) to DIR",
        metavar="DIR",
    )
    teacher_forced: bool = option(True, "skip teacher-forced IoU and stop accuracy (faster)")
    sweep_passes: bool = option(
        False,
        "mIoU against UNet passes per image (DDPM-1000, DDIM 100/50/20/10, DPM++2M 20/10) for one model",
    )
    sweep: str | None = option(
        None, "custom sweep settings, e.g. ddim:10,dpmpp2m:10", metavar="SAMPLER:STEPS,..."
    )
    sweep_limit: int | None = option(None, "scenes for the sweep (default --limit)", parse=parse_number)
    sheet_rows: int = option(8, "scenes in the overlay sheet", parse=int)
    experiment: str = option(EXPERIMENT, "MLflow experiment")
    run_name: str | None = option(None, "MLflow run name")
    mlflow: bool = option(True, "write the report files only")

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
