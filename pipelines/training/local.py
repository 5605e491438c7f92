"""Ray-free training in one process: the resumable state and the EMA copy that gets evaluated.

Used by the learning probe (``pipelines/bench/learning.py``) and the pretraining command
(``pipelines/pretrain.py``): both render their scenes on the fly (``pipelines.training.scenes``) and
take the same optimiser step as the Ray Train worker (``pipelines.training.optim.TrainStep``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from pipelines.training.optim import EMA
from sas_model.model import SASModel


def ema_model(model: SASModel, ema: EMA) -> SASModel:
    """A copy of ``model`` holding the EMA weights, in eval mode."""
    copy_ = copy.deepcopy(model).eval()
    copy_.load_state_dict(ema.state_dict())
    return copy_


class LocalState:
    """Model, EMA, optimiser, sample stream, counters and curve in one file (``path``), written
    atomically (temporary name, then rename), so an interrupted run resumes where it last saved.

    ``counters`` is a JSON-able dict of the caller's own (step, samples, seconds, ...)."""

    def __init__(self, path: Path, model: SASModel, ema: EMA, opt: torch.optim.Optimizer, stream: Any):
        self.path, self.model, self.ema, self.opt, self.stream = Path(path), model, ema, opt, stream

    def load(self, device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """``(counters, curve)`` after restoring every part, or None when nothing was saved."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location=device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"], int(state.get("ema_updates", state.get("step", 0))))
        self.opt.load_state_dict(state["optimizer"])
        self.stream.restore(state["stream"])
        counters = (
            json.loads(state["counters"])
            if "counters" in state
            else {
                "step": int(state["step"]),
                "train_s": float(state["train_s"]),
            }
        )
        return counters, json.loads(state["curve"])

    def save(self, counters: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "ema_updates": self.ema.num_updates,
            "optimizer": self.opt.state_dict(),
            "stream": self.stream.state(),
            "counters": json.dumps(counters),
            "curve": json.dumps(curve),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)
