"""The per-worker training function run by Ray Train's ``TorchTrainer`` (``train_loop_per_worker``).

One optimiser step = one global batch split evenly across workers (``per_worker = global // N``),
DDP all-reduces the gradients (gloo on CPU, NCCL on GPU). Every rank calls ``ray.train.report`` at
the same steps (it is a barrier); only rank 0 attaches a checkpoint, validates and talks to MLflow.

Checkpoints are uploaded by ``upload_checkpoint``, Ray's own copy retried with backoff
(``pipelines.training.retry``), so a transient storage error costs seconds, not a worker-group restart.

Spot/preemptible nodes: when Ray is told a node of the worker group will be reclaimed (a drain
with reason preemption: ``infra/spot_drain.py`` on EC2, the KubeRay worker's ``preStop`` hook, or
``ray drain-node`` by hand), every rank learns it from ``ray.train.get_preemption_info()`` (a
collective, asked once per step) and the step it arrives at is checkpointed at once. Training then
goes on, as Ray advises: a run that ends before the node goes still finishes; otherwise Ray Train
restarts the workers at the reclaim deadline, on the preemption budget
(``FailureConfig.max_preemption_failures``, not ``--max-failures``), and they resume from that
checkpoint.

Checkpoint directory (written by rank 0): ``sas_model.checkpoint.save_checkpoint`` files (config,
weights, EMA weights, meta) plus ``trainer_state.pt`` (optimizer state, step, data position),
loaded back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipelines.training.augment import augment_batch
from pipelines.training.config import RunConfig
from pipelines.training.data import SAMPLE_COLUMNS, SAMPLE_DTYPES
from pipelines.training.optim import (
    EMA,
    TrainerState,
    TrainStep,
    load_trainer_state,
    lr_at,
    make_optimizer,
    save_trainer_state,
)
from pipelines.training.resume import checkpoint_candidates, resolve_init
from pipelines.training.retry import with_retries
from pipelines.training.validate import Validator, val_line
from pipelines.training.worker_log import RankZeroLogger, quiet_ray_train_reports, say
from sas_model.checkpoint import load_meta, load_model, save_checkpoint
from sas_model.model import SASModel


def checkpoint_dir_name(step: int) -> str:
    """``checkpoint_step00000300``: named by step (zero-padded, so name order is step order; Ray's
    former ``checkpoint_<timestamp>`` names of older runs sort before them)."""
    return f"checkpoint_step{int(step):08d}"


def upload_checkpoint(checkpoint: Any, dir_name: str) -> Any:
    """``checkpoint_upload_fn`` for ``ray.train.report``: Ray's own upload (the storage check, then a
    copy into ``<run dir>/<dir_name>``), repeated on storage errors by ``with_retries``.

    ``get_storage()`` is the handle Ray's docs name for custom uploads; a retry overwrites what a
    failed copy left.
    """
    storage = ray.train.get_context().get_storage()
    return with_retries(
        lambda: storage.persist_current_checkpoint(checkpoint, dir_name),
        f"checkpoint upload to {dir_name}",
    )


def preemption_notice(rank: int, step: int) -> bool:
    """Whether Ray reports that a node of this worker group will be reclaimed. A collective: every
    rank must call it at the same steps. Rank 0 prints one line when it does."""
    info = ray.train.get_preemption_info()
    if info is None:
        return False
    if rank == 0:
        left_s = None if not info.deadline_ms else max(0.0, info.deadline_ms / 1000 - time.time())
        deadline = "soon" if left_s is None else f"in {left_s:.0f} s"
        say(
            f"[train] preemption notice at step {step}: ranks {info.preempted_ranks} lose their node "
            f"{deadline}; checkpointing now"
        )
    return True


def _rank0_clock(device: torch.device) -> float:
    """Rank 0's ``time.time()`` on every rank (a broadcast; no-op without DDP), so time decisions
    (the LR position in a ``--minutes`` budget, when to stop) are the same on every rank."""
    now = time.time()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return now
    tensor = torch.tensor([now], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def _restore(checkpoint: Any, model: torch.nn.Module, ema: EMA, optimizer: Any) -> TrainerState:
    """Load model, EMA, optimiser and trainer state from ``checkpoint``, downloaded into a folder of this
    process's own. (``Checkpoint.as_directory`` shares one download between the processes of a node
    and deletes it when the last reader leaves; when a lost node put both ranks of a restarted worker
    group on one host, a rank read it while the other removed it: EOFError and truncated-zip errors
    on an intact checkpoint, every restart, until the run failed.)"""
    with tempfile.TemporaryDirectory(prefix="sas-restore-") as private:
        directory = checkpoint.to_directory(private)
        model.load_state_dict(load_model(directory, use_ema=False, device="cpu").state_dict())
        state = load_trainer_state(directory, optimizer)
        ema.load_state_dict(load_model(directory, use_ema=True, device="cpu").state_dict(), state.ema_updates)
    return state


def _restore_newest_readable(
    checkpoint: Any, model: torch.nn.Module, ema: EMA, optimizer: Any, rank: int
) -> TrainerState:
    """Restore from ``checkpoint``; if it is unreadable (truncated upload, corrupt file), from the
    newest older checkpoint of the run that loads. Every rank walks the same list, so all agree."""
    for candidate in checkpoint_candidates(checkpoint):
        try:
            return _restore(candidate, model, ema, optimizer)
        except Exception as exc:
            if rank == 0:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                say(f"[train] warning: checkpoint {candidate.path} unreadable ({reason}); trying older")
    raise RuntimeError(f"no readable checkpoint in {checkpoint.path}/..; start a new run with another --name")


def start_from(init: str, model: torch.nn.Module, ema: EMA) -> str:
    """Load the weights of the checkpoint ``init`` names (``resume.resolve_init``; its EMA weights when
    it has them) into ``model`` and restart ``ema`` from them; returns the folder and its samples."""
    path = resolve_init(init)
    model.load_state_dict(load_model(path, use_ema=True, device="cpu").state_dict())
    ema.load_state_dict({k: v.detach().float().clone() for k, v in model.state_dict().items()}, 0)
    seen = load_meta(path).get("samples_seen")
    return f"{path}" + (f" ({int(seen):,} samples seen)" if seen else "")


def _save(directory: str, model: torch.nn.Module, ema: EMA, optimizer: Any, state: TrainerState) -> None:
    state.ema_updates = ema.num_updates
    save_checkpoint(
        directory,
        model,
        ema_state=ema.state_dict(),
        extra={"step": state.step, "epoch": state.epoch, "samples_seen": state.samples_seen},
    )
    save_trainer_state(directory, state, optimizer)


def _batches(shard: Any, state: TrainerState, per_worker_batch: int, run: RunConfig, device: torch.device):
    """Endless stream of (epoch, batch dict) from this worker's shard; one Ray Data pass per epoch."""
    epoch = state.epoch
    while True:
        produced = 0
        for batch in shard.iter_torch_batches(
            batch_size=per_worker_batch,
            drop_last=True,
            dtypes={name: getattr(torch, SAMPLE_DTYPES.get(name, "uint8")) for name in SAMPLE_COLUMNS},
            device=device,
            prefetch_batches=run.prefetch_batches,
            local_shuffle_buffer_size=run.shuffle_buffer or None,
            local_shuffle_seed=run.seed + 7919 * epoch,
        ):
            produced += 1
            yield epoch, batch
        if produced == 0:
            raise RuntimeError(
                f"the training split yields no full batch of {per_worker_batch} samples per worker; "
                "generate more scenes or lower the batch size"
            )
        epoch += 1


