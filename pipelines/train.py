"""Train the sequential amodal segmenter with Ray Train, track it in MLflow, register the model.

Embedded (local Ray, MLflow in ./mlruns/mlflow.db, checkpoints in ./runs)::

    python pipelines/train.py --data data/shapes --preset tiny --workers 2 --minutes 15

Against a running cluster (the job's working dir ships synth/, sas_model/ and pipelines/ to every
worker; data and storage must be reachable from the cluster: absolute paths on a shared disk or
``s3://``, and a tracking server)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python pipelines/train.py --data s3://bucket/shapes --storage s3://bucket/runs \\
        --mlflow-uri http://mlflow:5000 --preset small --workers 2

(``.gitignore``d paths such as ``data/``, ``runs/``, ``mlruns/`` and ``.venv/`` are not uploaded.)
A plain driver started with ``RAY_ADDRESS=...`` ships the three packages as ``py_modules`` instead.

- Rerunning the same command (same ``--storage`` and ``--name``) resumes from the newest checkpoint
  (model, EMA, optimizer, step); a different model architecture is refused with a one-line error.
- ``--minutes`` is a wall-clock budget: training stops, checkpoints and registers when it runs out.
- The global batch (``train.batch_size``) stays the same for any ``--workers``.
- ``--cache auto`` decodes the training samples once into Ray's object store when they fit in a
  quarter of it (faster on few cores); bigger datasets are streamed and decoded every epoch.
- The final model is logged as an MLflow pyfunc, registered as ``--register-name`` (default
  ``sas``), and alias ``champion`` moves to it if its ``val/miou_free`` beats the current champion's.

Exit status: 0 done, 1 training failed, 2 bad input (one-line ``error:`` message).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.cli.args import training_parser
from pipelines.cli.env import apply_env_defaults
from pipelines.cli.files import resolve_local_or_remote, write_text_atomic
from pipelines.tracking.store import DEFAULT_EXPERIMENT, resolve_mlflow_uri, setup_mlflow
from pipelines.training.config import RunConfig
from synth.cli import UserError, fail, parse_number, parse_positive_float
from synth.ray_runtime import init_ray

CHAMPION_METRIC = "val/miou_free"


def build_parser() -> argparse.ArgumentParser:
    p = training_parser(
        __doc__,
        preset_help="tiny|small|paper or a preset JSON file",
        set_help="dotted config override, e.g. train.lr=3e-4 (repeatable)",
    )
    p.add_argument("--workers", type=parse_number, default=1, help="Ray Train workers (default 1)")
    p.add_argument("--steps", type=parse_number, help="optimiser steps (default: config train.steps)")
    p.add_argument("--minutes", type=parse_positive_float, help="wall-clock budget for the whole run")
    p.add_argument("--batch", type=parse_number, help="global batch (default: config train.batch_size)")
    p.add_argument(
        "--storage", default="runs", help="Ray Train storage path, local or s3:// (default ./runs)"
    )
    p.add_argument("--name", help="run name (default sas-<preset>); same name + storage resumes")
    p.add_argument("--register-name", default="sas", help="registered model name (default sas)")
    p.add_argument("--no-register", action="store_true", help="log the model but do not register it")
    p.add_argument(
        "--alias-policy",
        choices=("better", "always", "never"),
        default="better",
        help="move alias 'champion' if the new val metric is better (default), always or never",
    )
    p.add_argument("--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default sas)")
    p.add_argument("--gpu", choices=("auto", "on", "off"), default="auto", help="use GPUs (default: if any)")
    p.add_argument("--max-failures", type=parse_number, default=2, help="worker-group restarts")
    p.add_argument(
        "--placement",
        choices=("pack", "spread"),
        default="pack",
        help="worker placement: pack onto few nodes (default) or spread one per node where possible",
    )
    p.add_argument("--keep", type=parse_number, default=3, help="checkpoints kept (newest)")
    p.add_argument(
        "--collective-timeout",
        type=parse_number,
        default=RunConfig.collective_timeout_s,
        help="seconds a gloo/NCCL operation waits for a lost peer before it fails (default %(default)s; "
        "torch's own: 1800)",
    )
    p.add_argument(
        "--health-check-timeout",
        type=parse_positive_float,
        default=RunConfig.health_check_timeout_s,
        help="seconds a hung worker health check takes to declare the worker dead (default %(default)s; "
        "Ray's own: 600)",
    )
    p.add_argument("--ckpt-every", type=parse_number, help="steps between checkpoints")
    p.add_argument(
        "--val-every",
        type=parse_number,
        help="steps between validations, also run at the end (default train.val_every; 0: never)",
    )
    p.add_argument(
        "--val-scenes",
        type=parse_number,
        default=64,
        help="val scenes for loss and teacher-forced IoU (default 64)",
    )
    p.add_argument(
        "--val-free-scenes",
        type=parse_number,
        default=64,
        help="of those, scenes segmented free-running for IoU, pair order and the champion metric "
        "(default 64; the overlay sheet shows the first 8)",
    )
    p.add_argument("--log-every", type=parse_number, default=10, help="steps between progress lines")
    p.add_argument(
        "--shuffle",
        choices=("buffer", "global"),
        default="buffer",
        help="local shuffle buffer (default, streaming) or a full random_shuffle per epoch",
    )
    p.add_argument(
        "--max-bad-steps",
        type=parse_number,
        default=20,
        help="abort after this many non-finite loss steps in a row (default 20)",
    )
    p.add_argument(
        "--cache",
        choices=("auto", "on", "off"),
        default="auto",
        help="decode the training samples once into Ray's object store (auto: if they fit in 25%%)",
    )
    p.add_argument("--seed", type=parse_number, help="data/augmentation seed (default: train.seed)")
    p.add_argument(
        "--init",
        default="scratch",
        help="a new run starts from: scratch (default), pretrained (the shipped model, models/pretrained "
        "or $SAS_PRETRAINED_MODEL) or a checkpoint folder; a resumed run ignores it",
    )
    p.add_argument("--fail-once-at-step", type=parse_number, help=argparse.SUPPRESS)  # test hook
    p.add_argument("--inject-nan-from-step", type=parse_number, help=argparse.SUPPRESS)  # test hook
    return p


def build_config(args: argparse.Namespace) -> Any:
    """ModelConfig from the preset (name or JSON file), ``--set`` overrides and ``--steps/--batch``."""
    from pipelines.training.config import model_config

    return model_config(args.preset, dict(args.overrides), args.steps, args.batch)


def build_run_config(args: argparse.Namespace, data_path: str, storage: str) -> RunConfig:
    """The run configuration from the CLI flags (validated; the launch facts are set later)."""
    cfg = build_config(args)
    train = cfg.train
    try:
        return RunConfig(
            model=cfg,
            data_path=data_path,
            name=args.name or f"sas-{Path(args.preset).stem}",
            storage=storage,
            workers=int(args.workers),
            minutes=args.minutes,
            val_every=int(args.val_every if args.val_every is not None else train.val_every),
            val_scenes=int(args.val_scenes),
            val_free_scenes=int(args.val_free_scenes),
            ckpt_every=int(args.ckpt_every if args.ckpt_every is not None else train.ckpt_every),
            log_every=int(args.log_every),
            keep=int(args.keep),
            seed=int(args.seed if args.seed is not None else train.seed),
            max_bad_steps=int(args.max_bad_steps),
            shuffle=args.shuffle,
            cache=args.cache,
            placement=args.placement,
            max_failures=int(args.max_failures),
            gpu=args.gpu,
            init=args.init,
            collective_timeout_s=int(args.collective_timeout),
            health_check_timeout_s=float(args.health_check_timeout),
            fail_once_at_step=args.fail_once_at_step,
            inject_nan_from_step=args.inject_nan_from_step,
        ).validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except UserError as exc:
        fail(str(exc))


def _run(args: argparse.Namespace) -> int:
    from pipelines.tracking import lineage, registry, runs
    from pipelines.training import data, resume, trainer

    started = time.time()
    data_path = resolve_local_or_remote(args.data)
    manifest = data.check_dataset(data_path)
    run = build_run_config(args, data_path, resolve_local_or_remote(args.storage))
    cfg = run.model
    run_dir = resume.run_dir(run.storage, run.name)
    resume_from = resume.check_compatible(run_dir, cfg)  # raises UserError on a mismatch
    init_from = resume.check_init(run.init, cfg) if resume_from is None else None

    mode = init_ray()
    if mode == "cluster" and "://" not in args.storage and not Path(args.storage).is_absolute():
        print(f"[train] note: --storage {args.storage} is relative; on a cluster it is {run.storage}")
    import ray

    total_cpus = float(ray.cluster_resources().get("CPU", 1))
    use_gpu = run.gpu == "on" or (run.gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    cpus_per_worker = trainer.cpus_per_worker(total_cpus, run.workers, use_gpu)

    mlflow_uri = resolve_mlflow_uri(args.mlflow_uri)
    experiment_id = setup_mlflow(mlflow_uri, args.experiment)
    run_id, created = registry.find_or_create_run(experiment_id, run_dir, run.name)
    runs.log_run_start(run_id, run, created, manifest, preset=args.preset)
    lineage.log_dataset_input(run_id, data_path, manifest, "training")
    resume.save_run_config(run_dir, cfg)
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
        f"preset {args.preset}, "
        f"{run.workers} worker(s) x {cpus_per_worker:g} CPU{' + 1 GPU' if use_gpu else ''}, "
        f"global batch {run.global_batch}, {run.steps} steps; "
        f"MLflow {mlflow_uri} run {run_id}",
        flush=True,
    )

    fit_started = time.time()
    cache = data.should_cache(
        run.cache, manifest, int(cfg.image_size), ray.available_resources().get("object_store_memory", 0)
    )
    if cache:
        print("[train] decoding the training samples once into Ray's object store (--cache)", flush=True)
    train_dataset = data.build_train_dataset(
        data_path, run.shuffle, cache, completion=run.model.order.enabled
    )
    result = trainer.fit(run, train_dataset, cpus_per_worker, use_gpu)
    outcome = result.return_value or {}
    if result.error is not None:
        runs.end_run(run_id, "FAILED")
        print(f"error: training failed: {runs.short_error(result.error)}", file=sys.stderr)
        return 1
    if outcome.get("abort_reason"):
        runs.end_run(run_id, "FAILED")
        fail(outcome["abort_reason"])
    if result.checkpoint is None:
        runs.end_run(run_id, "FAILED")
        fail("training produced no checkpoint")
    if outcome.get("already_complete"):
        print(
            f"[train] run '{run.name}' had already finished at step {outcome.get('step')}; nothing to train "
            "(raise --steps to continue it); the model is not registered again",
            flush=True,
        )
        runs.end_run(run_id, "FINISHED")
        write_result(
            args.result, {"status": "already_complete", "step": outcome.get("step"), "run_id": run_id}
        )
        return 0

    print(
        f"[train] fit finished in {time.time() - fit_started:.0f} s; logging and registering the model",
        flush=True,
    )
    metric = result.metrics.get(CHAMPION_METRIC)
    with result.checkpoint.as_directory() as checkpoint_dir:
        summary = registry.log_and_register(
            run_id,
            checkpoint_dir,
            data.example_image(data_path),
            None if args.no_register else args.register_name,
            CHAMPION_METRIC,
            metric,
            args.alias_policy,
            version_tags=lineage.version_tags(data_path, manifest),
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
    write_result(args.result, {"status": "trained", **summary})
    return 0


def write_result(path: str | None, result: dict[str, Any]) -> None:
    """The run's outcome as JSON at ``path`` (written atomically; nothing when ``path`` is None).

    ``status``: ``trained`` (with ``version``/``name`` when registered, ``checkpoint``, ``step``,
    ``run_id`` and the final ``val/*`` metrics) or ``already_complete`` (a rerun of a finished run).
    """
    if path:
        write_text_atomic(path, json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
