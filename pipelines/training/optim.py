"""Optimiser pieces of training: LR schedule, EMA, the one training step, the resumable trainer state.

Everything here is plain PyTorch (no Ray): the Ray Train worker, ``pipelines.bench.train``,
``pipelines.bench.learning`` and the probes all update a model through :class:`TrainStep`. The
trainer state is saved with ``torch.save`` of tensors and builtin containers only and always loaded
with ``weights_only=True`` (no arbitrary unpickling).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sas_model.precision import autocast, autocast_dtype

TRAINER_STATE_FILE = "trainer_state.pt"


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_ratio * base_lr``.

    ``step`` counts optimiser updates from 0; after ``total_steps`` the LR stays at the floor.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_ratio + (1.0 - min_ratio) * cosine)


class EMA:
    """Exponential moving average of a module's state (parameters and float buffers), kept in fp32.

    ``state_dict()`` has the same keys as the module's, so it loads into a fresh model directly.
    The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` so early averages are not
    dominated by the random initialisation (the usual trick for short runs).
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for key, value in module.state_dict().items():
            shadow = self.shadow[key]
            if value.dtype.is_floating_point:
                shadow.lerp_(value.detach().float(), 1.0 - decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int = 0) -> None:
        missing = set(self.shadow) ^ set(state)
        assert not missing, f"EMA state keys differ: {sorted(missing)[:5]}"
        for key, value in state.items():
            self.shadow[key].copy_(value.float() if value.dtype.is_floating_point else value)
        self.num_updates = num_updates


MODEL_INPUTS = ("image", "cumulative_mask", "layer_mask", "foreground", "occlusion", "layer_index")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The training optimiser: AdamW, betas (0.9, 0.999)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))


@dataclass
class StepResult:
    """What one :class:`TrainStep` call did: the loss, the gradient norm before clipping, and whether
    the update was applied (``finite``; a non-finite loss or gradient skips it)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    finite: bool
    logs: dict[str, float]


class TrainStep:
    """One optimiser update: autocast forward, backward (loss-scaled for fp16), gradient clipping,
    AdamW, EMA.

    ``forward`` is the module called for the loss (a DDP wrapper of ``model``; default ``model``);
    clipping, the optimiser and the EMA use ``model``'s parameters. The autocast dtype comes from
    ``precision`` (``train.precision``) on ``device``. A step whose gradient norm (or, in one process,
    loss) is not finite is skipped: no optimiser or EMA update, ``finite`` is False. Under DDP the
    gradients are identical on every rank after the all-reduce (a NaN anywhere makes them non-finite
    everywhere), so the gradient norm alone gives every rank the same decision.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: EMA,
        device: torch.device,
        precision: str,
        grad_clip: float,
        forward: nn.Module | None = None,
        world_size: int = 1,
    ) -> None:
        self.model, self.optimizer, self.ema = model, optimizer, ema
        self.forward = forward if forward is not None else model
        self.device, self.grad_clip, self.world_size = device, float(grad_clip), world_size
        self.amp_dtype = autocast_dtype(device, precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

    def __call__(self, batch: dict[str, torch.Tensor], lr: float, poison: bool = False) -> StepResult:
        """Update on ``batch`` (the :data:`MODEL_INPUTS` fields) at learning rate ``lr``.

        ``poison``: multiply the loss by NaN (the NaN-policy test hook)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.amp_dtype):
            loss, logs = self.forward(**{name: batch[name] for name in MODEL_INPUTS})
        if poison:
            loss = loss * float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        finite = bool(torch.isfinite(grad_norm)) and (
            self.world_size > 1 or bool(torch.isfinite(loss.detach()))
        )
        if finite:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        if finite:
            self.ema.update(self.model)
        return StepResult(loss.detach(), grad_norm.detach(), finite, logs)

    def precision_label(self) -> str:
        """``autocast bfloat16`` / ``fp32``: what the forward runs in."""
        return f"autocast {str(self.amp_dtype).removeprefix('torch.')}" if self.amp_dtype else "fp32"


@dataclass
class TrainerState:
    """Where training stands: optimiser updates done, data position and bookkeeping counters."""

    step: int = 0
    epoch: int = 0  # data passes started; a resumed run starts a fresh, differently shuffled pass
    batches_in_epoch: int = 0
    samples_seen: int = 0  # global samples (all workers)
    skipped_steps: int = 0  # non-finite loss/gradient steps skipped so far
    ema_updates: int = 0


def save_trainer_state(directory: str | Path, state: TrainerState, optimizer: torch.optim.Optimizer) -> None:
    """Write ``trainer_state.pt`` (optimizer state dict + ``TrainerState`` fields) into ``directory``."""
    payload: dict[str, Any] = {"trainer": asdict(state), "optimizer": optimizer.state_dict()}
    torch.save(payload, Path(directory) / TRAINER_STATE_FILE)


def load_trainer_state(directory: str | Path, optimizer: torch.optim.Optimizer | None = None) -> TrainerState:
    """Read ``trainer_state.pt`` with ``weights_only=True``; restores ``optimizer`` in place if given."""
    payload = torch.load(Path(directory) / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    return TrainerState(**payload["trainer"])