def schedule_step(
    step: int, total_steps: int, loop_start: float, deadline: float | None, now: float | None = None
) -> int:
    """The step the LR schedule is at: with a wall-clock budget, the further of the step count and
    the elapsed fraction of the budget at ``now`` (default: this process's clock), so the cosine
    decay ends when the time does (a ``--minutes`` run that stops at step 2,000 of 3,000 still
    finishes at the low LR)."""
    if deadline is None or deadline <= loop_start:
        return step
    fraction = ((time.time() if now is None else now) - loop_start) / (deadline - loop_start)
    return max(step, min(total_steps, int(fraction * total_steps)))


class ThroughputMeter:
    """Loss, samples/s and data-wait fraction per progress window, and the steady-state figures over
    every window after the first (which holds worker and Ray Data start-up)."""

    def __init__(self) -> None:
        self._open()
        self.windows = 0
        self.steady_samples, self.steady_wait, self.steady_time = 0, 0.0, 0.0

    def _open(self) -> None:
        self.loss, self.count, self.wait, self.samples = 0.0, 0, 0.0, 0
        self.start = time.perf_counter()

    def step(self, loss: float, samples: int) -> None:
        self.loss, self.count, self.samples = self.loss + loss, self.count + 1, self.samples + samples

    def close(self, lr: float, grad_norm: float, epoch: int) -> dict[str, float]:
        """The window's ``train/*`` metrics; a new window starts."""
        elapsed = max(1e-9, time.perf_counter() - self.start)
        metrics = {
            "train/loss": self.loss / max(1, self.count),
            "train/lr": lr,
            "train/samples_per_s": self.samples / elapsed,
            "train/data_wait_frac": self.wait / elapsed,
            "train/grad_norm": grad_norm,
            "train/epoch": float(epoch),
        }
        self.windows += 1
        if self.windows > 1:
            self.steady_samples += self.samples
            self.steady_wait += self.wait
            self.steady_time += elapsed
        self._open()
        return metrics

    def steady(self) -> dict[str, float | None]:
        t = self.steady_time
        return {
            "steady_samples_per_s": self.steady_samples / t if t else None,
            "steady_data_wait_frac": self.steady_wait / t if t else None,
        }


