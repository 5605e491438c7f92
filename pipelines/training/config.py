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

from sas_model.config import ModelConfig
from synth.cli import UserError

SHUFFLES = ("buffer", "global")
CACHES = ("auto", "on", "off")
PLACEMENTS = ("pack", "spread")
GPUS = ("auto", "on", "off")
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
    storage: str = "runs"
    workers: int = 1
    minutes: float | None = None  # wall-clock budget for the whole run
    val_every: int = 0  # steps between validations (0: never); also at the end
    val_scenes: int = 64  # val scenes for the loss and teacher-forced IoU
    val_free_scenes: int = 64  # of those, segmented free-running (the champion metric)
    ckpt_every: int = 500
    log_every: int = 10
    keep: int = 3  # checkpoints kept (newest)
    seed: int = 0  # data order and augmentation
    max_bad_steps: int = 20  # non-finite steps in a row before the run aborts
    shuffle: str = "buffer"
    cache: str = "auto"
    placement: str = "pack"
    max_failures: int = 2
    gpu: str = "auto"
    init: str = "scratch"  # a new run starts from: scratch, pretrained (the shipped model) or a checkpoint
    # Bounded recovery from a lost node: a torch.distributed op (gloo/NCCL) waiting on a dead peer
    # fails after collective_timeout_s (torch's default is 30 min), and Ray Train declares a worker
    # dead when its health check hangs for health_check_timeout_s (Ray's default 10 min).
    collective_timeout_s: int = 300
    health_check_timeout_s: float = 120.0
    prefetch_batches: int = 2
    # set at launch
    shuffle_buffer: int | None = None
    torch_threads: int | None = None
    deadline_unix: float | None = None
    mlflow_uri: str | None = field(default=None, repr=False)  # may hold credentials: never logged
    mlflow_run_id: str | None = None
    fail_once_at_step: int | None = None  # test hook: raise once at this step
    fail_once_marker: str = ""
    inject_nan_from_step: int | None = None  # test hook: NaN loss from this step

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
