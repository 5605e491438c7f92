"""Search noise schedules and samplers with Ray Tune: each trial is a Ray Train run of the segmenter.

Embedded (local Ray, MLflow in ./mlruns/mlflow.db, search state in ./tune_runs/<name>)::

    python pipelines/tune.py --data data/shapes --preset tiny --trials 8 --max-steps 300 --minutes 5

The default space (``pipelines/tuning/space.py``) is a grid over the four beta schedules with
zero-terminal-SNR, prediction type, validation sampler and steps, and learning rate drawn per trial;
``--space FILE`` (JSON/YAML) and ``--search KEY=SPEC`` change it, e.g.
``--search sampler.steps=5,10 --search train.lr=loguniform:1e-4,1e-2 --search sampler.name=``.
An invalid space (unknown schedule, zero-SNR with only ε, T below the sampler steps, ...) is
rejected with one ``error:`` line before Ray starts.

- Each trial is a function trainable that builds and fits the project's ``TorchTrainer`` (the same
  ``train_loop_per_worker`` as ``pipelines/train.py``), forwarding its reports to Tune with
  ``TuneReportCallback``. Trials validate and checkpoint every ``--val-every`` steps.
- ASHA (``--reduction``, grace period = one validation interval) stops weak trials early on the
  validation metric (``--metric``, default ``val/miou_free``); trials run as many at a time as the
  CPUs (one kept free for Ray Data) or GPUs allow, or ``--concurrency``.
- Budgets: ``--trials`` (a multiple of the grid size), ``--max-steps`` and ``--minutes`` per trial,
  ``--time-budget`` minutes for the whole search.
- MLflow: a parent run for the search, one child run per trial (its config, searched params and
  training/val metrics). At the end the trial table (printed; ``trials.csv``/``trials.md``), the
  schedule ranking, ``miou_vs_steps.png`` and ``best_preset.json`` go to ``--out`` and to the
  parent run's artifacts. ``python pipelines/train.py --preset <out>/best_preset.json`` trains the
  winner; ``--register`` also registers the best trial's model (champion policy as in train.py).
- Rerunning the same command (same ``--storage`` and ``--name``) resumes an interrupted search
  (``Tuner.restore``): finished trials are kept, unfinished ones continue from their last Train
  checkpoint. A different space or preset under the same name is refused.

Exit status: 0 done, 1 no trial produced a result, 2 bad input, 3 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.cli.args import training_parser
from pipelines.cli.env import apply_env_defaults
from pipelines.cli.files import resolve_local_or_remote
from pipelines.tracking.store import DEFAULT_EXPERIMENT, resolve_mlflow_uri, setup_mlflow
from pipelines.training.config import RunConfig
from pipelines.tuning import report as tune_report
from pipelines.tuning import space as tune_space
from pipelines.tuning.report import STATUS_TAG
from synth.cli import UserError, fail, parse_number, parse_positive_float
from synth.ray_runtime import init_ray

SEARCH_TAG = "sas.tune_dir"
TRIAL_TAG = "sas.tune_trial"
SEARCH_STATE_FILE = "sas_tune.json"
# The trial function only waits on its TorchTrainer, so it holds no CPU: a fractional CPU would leave
# Ray Data less than the whole CPU its read task and footer-reader actor each need to be scheduled
# (the read then hangs). Tune needs a non-empty bundle, so the driver asks for 1 MiB of memory.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}
METRICS = ("val/miou_free", "val/miou_tf")


def build_parser() -> argparse.ArgumentParser:
    p = training_parser(
        __doc__,
        preset_help="base config: tiny|small|paper or a preset JSON file",
        set_help="fixed override of the base config, e.g. sampler.ensemble_size=2 (repeatable)",
    )
    p.add_argument("--space", help="search space file (JSON or YAML); its keys replace the default's")
    p.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="search one key: grid:a,b | a,b (choice) | loguniform:lo,hi | uniform:lo,hi | value | '' (drop)",
    )
    p.add_argument("--no-default-space", action="store_true", help="start from an empty space")
    p.add_argument("--trials", type=parse_number, default=8, help="number of trials (default 8)")
    p.add_argument("--max-steps", type=parse_number, help="steps per trial (default: train.max_steps)")
    p.add_argument("--minutes", type=parse_positive_float, help="wall-clock budget per trial")
    p.add_argument("--time-budget", type=parse_positive_float, help="minutes for the whole search")
    p.add_argument("--val-every", type=parse_number, help="steps between validations (default max-steps/5)")
    p.add_argument("--metric", choices=METRICS, default="val/miou_free", help="what ASHA and the ranking use")
    p.add_argument("--reduction", type=float, default=2.0, help="ASHA reduction factor (default 2)")
    p.add_argument("--no-asha", action="store_true", help="run every trial to the end (FIFO)")
    p.add_argument("--workers", type=parse_number, default=1, help="Ray Train workers per trial")
    p.add_argument("--concurrency", type=parse_number, help="trials at a time (default: from CPUs/GPUs)")
    p.add_argument("--val-scenes", type=parse_number, default=16, help="val scenes (default 16)")
    p.add_argument("--val-free-scenes", type=parse_number, default=4, help="free-running (default 4)")
    p.add_argument("--storage", default="tune_runs", help="search + trial storage, local or s3://")
    p.add_argument("--name", help="search name (default tune-<preset>); same name + storage resumes")
    p.add_argument("--out", help="report folder (default <storage>/<name>/report, or ./tune_reports/<name>)")
    p.add_argument("--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default sas)")
    p.add_argument("--register", action="store_true", help="register the best trial's model")
    p.add_argument("--register-name", default="sas", help="registered model name (default sas)")
    p.add_argument("--alias-policy", choices=("better", "always", "never"), default="better")
    p.add_argument("--gpu", choices=("auto", "on", "off"), default="auto", help="use GPUs (default: if any)")
    p.add_argument("--seed", type=parse_number, default=0, help="search and data seed (default 0)")
    p.add_argument("--cache", choices=("auto", "on", "off"), default="auto", help="as in train.py")
    p.add_argument("--interrupt-after", type=parse_number, help=argparse.SUPPRESS)  # test hook
    return p


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (UserError, tune_space.SpaceError) as exc:
        fail(str(exc))


# ---- set-up (no Ray) ---------------------------------------------------------------------------
def _base_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(trial_base, preset_base)``: the preset + ``--set``, with and without the per-trial step budget."""
    from pipelines.training.config import model_config

    preset_base = model_config(args.preset, dict(args.overrides))
    trial_base = preset_base.replace(**{"train.max_steps": args.max_steps}) if args.max_steps else preset_base
    return trial_base, preset_base


