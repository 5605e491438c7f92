"""Builds and runs the Ray Train ``TorchTrainer`` for ``pipelines/train.py``."""

from __future__ import annotations

import os
from typing import Any

from pipelines.training.config import RunConfig
from pipelines.training.worker import train_loop_per_worker
from synth.reader import open_filesystem

# Ray Train's controller declares a worker dead when its health check hangs this long (seconds).
HEALTH_CHECK_TIMEOUT_ENV = "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S"


def cpus_per_worker(total_cpus: float, workers: int, use_gpu: bool) -> float:
    """Logical CPUs per training worker, leaving at least one CPU to Ray Data.

    On a 2-CPU machine, 2 workers at 1 CPU each plus ``datasets=`` hang forever (Ray Data's read
    tasks never get a CPU), so workers get fractions: 1 worker -> 1 CPU, 2 workers -> 0.5 CPU each.
    """
    if use_gpu:
        return 1.0 if total_cpus >= workers + 1 else max(0.25, (total_cpus - 1) / workers)
    spare = max(0.25 * workers, total_cpus - 1)
    return max(0.25, min(1.0, spare / workers))


def fit(
    run: RunConfig,
    train_dataset: Any,
    cpus: float,
    use_gpu: bool,
    callbacks: list[Any] | None = None,
) -> Any:
    """Run the trainer for ``run`` and return its ``Result`` (``fit()`` errors are returned in
    ``result.error``). The workers receive ``run.to_dict()``.

    ``callbacks`` go to ``RunConfig(callbacks=...)``; ``pipelines/tune.py`` passes Ray Tune's
    ``TuneReportCallback`` so each trial's reports reach the Tuner.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage_path, storage_filesystem = storage_location(run.storage)
    # Ray Train hands this variable from the driver to its controller; a value the user exported wins.
    os.environ.setdefault(HEALTH_CHECK_TIMEOUT_ENV, str(run.health_check_timeout_s))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=run.to_dict(),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=run.collective_timeout_s),
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus},
            placement_strategy=run.placement.upper(),
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.keep),
            callbacks=list(callbacks or []),
        ),
        datasets={"train": train_dataset},
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        return _FailedResult(exc)


class _FailedResult:
    """Stand-in for ``ray.train.Result`` when ``fit()`` raised instead of returning an error."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.checkpoint = None
        self.metrics: dict[str, Any] = {}
        self.return_value = None


def storage_location(storage: str) -> tuple[str, Any]:
    """``(storage_path, filesystem)`` for ``RunConfig``: local paths as-is, ``s3://`` via pyarrow."""
    if storage.startswith("s3://"):
        filesystem, path = open_filesystem(storage)
        return path, filesystem
    return storage, None
