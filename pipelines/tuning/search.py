"""The schedule search behind ``pipelines/tune.py``: plan it (no Ray), run it with Ray Tune (one Ray
Train run per trial), hand the results to ``tuning.report``.

``run(request)`` returns the exit status (0 done, 1 no trial produced a result, 3 interrupted).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cli.files import resolve_local_or_remote
from pipelines.tracking import registry, runs
from pipelines.tracking.store import resolve_mlflow_uri, setup_mlflow
from pipelines.training import data, resume, trainer
from pipelines.training.config import RunConfig, model_config
from pipelines.training.worker_log import say
from pipelines.tuning import report as tune_report
from pipelines.tuning import space as tune_space
from pipelines.tuning.report import STATUS_TAG
from pipelines.tuning.request import Plan, Search, TrialSetup, TuneRequest
from sas_model.config import ModelConfig
from synth.cli import UserError
from synth.ray_runtime import init_ray

TRIAL_TAG = "sas.tune_trial"
SEARCH_STATE_FILE = "sas_tune.json"
# The trial function only waits on its TorchTrainer, so it holds no CPU: a fractional CPU would leave
# Ray Data less than the whole CPU its read task and footer-reader actor each need to be scheduled
# (the read then hangs). Tune needs a non-empty bundle, so the driver asks for 1 MiB of memory.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}


@dataclass(frozen=True)
class Resources:
    """Trials at a time and each Train worker's share of the cluster."""

    concurrency: int
    cpus_per_worker: float
    use_gpu: bool
    torch_threads: int | None
    total_cpus: float


