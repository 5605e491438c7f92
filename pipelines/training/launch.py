"""One training run behind ``pipelines/train.py``: check the data and the run folder, start Ray and the
MLflow run, fit with Ray Train, then log, register and report the model.

``launch(request)`` returns the exit status (0 trained or already complete, 1 training failed) and
raises ``UserError`` for what the user can fix (a bad dataset, an incompatible run folder, an aborted
run). The outcome is printed as one ``[train] done: {...}`` line and, with ``request.result``,
written as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cli.files import resolve_local_or_remote, write_text_atomic
from pipelines.tracking import lineage, registry, runs
from pipelines.tracking.store import resolve_mlflow_uri, setup_mlflow
from pipelines.training import data, resume, trainer
from pipelines.training.config import RunConfig, TrainRequest
from synth.cli import UserError
from synth.ray_runtime import init_ray
from synth.schema import Manifest

CHAMPION_METRIC = "val/miou_free"


@dataclass(frozen=True)
class Launch:
    """A run ready to fit: its config with the launch facts set, where it lives, how it starts."""

    run: RunConfig
    run_dir: str
    manifest: Manifest
    mlflow_run_id: str
    cpus_per_worker: float
    use_gpu: bool
    origin: str  # "" (new, from scratch), " from <checkpoint>" (resumed) or " from <init>"


def launch(request: TrainRequest) -> int:
    """Train, log and register the model the request describes; the exit status."""
    started = time.time()
    ready = prepare(request, started)
    fit_started = time.time()
    result = fit(ready)
    return finish(request, ready, result, time.time() - fit_started)


def prepare(request: TrainRequest, started: float) -> Launch:
    """Check the dataset and run folder, start Ray and the MLflow run; print the run's header line."""
    run = request.run.replace(
        data_path=resolve_local_or_remote(request.run.data_path),
        storage=resolve_local_or_remote(request.run.storage),
    )
    manifest = data.check_dataset(run.data_path)
    run_dir = resume.run_dir(run.storage, run.name)
    resume_from = resume.check_compatible(run_dir, run.model)  # raises UserError on a mismatch
    init_from = resume.check_init(run.init, run.model) if resume_from is None else None

    relative = "://" not in request.run.storage and not Path(request.run.storage).is_absolute()
    if init_ray() == "cluster" and relative:
        print(f"[train] note: --storage {request.run.storage} is relative; on a cluster it is {run.storage}")
    import ray

    total_cpus = float(ray.cluster_resources().get("CPU", 1))
    use_gpu = run.gpu == "on" or (run.gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    cpus_per_worker = trainer.cpus_per_worker(total_cpus, run.workers, use_gpu)

    mlflow_uri = resolve_mlflow_uri(request.mlflow_uri)
    run_id, created = registry.find_or_create_run(
        setup_mlflow(mlflow_uri, request.experiment), run_dir, run.name
    )
    runs.log_run_start(run_id, run, created, manifest, preset=request.preset)
    lineage.log_dataset_input(run_id, run.data_path, manifest, "training")
    resume.save_run_config(run_dir, run.model)
    run = run.replace(
        shuffle_buffer=data.shuffle_buffer_size(run.shuffle, run.global_batch),
        torch_threads=max(1, int(total_cpus // run.workers)) if not use_gpu else None,
        deadline_unix=started + 60 * run.minutes if run.minutes else None,
        mlflow_uri=mlflow_uri,
        mlflow_run_id=run_id,
        fail_once_marker=str(Path(run_dir) / ".injected_failure") if "://" not in run_dir else "",
    )
    origin = (
        f" from {Path(resume_from.path).name}" if resume_from else f" from {init_from}" if init_from else ""
    )
    print(
        f"[train] {'starting' if resume_from is None else 'resuming'} run '{run.name}'{origin} in {run_dir}: "
        f"preset {request.preset}, "
        f"{run.workers} worker(s) x {cpus_per_worker:g} CPU{' + 1 GPU' if use_gpu else ''}, "
        f"global batch {run.global_batch}, {run.steps} steps; "
        f"MLflow {mlflow_uri} run {run_id}",
        flush=True,
    )
    return Launch(run, run_dir, manifest, run_id, cpus_per_worker, use_gpu, origin)


def fit(ready: Launch) -> Any:
    """Ray Train's ``Result`` of the run (the training data decoded into the object store first when
    ``--cache`` says so)."""
    import ray

    run = ready.run
    cache = data.should_cache(
        run.cache,
        ready.manifest,
        int(run.model.image_size),
        ray.available_resources().get("object_store_memory", 0),
    )
    if cache:
        print("[train] decoding the training samples once into Ray's object store (--cache)", flush=True)
    train_dataset = data.build_train_dataset(
        run.data_path, run.shuffle, cache, completion=run.model.order.enabled
    )
    return trainer.fit(run, train_dataset, ready.cpus_per_worker, ready.use_gpu)


def finish(request: TrainRequest, ready: Launch, result: Any, fit_seconds: float) -> int:
    """End the MLflow run; log and register the model of a finished run; print and write the outcome."""
    run_id, run = ready.mlflow_run_id, ready.run
    outcome = result.return_value or {}
    if result.error is not None:
        runs.end_run(run_id, "FAILED")
        print(f"error: training failed: {runs.short_error(result.error)}", file=sys.stderr)
        return 1
    if outcome.get("abort_reason") or result.checkpoint is None:
        runs.end_run(run_id, "FAILED")
        raise UserError(outcome.get("abort_reason") or "training produced no checkpoint")
    if outcome.get("already_complete"):
        print(
            f"[train] run '{run.name}' had already finished at step {outcome.get('step')}; nothing to train "
            "(raise --steps to continue it); the model is not registered again",
            flush=True,
        )
        runs.end_run(run_id, "FINISHED")
        write_result(
            request.result, {"status": "already_complete", "step": outcome.get("step"), "run_id": run_id}
        )
        return 0

    print(f"[train] fit finished in {fit_seconds:.0f} s; logging and registering the model", flush=True)
    with result.checkpoint.as_directory() as checkpoint_dir:
        summary = registry.log_and_register(
            run_id,
            checkpoint_dir,
            data.example_image(run.data_path),
            request.register_name if request.register else None,
            CHAMPION_METRIC,
            result.metrics.get(CHAMPION_METRIC),
            request.alias_policy,
            version_tags=lineage.version_tags(run.data_path, ready.manifest),
        )
        runs.log_final_checkpoint(run_id, checkpoint_dir)
    runs.log_learning_curve(run_id)
    runs.end_run(run_id, "FINISHED")
    summary.update(
        step=result.metrics.get("step"),
        checkpoint=result.checkpoint.path,
        run_id=run_id,
        **{k: v for k, v in result.metrics.items() if k.startswith("val/m") or k == "val/loss"},
    )
    print("[train] done: " + json.dumps(summary, default=str), flush=True)
    write_result(request.result, {"status": "trained", **summary})
    return 0


def write_result(path: str | None, result: dict[str, Any]) -> None:
    """The run's outcome as JSON at ``path`` (written atomically; nothing when ``path`` is None).

    ``status``: ``trained`` (with ``version``/``name`` when registered, ``checkpoint``, ``step``,
    ``run_id`` and the final ``val/*`` metrics) or ``already_complete`` (a rerun of a finished run).
    """
    if path:
        write_text_atomic(path, json.dumps(result, indent=2, default=str) + "\n")