class BadSteps:
    """The non-finite-loss policy: each skipped step warns; ``max_bad`` in a row abort the run."""

    def __init__(self, max_bad: int) -> None:
        self.max_bad, self.consecutive = max_bad, 0

    def skipped(self, step: int, rank: int) -> str:
        """Count a skipped step; return the abort reason once ``max_bad`` are in a row, else ""."""
        self.consecutive += 1
        if rank == 0:
            say(
                f"[train] warning: non-finite loss/gradient at step {step}; step skipped "
                f"({self.consecutive}/{self.max_bad} in a row)"
            )
        if self.consecutive < self.max_bad:
            return ""
        return (
            f"loss was NaN/inf for {self.consecutive} steps in a row at step {step}; "
            "lower train.lr or check the data (the last good checkpoint is kept)"
        )


def _report(metrics: dict[str, Any], to_save: tuple | None) -> None:
    """``ray.train.report`` (a barrier: every rank calls it at the same steps); with ``to_save``
    (model, EMA, optimizer, state; rank 0 only) a checkpoint named by the step goes with it."""
    if to_save is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="sas-ckpt-") as tmp:
        _save(tmp, *to_save)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=checkpoint_dir_name(metrics["step"]),
            checkpoint_upload_fn=upload_checkpoint,
        )


def _fail_once_hook(run: RunConfig, step: int, rank: int) -> None:
    """Test hook: rank 0 raises once at ``run.fail_once_at_step`` (a marker file makes it once)."""
    if run.fail_once_at_step is None or step != int(run.fail_once_at_step) or rank != 0:
        return
    if not os.path.exists(run.fail_once_marker):
        open(run.fail_once_marker, "w").close()
        raise RuntimeError(f"injected failure at step {step} (test hook)")


@dataclass(frozen=True)
class StepPlan:
    """What a finished optimiser step triggers. Every rank computes the same plan (the inputs are
    the same on every rank), because reporting to Ray Train is a barrier."""

    log: bool  # a progress line (rank 0)
    validate: bool  # a validation is due (rank 0 runs it)
    checkpoint: bool
    stop: bool  # the step budget or the wall-clock budget is spent

    @property
    def report(self) -> bool:
        """Whether this step reports to Ray Train (with a checkpoint or not)."""
        return self.checkpoint or self.validate or self.stop


def plan_step(
    step: int,
    total_steps: int,
    log_every: int,
    val_every: int,
    ckpt_every: int,
    out_of_time: bool = False,
    preempted: bool = False,
) -> StepPlan:
    """The plan after optimiser step ``step`` (1-based) of ``total_steps``: log every ``log_every``,
    validate every ``val_every`` (0: never), checkpoint every ``ckpt_every`` and when a preemption
    notice just arrived; the last step (or the one that runs out of time) does all three."""
    stop = step >= total_steps or out_of_time
    return StepPlan(
        log=step % log_every == 0 or stop,
        validate=bool(val_every) and (step % val_every == 0 or stop),
        checkpoint=step % ckpt_every == 0 or stop or preempted,
        stop=stop,
    )


@dataclass
class Worker:
    """One rank's training set-up (``set_up``): the run, its model, optimiser and where it stands."""

    run: RunConfig
    rank: int
    device: torch.device
    model: torch.nn.Module
    ema: EMA
    optimizer: Any
    state: TrainerState
    train_step: TrainStep
    logger: RankZeroLogger
    validator: Validator | None  # rank 0 with validation on
    augment_rng: torch.Generator