# ---- set-up (no Ray) ---------------------------------------------------------------------------
def make_plan(request: TuneRequest, space: dict[str, Any], max_steps: int) -> Plan:
    grid = tune_space.grid_size(space)
    if request.trials < grid:
        raise UserError(
            f"--trials {request.trials} is below the grid size {grid} (every grid combination is one "
            "trial); raise --trials or turn a grid into a choice"
        )
    samples = request.trials // grid
    val_every = request.val_every if request.val_every else max(1, max_steps // 5)
    return Plan(samples, samples * grid, grid, min(val_every, max_steps), max_steps)


def base_run(
    request: TuneRequest, trial_base: ModelConfig, data_path: str, exp_dir: str, val_every: int
) -> RunConfig:
    """The run configuration every trial derives its own from (``replace(model=..., name=...)``)."""
    try:
        return RunConfig(
            model=trial_base,
            data_path=data_path,
            name="trial",
            storage=f"{exp_dir}/train_runs",
            workers=request.workers,
            val_every=val_every,
            ckpt_every=val_every,
            log_every=val_every,
            val_scenes=request.val_scenes,
            val_free_scenes=request.val_free_scenes,
            keep=2,
            max_failures=1,
            seed=request.seed,
            cache=request.cache,
        ).validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def check_resume(exp_dir: str, state: dict[str, Any]) -> bool:
    """True if ``exp_dir`` holds this search already; ``UserError`` if it holds another one."""
    saved = resume.read_storage_text(f"{exp_dir}/{SEARCH_STATE_FILE}")
    if saved is None:
        resume.write_storage_text(f"{exp_dir}/{SEARCH_STATE_FILE}", json.dumps(state, indent=2))
        return False
    before = json.loads(saved)
    if isinstance(before.get("base_config"), dict):  # a search saved before a config key was retired
        before["base_config"] = ModelConfig.from_dict(before["base_config"]).to_dict()
    for key in ("space", "base_config", "trials"):
        if json.loads(json.dumps(before.get(key))) != json.loads(json.dumps(state.get(key))):
            raise UserError(
                f"search {exp_dir} was started with another {key.replace('_', ' ')}; "
                "rerun with the original arguments to resume, or use another --name or --storage"
            )
    return True


def prepare(request: TuneRequest) -> tuple[Search, bool]:
    """The search the request describes, checked before Ray starts, and whether it resumes."""
    preset_base = model_config(request.preset, request.overrides)
    trial_base = (
        preset_base.replace(**{"train.max_steps": request.max_steps}) if request.max_steps else preset_base
    )
    space = tune_space.build_space(request.space, request.search, default=request.default_space)
    checked = tune_space.check_space(space, trial_base.to_dict())
    plan = make_plan(request, space, int(trial_base.train.max_steps))
    data_path = resolve_local_or_remote(request.data)
    manifest = data.check_dataset(data_path)
    if manifest.split_count("val") == 0:
        raise UserError(f"dataset {data_path} has no 'val' split; the search ranks trials on val mIoU")
    name = request.search_name
    storage = resolve_local_or_remote(request.storage)
    exp_dir = resume.run_dir(storage, name)
    out = request.out or (f"{exp_dir}/report" if "://" not in exp_dir else f"tune_reports/{name}")
    search = Search(
        request=request,
        name=name,
        storage=storage,
        exp_dir=exp_dir,
        out_dir=Path(out).resolve(),
        space=space,
        plan=plan,
        preset_base=preset_base,
        trial_base=trial_base,
        base_run=base_run(request, trial_base, data_path, exp_dir, plan.val_every),  # validated once
        data_path=data_path,
        manifest=manifest,
    )
    resuming = check_resume(
        exp_dir, {"space": space, "base_config": trial_base.to_dict(), "trials": plan.trials}
    )
    print(
        f"[tune] {'resuming' if resuming else 'starting'} search '{name}' in {exp_dir}: "
        f"{plan.trials} trials ({plan.num_samples} x grid {plan.grid}), {plan.max_steps} steps each, "
        f"validation every {plan.val_every}; space ({checked} combinations checked):\n"
        + tune_space.describe(space),
        flush=True,
    )
    return search, resuming


def resources(request: TuneRequest, trials: int) -> Resources:
    """Trials at a time, CPUs per Train worker and torch threads, from Ray's resources.

    One CPU stays free for Ray Data's read/map tasks (2 CPUs + fully booked Train workers hang).
    """
    import ray

    cluster = ray.cluster_resources()
    total_cpus = float(cluster.get("CPU", 1))
    gpus = float(cluster.get("GPU", 0))
    use_gpu = request.gpu == "on" or (request.gpu == "auto" and gpus > 0)
    workers = request.workers
    spare = total_cpus - 1
    if use_gpu:
        by_device = int(gpus // workers)
        if by_device < 1:
            raise UserError(f"--workers {workers} needs {workers} GPUs per trial; Ray sees {gpus:g}")
        concurrency = request.concurrency or by_device
    else:
        concurrency = request.concurrency or max(1, int(spare // workers))
    concurrency = max(1, min(concurrency, trials))
    cpus = math.floor(100 * min(1.0, spare / (concurrency * workers))) / 100
    if cpus < 0.05:
        raise UserError(
            f"--concurrency {concurrency} x --workers {workers} does not fit {total_cpus:g} CPUs "
            "(one is kept for Ray Data); lower them"
        )
    threads = None if use_gpu else max(1, int(total_cpus // (concurrency * workers)))
    return Resources(concurrency, cpus, use_gpu, threads, total_cpus)


# ---- the trial (runs in a Tune actor) ---------------------------------------------------------
def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: one Ray Train run of the segmenter with the trial's config.

    Reports reach Tune through ``TuneReportCallback`` (every ``val_every`` steps: ``step``, train and
    val metrics, ``checkpoint_path``). A restarted trial resumes its Train run (same storage + name).
    """
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    started = time.time()
    trial_id = tune.get_context().get_trial_id()
    cfg = tune_space.trial_config(setup.base_config, params, setup.prediction_types)
    run = RunConfig.from_dict(setup.base_run).replace(model=cfg, name=f"trial-{trial_id}")
    run_dir = resume.run_dir(run.storage, run.name)
    resume.check_compatible(run_dir, cfg)

    experiment_id = setup_mlflow(setup.mlflow_uri, setup.experiment)
    run_id, created = registry.find_or_create_run(experiment_id, run_dir, run.name)
    runs.log_run_start(run_id, run, created, setup.manifest, preset=setup.preset)
    client = MlflowClient()
    client.set_tag(run_id, "mlflow.parentRunId", setup.parent_run_id)
    client.set_tag(run_id, TRIAL_TAG, trial_id)
    if created:
        effective = tune_space.effective_params(params, setup.prediction_types)
        log_params(run_id, {f"tune.{k}": v for k, v in effective.items()} | {"tune.trial_id": trial_id})
    resume.save_run_config(run_dir, cfg)

    run = run.replace(
        shuffle_buffer=data.shuffle_buffer_size(run.shuffle, run.global_batch),
        torch_threads=setup.torch_threads,
        deadline_unix=started + 60 * setup.minutes if setup.minutes else None,
        mlflow_uri=setup.mlflow_uri,
        mlflow_run_id=run_id,
    )
    summary = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(params.items()))
    say(f"[tune] trial {trial_id} starts: {summary}")
    train_dataset = data.build_train_dataset(
        run.data_path, run.shuffle, setup.cache, completion=run.model.order.enabled
    )
    result = trainer.fit(
        run, train_dataset, setup.cpus_per_worker, setup.use_gpu, callbacks=[TuneReportCallback()]
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
def progress_callback(metric: str, interrupt_after: int | None) -> Any:
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
def run(request: TuneRequest) -> int:
    """Plan, run (or resume) and report the search; the exit status."""
    search, resuming = prepare(request)
    plan = search.plan
    init_ray()
    import ray

    res = resources(request, plan.trials)
    mlflow_uri = resolve_mlflow_uri(request.mlflow_uri)
    parent_id = start_parent_run(search, plan, res, mlflow_uri)
    print(
        f"[tune] {res.concurrency} trial(s) at a time, {request.workers} worker(s) x "
        f"{res.cpus_per_worker:g} CPU{' + 1 GPU' if res.use_gpu else ''} each; "
        f"MLflow {mlflow_uri} parent run {parent_id}",
        flush=True,
    )
    setup = TrialSetup(
        base_config=search.trial_base.to_dict(),
        prediction_types=tune_space.allowed_prediction_types(search.space, search.trial_base.to_dict()),
        base_run=search.base_run.to_dict(),
        preset=request.preset,
        data_path=search.data_path,
        manifest=search.manifest,
        mlflow_uri=mlflow_uri,
        experiment=request.experiment,
        parent_run_id=parent_id,
        minutes=request.minutes,
        cpus_per_worker=res.cpus_per_worker,
        use_gpu=res.use_gpu,
        torch_threads=res.torch_threads,
        cache=data.should_cache(
            request.cache,
            search.manifest,
            int(search.trial_base.image_size),
            ray.available_resources().get("object_store_memory", 0),
        ),
    )
    started = time.time()
    results = tuner(search, plan, res, setup, resuming).fit()
    elapsed = time.time() - started
    finished = results.num_terminated + results.num_errors  # trials not yet created are not in results
    budget_hit = bool(request.time_budget) and elapsed >= 60 * request.time_budget - 5
    if finished < plan.trials and not budget_hit:
        print(
            f"[tune] search interrupted after {elapsed / 60:.1f} min "
            f"({finished}/{plan.trials} trials done); rerun the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        return 3
    return tune_report.finish(results, search, setup)


def start_parent_run(search: Search, plan: Plan, res: Resources, mlflow_uri: str) -> str:
    """The search's MLflow parent run (found again when resuming), marked running."""
    from mlflow.tracking import MlflowClient

    experiment_id = setup_mlflow(mlflow_uri, search.request.experiment)
    parent_id, created = registry.find_or_create_run(experiment_id, search.exp_dir, search.name)
    if created:
        log_search_params(parent_id, search, plan, res)
    MlflowClient().set_tag(parent_id, "sas.kind", "tune")
    MlflowClient().update_run(parent_id, status="RUNNING")
    return parent_id


def tuner(search: Search, plan: Plan, res: Resources, setup: TrialSetup, resuming: bool) -> Any:
    """A new Ray Tune ``Tuner`` for the search, or the interrupted one restored."""
    from ray import tune

    request = search.request
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), TRIAL_DRIVER_RESOURCES)
    tune_storage, tune_fs = trainer.storage_location(search.storage)
    if resuming and tune.Tuner.can_restore(search.exp_dir, storage_filesystem=tune_fs):
        return tune.Tuner.restore(
            search.exp_dir, trainable=trainable, resume_unfinished=True, storage_filesystem=tune_fs
        )
    return tune.Tuner(
        trainable,
        param_space=tune_space.to_tune(search.space),
        tune_config=tune.TuneConfig(
            metric=request.metric,
            mode="max",
            num_samples=plan.num_samples,
            time_budget_s=60 * request.time_budget if request.time_budget else None,
            scheduler=asha(plan, request.reduction) if request.asha else None,
            search_alg=tune.search.BasicVariantGenerator(
                max_concurrent=res.concurrency, random_state=request.seed
            ),
        ),
        run_config=tune.RunConfig(
            name=search.name,
            storage_path=tune_storage,
            storage_filesystem=tune_fs,
            verbose=0,
            callbacks=[progress_callback(request.metric, request.interrupt_after)],
        ),
    )


def asha(plan: Plan, reduction: float) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    # max_t one past the last step: the trial ends by itself (closing its MLflow run) instead of being
    # stopped by the scheduler at its final report; the rungs (grace * reduction^k) are unchanged.
    return ASHAScheduler(
        time_attr="step",
        max_t=plan.max_steps + 1,
        grace_period=min(plan.val_every, plan.max_steps),
        reduction_factor=reduction,
    )


def log_search_params(parent_id: str, search: Search, plan: Plan, res: Resources) -> None:
    request = search.request
    params = {f"space.{k}": json.dumps(v) for k, v in search.space.items()}
    params.update(
        {
            "search.preset": request.preset,
            "search.trials": plan.trials,
            "search.max_steps": plan.max_steps,
            "search.val_every": plan.val_every,
            "search.minutes_per_trial": request.minutes,
            "search.time_budget_min": request.time_budget,
            "search.metric": request.metric,
            "search.scheduler": f"asha(rf={request.reduction:g})" if request.asha else "fifo",
            "search.concurrency": res.concurrency,
            "search.cpus_per_worker": res.cpus_per_worker,
            "search.workers": request.workers,
            "search.data": request.data,
            "search.overrides": json.dumps(request.overrides),
        }
    )
    log_params(parent_id, params)


def log_params(run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        MlflowClient().log_batch(run_id, params=items[start : start + 100])
