"""What ``pipelines/tune.py`` is asked to do, typed: built once from its flags and validated there.

The fields declared with ``option`` are ``tune.py``'s flags (names, defaults and help have their one
home here); ``data``, ``preset``, ``overrides`` and ``result`` are the flags every training command
line shares (``pipelines.cli.args.training_parser``). Standard library only (``--help`` stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.cli.flags import option
from pipelines.tracking.store import DEFAULT_EXPERIMENT
from pipelines.training.config import ALIAS_POLICIES, CACHES, GPUS
from synth.cli import UserError, parse_number, parse_positive_float

if TYPE_CHECKING:
    from pipelines.training.config import RunConfig
    from sas_model.config import ModelConfig
    from synth.schema import Manifest

METRICS = ("val/miou_free", "val/miou_tf")


@dataclass(frozen=True, kw_only=True)
class TuneRequest:
    """One schedule search: the base config, the space, the budgets, the trials' resources, where the
    search state and the report go, and whether the best trial is registered."""

    data: str
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # --set: fixed changes of the base config
    result: str | None = None
    space: str | None = option(None, "search space file (JSON or YAML); its keys replace the default's")
    search: list[str] = option(
        [],
        "search one key: grid:a,b | a,b (choice) | loguniform:lo,hi | uniform:lo,hi | value | '' (drop)",
        metavar="KEY=SPEC",
    )
    default_space: bool = option(True, "start from an empty space instead of the default one")
    trials: int = option(8, "number of trials", parse=parse_number)
    max_steps: int | None = option(None, "steps per trial (default: train.max_steps)", parse=parse_number)
    minutes: float | None = option(None, "wall-clock budget per trial", parse=parse_positive_float)
    time_budget: float | None = option(None, "minutes for the whole search", parse=parse_positive_float)
    val_every: int | None = option(
        None, "steps between validations (default max-steps/5)", parse=parse_number
    )
    metric: str = option("val/miou_free", "what ASHA and the ranking use", choices=METRICS)
    reduction: float = option(2.0, "ASHA reduction factor", parse=float)
    asha: bool = option(True, "run every trial to the end (FIFO) instead of stopping weak ones (ASHA)")
    workers: int = option(1, "Ray Train workers per trial", parse=parse_number)
    concurrency: int | None = option(None, "trials at a time (default: from CPUs/GPUs)", parse=parse_number)
    val_scenes: int = option(16, "val scenes for the loss and teacher-forced IoU", parse=parse_number)
    val_free_scenes: int = option(4, "of those, segmented free-running", parse=parse_number)
    storage: str = option("tune_runs", "search + trial storage, local or s3://")
    name: str | None = option(
        None, "search name (default tune-<preset>); same name + storage resumes", show_default=False
    )
    out: str | None = option(
        None, "report folder (default <storage>/<name>/report, or ./tune_reports/<name>)"
    )
    mlflow_uri: str | None = option(None, "tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    experiment: str = option(DEFAULT_EXPERIMENT, "MLflow experiment")
    register: bool = option(False, "register the best trial's model")
    register_name: str = option("sas", "registered model name")
    alias_policy: str = option(
        "better",
        "move alias 'champion' to the best trial's model: better, always, never",
        choices=ALIAS_POLICIES,
    )
    gpu: str = option("auto", "use GPUs (auto: if any)", choices=GPUS)
    seed: int = option(0, "search and data seed", parse=parse_number)
    cache: str = option("auto", "as in train.py", choices=CACHES)
    interrupt_after: int | None = option(None, "test hook", parse=parse_number, hidden=True)

    def validate(self) -> TuneRequest:
        """Itself, or a one-line ``UserError`` naming the flag to fix (before Ray starts)."""
        if self.trials < 1:
            raise UserError("--trials must be at least 1")
        if self.workers < 1:
            raise UserError("--workers must be at least 1")
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError("--concurrency must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("--max-steps must be at least 1")
        if not self.reduction > 1:
            raise UserError(f"--reduction must be above 1, not {self.reduction:g}")
        return self

    @property
    def search_name(self) -> str:
        return self.name or f"tune-{Path(self.preset).stem}"


@dataclass(frozen=True)
class Plan:
    """How many trials (``num_samples`` draws of a grid of ``grid``), their steps and how often they
    validate."""

    num_samples: int
    trials: int
    grid: int
    val_every: int
    max_steps: int


@dataclass(frozen=True)
class Search:
    """A search as resolved from its request before Ray starts: names, places, space, plan, configs."""

    request: TuneRequest
    name: str
    storage: str
    exp_dir: str
    out_dir: Path
    space: dict[str, Any]
    plan: Plan
    preset_base: ModelConfig  # the preset + --set
    trial_base: ModelConfig  # ... with the per-trial step budget
    base_run: RunConfig
    data_path: str
    manifest: Manifest


@dataclass(frozen=True)
class TrialSetup:
    """What every trial is given (pickled to the Tune actors): the base config and run as dicts, the
    dataset, the MLflow parent run, the per-trial budget and each Train worker's resources."""

    base_config: dict[str, Any]
    prediction_types: list[str]
    base_run: dict[str, Any]
    preset: str
    data_path: str
    manifest: Manifest
    mlflow_uri: str
    experiment: str
    parent_run_id: str
    minutes: float | None
    cpus_per_worker: float
    use_gpu: bool
    torch_threads: int | None
    cache: bool