def _plan(args: argparse.Namespace, space: dict[str, Any], max_steps: int) -> dict[str, int]:
    grid = tune_space.grid_size(space)
    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    if args.trials < grid:
        raise UserError(
            f"--trials {args.trials} is below the grid size {grid} (every grid combination is one trial); "
            f"raise --trials or turn a grid into a choice"
        )
    samples = args.trials // grid
    val_every = args.val_every if args.val_every else max(1, max_steps // 5)
    return {
        "num_samples": samples,
        "trials": samples * grid,
        "grid": grid,
        "val_every": min(val_every, max_steps),
    }


def _base_run(
    args: argparse.Namespace, trial_base: Any, data_path: str, exp_dir: str, val_every: int
) -> RunConfig:
    """The run configuration every trial derives its own from (``replace(model=..., name=...)``)."""
    try:
        return RunConfig(
            model=trial_base,
            data_path=data_path,
            name="trial",
            storage=f"{exp_dir}/train_runs",
            workers=int(args.workers),
            val_every=val_every,
            ckpt_every=val_every,
            log_every=val_every,
            val_scenes=int(args.val_scenes),
            val_free_scenes=int(args.val_free_scenes),
            keep=2,
            max_failures=1,
            seed=int(args.seed),
            cache=args.cache,
        ).validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_resume(exp_dir: str, state: dict[str, Any]) -> bool:
    """True if ``exp_dir`` holds this search already; ``UserError`` if it holds another one."""
    from pipelines.training import resume

    saved = resume.read_storage_text(f"{exp_dir}/{SEARCH_STATE_FILE}")
    if saved is None:
        resume.write_storage_text(f"{exp_dir}/{SEARCH_STATE_FILE}", json.dumps(state, indent=2))
        return False
    before = json.loads(saved)
    for key in ("space", "base_config", "trials"):
        if json.loads(json.dumps(before.get(key))) != json.loads(json.dumps(state.get(key))):
            raise UserError(
                f"search {exp_dir} was started with another {key.replace('_', ' ')}; "
                "rerun with the original arguments to resume, or use another --name or --storage"
            )
    return True


def _resources(args: argparse.Namespace, plan: dict[str, int]) -> dict[str, Any]:
    """Trials at a time, CPUs per Train worker and torch threads, from Ray's resources.

    One CPU stays free for Ray Data's read/map tasks (2 CPUs + fully booked Train workers hang).
    """
    import ray

    resources = ray.cluster_resources()
    total_cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    use_gpu = args.gpu == "on" or (args.gpu == "auto" and gpus > 0)
    workers = max(1, int(args.workers))
    spare = total_cpus - 1
    if use_gpu:
        by_device = int(gpus // workers)
        if by_device < 1:
            raise UserError(f"--workers {workers} needs {workers} GPUs per trial; Ray sees {gpus:g}")
        concurrency = args.concurrency or by_device
    else:
        concurrency = args.concurrency or max(1, int(spare // workers))
    concurrency = max(1, min(concurrency, plan["trials"]))
    cpus = math.floor(100 * min(1.0, spare / (concurrency * workers))) / 100
    if cpus < 0.05:
        raise UserError(
            f"--concurrency {concurrency} x --workers {workers} does not fit {total_cpus:g} CPUs "
            "(one is kept for Ray Data); lower them"
        )
    threads = None if use_gpu else max(1, int(total_cpus // (concurrency * workers)))
    return {
        "concurrency": concurrency,
        "cpus_per_worker": cpus,
        "use_gpu": use_gpu,
        "torch_threads": threads,
        "total_cpus": total_cpus,
    }


# ---- the trial (runs in a Tune actor) ---------------------------------------------------------
def run_trial(params: dict[str, Any], setup: dict[str, Any]) -> None:
    """Tune function trainable: one Ray Train run of the segmenter with the trial's config.

    Reports reach Tune through ``TuneReportCallback`` (every ``val_every`` steps: ``step``, train and
    val metrics, ``checkpoint_path``). A restarted trial resumes its Train run (same storage + name).
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.tracking import registry, runs
    from pipelines.training import data, resume, trainer
    from pipelines.training.worker_log import say

    started = time.time()
    trial_id = tune.get_context().get_trial_id()
    cfg = tune_space.trial_config(setup["base_config"], params, setup["prediction_types"])
    run = RunConfig.from_dict(setup["base_run"]).replace(model=cfg, name=f"trial-{trial_id}")
    run_dir = resume.run_dir(run.storage, run.name)
    resume.check_compatible(run_dir, cfg)

    experiment_id = setup_mlflow(setup["mlflow_uri"], setup["experiment"])
    run_id, created = registry.find_or_create_run(experiment_id, run_dir, run.name)
    runs.log_run_start(run_id, run, created, setup["manifest"], preset=setup["preset"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, "mlflow.parentRunId", setup["parent_run_id"])
    client.set_tag(run_id, TRIAL_TAG, trial_id)
    if created:
        effective = tune_space.effective_params(params, setup["prediction_types"])
        _log_params(run_id, {f"tune.{k}": v for k, v in effective.items()} | {"tune.trial_id": trial_id})
    resume.save_run_config(run_dir, cfg)

    run = run.replace(
        shuffle_buffer=data.shuffle_buffer_size(run.shuffle, run.global_batch),
        torch_threads=setup["torch_threads"],
        deadline_unix=started + 60 * setup["minutes"] if setup["minutes"] else None,
        mlflow_uri=setup["mlflow_uri"],
        mlflow_run_id=run_id,
    )
    summary = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(params.items()))
    say(f"[tune] trial {trial_id} starts: {summary}")
    train_dataset = data.build_train_dataset(
        run.data_path, run.shuffle, setup["cache"], completion=run.model.order.enabled
    )
    result = trainer.fit(
        run, train_dataset, setup["cpus_per_worker"], setup["use_gpu"], callbacks=[TuneReportCallback()]
    )
    outcome = result.return_value or {}
    if result.error is not None or outcome.get("abort_reason"):
        reason = outcome.get("abort_reason") or runs.short_error(result.error)
        runs.end_run(run_id, "FAILED")
        client.set_tag(run_id, STATUS_TAG, "error")
        raise RuntimeError(f"trial {trial_id} failed: {reason}")
    client.set_tag(run_id, STATUS_TAG, "completed")
    runs.end_run(run_id, "FINISHED")


# ---- progress lines on the driver -------------------------------------------------------------
def _progress_callback(metric: str, interrupt_after: int | None) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial report, completion and error (Tune's own tables are off)."""

        def __init__(self) -> None:
            self.completed = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            extra = " ".join(
                f"{key.split('/')[-1]} {result[key]:.3f}"
                for key in (metric, "val/miou_tf", "val/loss")
                if key in result
            )
            print(f"[tune] trial {trial.trial_id} step {result.get('step')}: {extra}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.completed += 1
            print(f"[tune] trial {trial.trial_id} finished ({self.completed} done)", flush=True)
            if interrupt_after and self.completed >= interrupt_after:  # test hook: as if Ctrl+C
                os.kill(os.getpid(), signal.SIGUSR1)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[tune] trial {trial.trial_id} errored", flush=True)

    return Progress()


# ---- the search ------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    from pipelines.tracking import registry
    from pipelines.training import data, resume, trainer

    trial_base, preset_base = _base_configs(args)
    space = tune_space.build_space(args.space, args.search, default=not args.no_default_space)
    checked = tune_space.check_space(space, trial_base.to_dict())
    max_steps = int(trial_base.train.max_steps)
    plan = _plan(args, space, max_steps)
    data_path = resolve_local_or_remote(args.data)
    manifest = data.check_dataset(data_path)
    if manifest.split_count("val") == 0:
        raise UserError(f"dataset {data_path} has no 'val' split; the search ranks trials on val mIoU")

    name = args.name or f"tune-{Path(args.preset).stem}"
    storage = resolve_local_or_remote(args.storage)
    exp_dir = resume.run_dir(storage, name)
    base_run = _base_run(args, trial_base, data_path, exp_dir, plan["val_every"])  # validated once
    out_dir = Path(
        args.out or (f"{exp_dir}/report" if "://" not in exp_dir else f"tune_reports/{name}")
    ).resolve()
    state = {"space": space, "base_config": trial_base.to_dict(), "trials": plan["trials"]}
    resuming = _check_resume(exp_dir, state)
    print(
        f"[tune] {'resuming' if resuming else 'starting'} search '{name}' in {exp_dir}: "
        f"{plan['trials']} trials ({plan['num_samples']} x grid {plan['grid']}), {max_steps} steps each, "
        f"validation every {plan['val_every']}; space ({checked} combinations checked):\n"
        + tune_space.describe(space),
        flush=True,
    )

    init_ray()
    import ray
    from ray import tune

    res = _resources(args, plan)
    mlflow_uri = resolve_mlflow_uri(args.mlflow_uri)
    experiment_id = setup_mlflow(mlflow_uri, args.experiment)
    parent_id, created = registry.find_or_create_run(experiment_id, exp_dir, name)
    if created:
        _log_search_params(parent_id, args, space, plan, res, trial_base)
    from mlflow.tracking import MlflowClient

    MlflowClient().set_tag(parent_id, "sas.kind", "tune")
    MlflowClient().update_run(parent_id, status="RUNNING")
    print(
        f"[tune] {res['concurrency']} trial(s) at a time, {args.workers} worker(s) x "
        f"{res['cpus_per_worker']:g} CPU{' + 1 GPU' if res['use_gpu'] else ''} each; "
        f"MLflow {mlflow_uri} parent run {parent_id}",
        flush=True,
    )

    setup = {
        "base_config": trial_base.to_dict(),
        "prediction_types": tune_space.allowed_prediction_types(space, trial_base.to_dict()),
        "base_run": base_run.to_dict(),
        "preset": args.preset,
        "data_path": data_path,
        "manifest": manifest,
        "mlflow_uri": mlflow_uri,
        "experiment": args.experiment,
        "parent_run_id": parent_id,
        "minutes": args.minutes,
        "cpus_per_worker": res["cpus_per_worker"],
        "use_gpu": res["use_gpu"],
        "torch_threads": res["torch_threads"],
        "cache": data.should_cache(
            args.cache,
            manifest,
            int(trial_base.image_size),
            ray.available_resources().get("object_store_memory", 0),
        ),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), TRIAL_DRIVER_RESOURCES)
    tune_storage, tune_fs = trainer.storage_location(storage)
    started = time.time()
    if resuming and tune.Tuner.can_restore(exp_dir, storage_filesystem=tune_fs):
        tuner = tune.Tuner.restore(
            exp_dir, trainable=trainable, resume_unfinished=True, storage_filesystem=tune_fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space.to_tune(space),
            tune_config=tune.TuneConfig(
                metric=args.metric,
                mode="max",
                num_samples=plan["num_samples"],
                time_budget_s=60 * args.time_budget if args.time_budget else None,
                scheduler=None if args.no_asha else _asha(plan, max_steps, args.reduction),
                search_alg=tune.search.BasicVariantGenerator(
                    max_concurrent=res["concurrency"], random_state=int(args.seed)
                ),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=tune_storage,
                storage_filesystem=tune_fs,
                verbose=0,
                callbacks=[_progress_callback(args.metric, args.interrupt_after)],
            ),
        )
    results = tuner.fit()
    elapsed = time.time() - started
    finished = results.num_terminated + results.num_errors  # trials not yet created are not in results
    budget_hit = bool(args.time_budget) and elapsed >= 60 * args.time_budget - 5
    if finished < plan["trials"] and not budget_hit:
        print(
            f"[tune] search interrupted after {elapsed / 60:.1f} min "
            f"({finished}/{plan['trials']} trials done); rerun the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        return 3

    return tune_report.finish(
        results, args, space, plan, setup, preset_base, name, exp_dir, out_dir, parent_id
    )


def _asha(plan: dict[str, int], max_steps: int, reduction: float) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    # max_t one past the last step: the trial ends by itself (closing its MLflow run) instead of being
    # stopped by the scheduler at its final report; the rungs (grace * reduction^k) are unchanged.
    return ASHAScheduler(
        time_attr="step",
        max_t=max_steps + 1,
        grace_period=min(plan["val_every"], max_steps),
        reduction_factor=max(1.01, reduction),
    )


def _log_search_params(
    parent_id: str, args: argparse.Namespace, space: dict, plan: dict, res: dict, base: Any
) -> None:
    params = {f"space.{k}": json.dumps(v) for k, v in space.items()}
    params.update(
        {
            "search.preset": args.preset,
            "search.trials": plan["trials"],
            "search.max_steps": int(base.train.max_steps),
            "search.val_every": plan["val_every"],
            "search.minutes_per_trial": args.minutes,
            "search.time_budget_min": args.time_budget,
            "search.metric": args.metric,
            "search.scheduler": "fifo" if args.no_asha else f"asha(rf={args.reduction:g})",
            "search.concurrency": res["concurrency"],
            "search.cpus_per_worker": res["cpus_per_worker"],
            "search.workers": args.workers,
            "search.data": args.data,
            "search.overrides": json.dumps(dict(args.overrides)),
        }
    )
    _log_params(parent_id, params)


def _log_params(run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        MlflowClient().log_batch(run_id, params=items[start : start + 100])


if __name__ == "__main__":
    sys.exit(main())
