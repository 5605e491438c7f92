"""The run configuration: one training run, the run-level counterpart of ``ModelConfig``.

Built once (``pipelines/train.py`` from its flags, ``pipelines/tune.py`` per trial with
``replace``), validated once, logged whole to MLflow (``run.*`` params beside ``config.*``), handed to
every Ray Train worker as a plain dict (``to_dict``) and rebuilt there (``from_dict``). The model and
its optimisation (learning rate, batch, steps, EMA, augmentation) live in ``model`` (a
``ModelConfig``); everything else a run needs is a field here.

Fields after ``# set at launch`` are facts of one launch (the MLflow run, the wall-clock deadline,
the shuffle buffer and thread count for this cluster, test hooks), not choices: they are not logged
as params and a resumed run sets them again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.cli.flags import option
from pipelines.tracking.store import DEFAULT_EXPERIMENT
from sas_model.config import ModelConfig
from synth.cli import UserError, parse_number, parse_positive_float

SHUFFLES = ("buffer", "global")
CACHES = ("auto", "on", "off")
PLACEMENTS = ("pack", "spread")
GPUS = ("auto", "on", "off")
ALIAS_POLICIES = ("better", "always", "never")
# Steps between validations and between checkpoints when a run does not say: about 5 % of the preset's
# steps on the CPU presets, 5 % of paper's 100 k (validation then adds ~2 % to training, RESULTS).
CADENCE = {"tiny": 250, "tiny-sequential": 250, "small": 500, "paper": 5000}
DEFAULT_CADENCE = 500
LAUNCH_FIELDS = (
    "shuffle_buffer",
    "torch_threads",
    "deadline_unix",
    "mlflow_uri",
    "mlflow_run_id",
    "fail_once_at_step",
    "fail_once_marker",
    "inject_nan_from_step",
)


def model_config(
    preset: str, overrides: dict[str, Any] | None = None, steps: int | None = None, batch: int | None = None
) -> ModelConfig:
    """The model config a run trains: the preset (a name or a JSON file), then ``overrides``
    (``--set``), then ``steps`` / ``batch`` when given; validated (one-line ``UserError``)."""
    try:
        if preset.endswith(".json") or Path(preset).is_file():
            if not Path(preset).is_file():
                raise UserError(f"preset file {preset} does not exist")
            cfg = ModelConfig.load(preset)
        else:
            cfg = ModelConfig.preset(preset)
        changes = dict(overrides or {})
        if steps is not None:
            changes["train.steps"] = steps
        if batch is not None:
            changes["train.batch_size"] = batch
        if changes:
            cfg = cfg.replace(**changes)
        cfg.validate()
    except UserError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"bad config ({preset}): {exc}") from None
    return cfg


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``steps``, ``global_batch`` and the optimiser settings are read from
    ``model.train`` (properties below), so there is one place for each number."""

    model: ModelConfig
    data_path: str
    name: str
    storage: str = option("runs", "Ray Train storage path, local or s3://")
    workers: int = option(1, "Ray Train workers", parse=parse_number)
    minutes: float | None = option(None, "wall-clock budget for the whole run", parse=parse_positive_float)
    val_every: int | None = option(
        None,
        "steps between validations, also run at the end (0: never; default: the preset's cadence, "
        "CADENCE: tiny 250, small 500, paper 5000, else 500)",
        parse=parse_number,
    )
    val_scenes: int = option(64, "val scenes for the loss and teacher-forced IoU", parse=parse_number)
    val_free_scenes: int = option(
        64,
        "of those, scenes segmented free-running for IoU, pair order and the champion metric "
        "(the overlay sheet shows the first 8)",
        parse=parse_number,
    )
    ckpt_every: int | None = option(
        None, "steps between checkpoints (default: the preset's cadence, as --val-every)", parse=parse_number
    )
    log_every: int = option(10, "steps between progress lines", parse=parse_number)
    keep: int = option(3, "checkpoints kept (newest)", parse=parse_number)
    seed: int = option(0, "data order and augmentation seed", parse=parse_number)
    max_bad_steps: int = option(
        20, "abort after this many non-finite loss steps in a row", parse=parse_number
    )
    shuffle: str = option(
        "buffer", "local shuffle buffer (streaming) or a full random_shuffle per epoch", choices=SHUFFLES
    )
    cache: str = option(
        "auto",
        "decode the training samples once into Ray's object store (auto: if they fit in 25%%)",
        choices=CACHES,
    )
    placement: str = option(
        "pack",
        "worker placement: pack onto few nodes or spread one per node where possible",
        choices=PLACEMENTS,
    )
    max_failures: int = option(2, "worker-group restarts", parse=parse_number)
    gpu: str = option("auto", "use GPUs (auto: if any)", choices=GPUS)
    init: str = option(
        "scratch",
        "a new run starts from: scratch, pretrained (the shipped model, models/pretrained or "
        "$SAS_PRETRAINED_MODEL) or a checkpoint folder; a resumed run ignores it",
    )
    # Bounded recovery from a lost node: a torch.distributed op (gloo/NCCL) waiting on a dead peer
    # fails after collective_timeout_s (torch's default is 30 min), and Ray Train declares a worker
    # dead when its health check hangs for health_check_timeout_s (Ray's default 10 min).
    collective_timeout_s: int = option(
        300,
        "seconds a gloo/NCCL operation waits for a lost peer before it fails (torch's own: 1800)",
        flag="collective-timeout",
        parse=parse_number,
    )
    health_check_timeout_s: float = option(
        120.0,
        "seconds a hung worker health check takes to declare the worker dead (Ray's own: 600)",
        flag="health-check-timeout",
        parse=parse_positive_float,
    )
    prefetch_batches: int = 2
    # set at launch
    shuffle_buffer: int | None = None
    torch_threads: int | None = None
    deadline_unix: float | None = None
    mlflow_uri: str | None = field(default=None, repr=False)  # may hold credentials: never logged
    mlflow_run_id: str | None = None
    fail_once_at_step: int | None = option(
        None, "test hook: raise once at this step", parse=parse_number, hidden=True
    )
    fail_once_marker: str = ""
    inject_nan_from_step: int | None = option(
        None, "test hook: NaN loss from this step", parse=parse_number, hidden=True
    )

    def __post_init__(self) -> None:
        # None: the cadence of the model's preset (a frozen dataclass sets its own field this way)
        for name in ("val_every", "ckpt_every"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, CADENCE.get(self.model.name, DEFAULT_CADENCE))

    @property
    def steps(self) -> int:
        return int(self.model.train.steps)

    @property
    def global_batch(self) -> int:
        return int(self.model.train.batch_size)

    @property
    def per_worker_batch(self) -> int:
        return self.global_batch // self.workers

    def validate(self) -> RunConfig:
        """Raise ``ValueError`` with a one-line message naming the flag; return self."""
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.global_batch % self.workers:
            raise ValueError(f"global batch {self.global_batch} is not divisible by --workers {self.workers}")
        for name, value, choices in (
            ("--shuffle", self.shuffle, SHUFFLES),
            ("--cache", self.cache, CACHES),
            ("--placement", self.placement, PLACEMENTS),
            ("--gpu", self.gpu, GPUS),
        ):
            if value not in choices:
                raise ValueError(f"{name} {value!r}: choose from {', '.join(choices)}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"--minutes must be positive, not {self.minutes}")
        for name in ("val_every", "val_scenes", "val_free_scenes", "max_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        for name in ("collective_timeout_s", "health_check_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} must be positive")
        for name in ("ckpt_every", "log_every", "keep", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        return self

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (``model=`` a ``ModelConfig``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (what a Ray Train worker receives)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["model"] = self.model.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown run config field {unknown[0]!r}")
        return cls(**{**data, "model": ModelConfig.from_dict(data["model"])})

    def params(self) -> dict[str, Any]:
        """The run's choices as MLflow params (``run.<field>``): no launch facts, no credentials."""
        return {
            f"run.{f.name}": getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("model", *LAUNCH_FIELDS)
        }


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """What ``pipelines/train.py`` is asked to do: the run (its ``data_path`` and ``storage`` as typed;
    the launch resolves them), where it is tracked and registered, and where its outcome is written.
    ``steps`` and ``batch`` are already in ``run.model``; they are kept as the flags gave them."""

    run: RunConfig
    preset: str = "tiny"
    result: str | None = None  # also write the outcome as JSON here
    steps: int | None = option(None, "optimiser steps (default: config train.steps)", parse=parse_number)
    batch: int | None = option(None, "global batch (default: config train.batch_size)", parse=parse_number)
    register_name: str = option("sas", "registered model name")
    register: bool = option(True, "log the model but do not register it")
    alias_policy: str = option(
        "better",
        "move alias 'champion' if the new val metric is better, always or never",
        choices=ALIAS_POLICIES,
    )
    mlflow_uri: str | None = option(None, "tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    experiment: str = option(DEFAULT_EXPERIMENT, "MLflow experiment")