def set_up(config: dict[str, Any]) -> Worker:
    """Build this rank's model, EMA and optimiser; restore the newest readable checkpoint (or start from
    ``run.init``); wrap the model for DDP; make the logger and, on rank 0, the validator."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    run = RunConfig.from_dict(config)
    if run.torch_threads:
        torch.set_num_threads(run.torch_threads)
    cfg, tc = run.model, run.model.train
    torch.manual_seed(run.seed + 1000 * rank)
    augment_rng = torch.Generator().manual_seed(run.seed + 17 + 1000 * rank)

    model = SASModel(cfg).to(device)
    ema = EMA(model, tc.ema_decay)
    optimizer = make_optimizer(model, tc.lr, tc.weight_decay)
    if rank == 0:
        say(
            f"[train] rank 0 of {world_size} on {device}, {torch.get_num_threads()} torch threads, "
            f"code from {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}"
        )
    checkpoint = ray.train.get_checkpoint()
    state = (
        _restore_newest_readable(checkpoint, model, ema, optimizer, rank) if checkpoint else TrainerState()
    )
    if checkpoint and rank == 0:
        say(f"[train] resumed from step {state.step} (epoch {state.epoch})")
    if not checkpoint and run.init not in ("", "scratch"):
        start = start_from(run.init, model, ema)
        if rank == 0:
            say(f"[train] starting from the weights of {start}")
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)
    train_step = TrainStep(
        model, optimizer, ema, device, tc.precision, tc.grad_clip, forward=ddp_model, world_size=world_size
    )
    if rank == 0:
        say(f"[train] precision: {train_step.precision_label()} (train.precision={tc.precision})")
    validator = None
    if rank == 0 and run.val_every:
        validator = Validator(run, device)
    logger = RankZeroLogger(run.mlflow_uri, run.mlflow_run_id, enabled=rank == 0)
    return Worker(
        run=run,
        rank=rank,
        device=device,
        model=model,
        ema=ema,
        optimizer=optimizer,
        state=state,
        train_step=train_step,
        logger=logger,
        validator=validator,
        augment_rng=augment_rng,
    )


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry: ``config`` is a ``RunConfig.to_dict()`` (``pipelines.training.config``).

    Returns (rank 0's value reaches the driver as ``Result.return_value``) the final step, an
    ``abort_reason`` (NaN/inf loss: the driver prints it as a one-line error; no retry, since
    retrying a diverged run from the same checkpoint would diverge again), ``already_complete``
    (a rerun of a finished run) and the steady-state throughput.
    """
    quiet_ray_train_reports()
    w = set_up(config)
    run, state, tc, rank = w.run, w.state, w.run.model.train, w.rank
    total_steps, deadline = run.steps, run.deadline_unix
    stream = _batches(ray.train.get_dataset_shard("train"), state, run.per_worker_batch, run, w.device)
    loop_start = now = _rank0_clock(w.device) if deadline is not None else time.time()
    meter = ThroughputMeter()
    bad_steps = BadSteps(run.max_bad_steps)
    abort_reason = ""
    already_complete = state.step >= total_steps
    preempting = False  # a preemption notice arrived (and its step was checkpointed)

    while state.step < total_steps:
        t0 = time.perf_counter()
        epoch, batch = next(stream)
        meter.wait += time.perf_counter() - t0
        if epoch != state.epoch:
            state.epoch, state.batches_in_epoch = epoch, 0
        state.batches_in_epoch += 1

        batch = augment_batch(batch, tc.hflip_p, tc.cmask_noise_p, w.augment_rng)
        lr = lr_at(
            schedule_step(state.step, total_steps, loop_start, deadline, now),
            tc.lr,
            tc.warmup_steps,
            total_steps,
        )
        nan_from = run.inject_nan_from_step
        result = w.train_step(batch, lr, poison=nan_from is not None and state.step >= nan_from)
        if not result.finite:
            state.skipped_steps += 1
            abort_reason = bad_steps.skipped(state.step, rank)
            if abort_reason:
                break
            continue
        bad_steps.consecutive = 0
        state.step += 1
        state.samples_seen += run.global_batch
        meter.step(float(result.loss), run.global_batch)
        step = state.step
        _fail_once_hook(run, step, rank)

        out_of_time = False
        if deadline is not None:  # one broadcast per step, and only with a wall-clock budget
            now = _rank0_clock(w.device)
            out_of_time = now >= deadline
        just_preempted = not preempting and preemption_notice(rank, step)
        preempting = preempting or just_preempted
        plan = plan_step(
            step, total_steps, run.log_every, run.val_every, run.ckpt_every, out_of_time, just_preempted
        )
        if plan.log:
            w.logger.progress(step, total_steps, meter.close(lr, float(result.grad_norm), state.epoch))
        if plan.report:
            _report_step(w, step, plan)
        if plan.stop:
            break

    w.logger.close()
    return {
        "step": state.step,
        "abort_reason": abort_reason,
        "already_complete": already_complete,
        **meter.steady(),
    }


def _report_step(w: Worker, step: int, plan: StepPlan) -> None:
    """Validate (rank 0, when due), then report to Ray Train (with a checkpoint when planned) and
    log the step's metrics to MLflow."""
    state = w.state
    metrics: dict[str, Any] = {
        "step": step,
        "epoch": state.epoch,
        "samples_seen": state.samples_seen,
        "skipped_steps": state.skipped_steps,
        **w.logger.last_train_metrics,
    }
    if plan.validate and w.validator is not None:
        metrics.update(w.validator.run(w.model, w.ema, step, w.logger))
        say(val_line(step, metrics))
    to_save = (w.model, w.ema, w.optimizer, state) if w.rank == 0 and plan.checkpoint else None
    _report(metrics, to_save)
    w.logger.metrics(step, metrics)
