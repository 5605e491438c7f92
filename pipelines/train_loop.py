"""The per-worker training function run by Ray Train's ``TorchTrainer`` (``train_loop_per_worker``).

One optimiser step = one global batch split evenly across workers (``per_worker = global // N``),
DDP all-reduces the gradients (gloo on CPU, NCCL on GPU). Every rank calls ``ray.train.report`` at
the same steps (it is a barrier); only rank 0 attaches a checkpoint, validates and talks to MLflow.

Checkpoints are uploaded by ``upload_checkpoint``, Ray's own copy retried with backoff
(``pipelines.retry``), so a transient storage error costs seconds, not a worker-group restart.

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
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipelines.augment import perturb_cumulative_mask, random_hflip
from pipelines.data import SAMPLE_COLUMNS, SAMPLE_DTYPES
from pipelines.optim import EMA, TrainerState, load_trainer_state, lr_at, save_trainer_state
from pipelines.tracking import RankZeroLogger, quiet_ray_train_reports, say
from sas_model.precision import autocast, autocast_dtype


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
    from pipelines.retry import with_retries

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
    from sas_model.checkpoint import load_model

    with checkpoint.as_directory() as directory:
        model.load_state_dict(load_model(directory, use_ema=False, device="cpu").state_dict())
        state = load_trainer_state(directory, optimizer)
        ema.load_state_dict(load_model(directory, use_ema=True, device="cpu").state_dict(), state.ema_updates)
    return state


def _restore_newest_readable(
    checkpoint: Any, model: torch.nn.Module, ema: EMA, optimizer: Any, rank: int
) -> TrainerState:
    """Restore from ``checkpoint``; if it is unreadable (truncated upload, corrupt file), from the
    newest older checkpoint of the run that loads. Every rank walks the same list, so all agree."""
    from pipelines.runstate import checkpoint_candidates

    for candidate in checkpoint_candidates(checkpoint):
        try:
            return _restore(candidate, model, ema, optimizer)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: try the previous checkpoint
            if rank == 0:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                say(f"[train] warning: checkpoint {candidate.path} unreadable ({reason}); trying older")
    raise RuntimeError(f"no readable checkpoint in {checkpoint.path}/..; start a new run with another --name")


def _save(directory: str, model: torch.nn.Module, ema: EMA, optimizer: Any, state: TrainerState) -> None:
    from sas_model.checkpoint import save_checkpoint

    state.ema_updates = ema.num_updates
    save_checkpoint(
        directory,
        model,
        ema_state=ema.state_dict(),
        extra={"step": state.step, "epoch": state.epoch, "samples_seen": state.samples_seen},
    )
    save_trainer_state(directory, state, optimizer)


def _batches(shard: Any, state: TrainerState, per_worker_batch: int, loop_cfg: dict, device: torch.device):
    """Endless stream of (epoch, batch dict) from this worker's shard; one Ray Data pass per epoch."""
    epoch = state.epoch
    while True:
        produced = 0
        for batch in shard.iter_torch_batches(
            batch_size=per_worker_batch,
            drop_last=True,
            dtypes={name: getattr(torch, SAMPLE_DTYPES.get(name, "uint8")) for name in SAMPLE_COLUMNS},
            device=device,
            prefetch_batches=loop_cfg.get("prefetch_batches", 2),
            local_shuffle_buffer_size=loop_cfg.get("shuffle_buffer") or None,
            local_shuffle_seed=None if loop_cfg.get("seed") is None else loop_cfg["seed"] + 7919 * epoch,
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


def train_loop_per_worker(loop_cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry: ``loop_cfg`` is built by ``pipelines.train.build_loop_config``.

    Returns (rank 0's value reaches the driver as ``Result.return_value``) the final step, an
    ``abort_reason`` (NaN/inf loss: the driver prints it as a one-line error; no retry, since
    retrying a diverged run from the same checkpoint would diverge again) and ``already_complete``
    (a rerun of a finished run).
    """
    from sas_model.config import ModelConfig
    from sas_model.model import SASModel

    quiet_ray_train_reports()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if loop_cfg.get("torch_threads"):
        torch.set_num_threads(int(loop_cfg["torch_threads"]))
    cfg = ModelConfig.from_dict(loop_cfg["model_config"])
    seed = int(loop_cfg.get("seed") or 0)
    torch.manual_seed(seed + 1000 * rank)
    aug_generator = torch.Generator().manual_seed(seed + 17 + 1000 * rank)

    model = SASModel(cfg).to(device)
    ema = EMA(model, loop_cfg["ema_decay"])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=loop_cfg["lr"], weight_decay=loop_cfg["weight_decay"], betas=(0.9, 0.999)
    )
    if rank == 0:
        say(
            f"[train] rank 0 of {world_size} on {device}, {torch.get_num_threads()} torch threads, "
            f"code from {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}"
        )
    checkpoint = ray.train.get_checkpoint()
    state = TrainerState()
    if checkpoint:
        state = _restore_newest_readable(checkpoint, model, ema, optimizer, rank)
    if checkpoint and rank == 0:
        say(f"[train] resumed from step {state.step} (epoch {state.epoch})")
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)

    amp_dtype = autocast_dtype(device, cfg.train.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if rank == 0:
        precision = f"autocast {str(amp_dtype).removeprefix('torch.')}" if amp_dtype else "fp32"
        say(f"[train] precision: {precision} (train.precision={cfg.train.precision})")

    total_steps = int(loop_cfg["steps"])
    per_worker_batch = int(loop_cfg["global_batch"]) // world_size
    deadline = loop_cfg.get("deadline_unix")
    logger = RankZeroLogger(loop_cfg, enabled=rank == 0)
    validator = None
    if rank == 0 and loop_cfg.get("val_every"):
        from pipelines.validate import Validator, val_line

        validator = Validator(loop_cfg["data_path"], cfg, device, loop_cfg)

    shard = ray.train.get_dataset_shard("train")
    stream = _batches(shard, state, per_worker_batch, loop_cfg, device)
    loop_start = now = _rank0_clock(device) if deadline is not None else time.time()
    window = {"loss": 0.0, "count": 0, "wait": 0.0, "start": time.perf_counter(), "samples": 0}
    steady = {"samples": 0, "wait": 0.0, "time": 0.0, "windows": 0}  # all windows after the first
    consecutive_bad = 0
    fail_once = loop_cfg.get("fail_once_at_step")
    abort_reason = ""
    already_complete = state.step >= total_steps
    preempting = False  # a preemption notice arrived (and its step was checkpointed)

    while state.step < total_steps:
        t0 = time.perf_counter()
        epoch, batch = next(stream)
        window["wait"] += time.perf_counter() - t0
        if epoch != state.epoch:
            state.epoch, state.batches_in_epoch = epoch, 0
        state.batches_in_epoch += 1

        image, cumulative_mask, layer_mask, foreground, occlusion = random_hflip(
            batch["image"],
            batch["cumulative_mask"],
            batch["layer_mask"],
            batch["foreground"],
            batch["occlusion"],
            p=loop_cfg["hflip_p"],
            generator=aug_generator,
        )
        cumulative_mask = perturb_cumulative_mask(cumulative_mask, loop_cfg["cmask_noise_p"], aug_generator)
        lr_step = schedule_step(state.step, total_steps, loop_start, deadline, now)
        lr = lr_at(lr_step, loop_cfg["lr"], loop_cfg["warmup_steps"], total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        with autocast(device, amp_dtype):
            loss, _ = ddp_model(
                image, cumulative_mask, layer_mask, foreground, occlusion, batch["layer_index"]
            )
        if (
            loop_cfg.get("inject_nan_from_step") is not None
            and state.step >= loop_cfg["inject_nan_from_step"]
        ):
            loss = loss * float("nan")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        # Gradients are identical on every rank after DDP's all-reduce (a NaN/inf loss anywhere makes
        # them non-finite everywhere), so deciding on the gradient norm alone gives every rank the same
        # skip decision without extra communication.
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), loop_cfg["grad_clip"])
        finite = bool(torch.isfinite(grad_norm)) and (world_size > 1 or bool(torch.isfinite(loss.detach())))
        if not finite:
            scaler.update()
            consecutive_bad += 1
            state.skipped_steps += 1
            if rank == 0:
                say(
                    f"[train] warning: non-finite loss/gradient at step {state.step}; step skipped "
                    f"({consecutive_bad}/{loop_cfg['max_bad_steps']} in a row)"
                )
            if consecutive_bad >= loop_cfg["max_bad_steps"]:
                abort_reason = (
                    f"loss was NaN/inf for {consecutive_bad} steps in a row at step {state.step}; "
                    "lower train.lr or check the data (the last good checkpoint is kept)"
                )
                break
            continue
        consecutive_bad = 0
        scaler.step(optimizer)
        scaler.update()
        ema.update(model)
        state.step += 1
        state.samples_seen += per_worker_batch * world_size
        window["loss"] += float(loss.detach())
        window["count"] += 1
        window["samples"] += per_worker_batch * world_size

        if fail_once is not None and state.step == int(fail_once) and rank == 0:
            marker = loop_cfg["fail_once_marker"]
            if not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError(f"injected failure at step {state.step} (test hook)")

        out_of_time = False
        if deadline is not None:  # one broadcast per step, and only with a wall-clock budget
            now = _rank0_clock(device)
            out_of_time = now >= deadline
        last = state.step >= total_steps or out_of_time
        step = state.step
        just_preempted = not preempting and preemption_notice(rank, step)
        preempting = preempting or just_preempted
        if step % loop_cfg["log_every"] == 0 or last:
            elapsed = max(1e-9, time.perf_counter() - window["start"])
            train_metrics = {
                "train/loss": window["loss"] / max(1, window["count"]),
                "train/lr": lr,
                "train/samples_per_s": window["samples"] / elapsed,
                "train/data_wait_frac": window["wait"] / elapsed,
                "train/grad_norm": float(grad_norm),
                "train/epoch": float(state.epoch),
            }
            logger.progress(step, total_steps, train_metrics)
            steady["windows"] += 1
            if steady["windows"] > 1:  # the first window includes worker and Ray Data start-up
                steady["samples"] += window["samples"]
                steady["wait"] += window["wait"]
                steady["time"] += elapsed
            window = {"loss": 0.0, "count": 0, "wait": 0.0, "start": time.perf_counter(), "samples": 0}
        do_val = validator is not None and (step % loop_cfg["val_every"] == 0 or last)
        do_ckpt = step % loop_cfg["ckpt_every"] == 0 or last or just_preempted
        if not (do_ckpt or (loop_cfg.get("val_every") and step % loop_cfg["val_every"] == 0) or last):
            continue
        metrics: dict[str, Any] = {
            "step": step,
            "epoch": state.epoch,
            "samples_seen": state.samples_seen,
            "skipped_steps": state.skipped_steps,
            **logger.last_train_metrics,
        }
        if do_val:
            metrics.update(validator.run(model, ema, step, logger))
            if rank == 0:
                say(val_line(step, metrics))
        if rank == 0 and do_ckpt:
            with tempfile.TemporaryDirectory(prefix="sas-ckpt-") as tmp:
                _save(tmp, model, ema, optimizer, state)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=checkpoint_dir_name(step),
                    checkpoint_upload_fn=upload_checkpoint,
                )
        else:
            ray.train.report(metrics, checkpoint=None)
        logger.metrics(step, metrics)
        if last:
            break

    logger.close()
    return {
        "step": state.step,
        "abort_reason": abort_reason,
        "already_complete": already_complete,
        "steady_samples_per_s": steady["samples"] / steady["time"] if steady["time"] else None,
        "steady_data_wait_frac": steady["wait"] / steady["time"] if steady["time"] else None,
    }
