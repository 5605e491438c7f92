"""Self-describing checkpoint directories; loading needs no other arguments and unpickles nothing.

<dir>/config.json          ModelConfig.to_json()
<dir>/model.safetensors    raw weights
<dir>/ema.safetensors      EMA weights (the raw weights again when no EMA was given)
<dir>/meta.json            format version, step and other ``extra`` fields, parameter count
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sas_model.config import ModelConfig
from sas_model.model import SASModel
from sas_model.segmenter import SequentialSegmenter

FORMAT_VERSION = 1
CONFIG_FILE, MODEL_FILE, EMA_FILE, META_FILE = (
    "config.json",
    "model.safetensors",
    "ema.safetensors",
    "meta.json",
)
MODEL_FILES = (CONFIG_FILE, MODEL_FILE, EMA_FILE, META_FILE)  # what a served model needs, nothing else


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(
    directory: str | Path,
    model: SASModel,
    ema_state: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
    write_ema: bool = True,
) -> Path:
    """Write ``model`` (its ``cfg`` and weights), optional EMA weights and ``extra`` metadata (JSON-able).

    ``write_ema=False`` (no ``ema_state``): weights only, no second copy in ``ema.safetensors`` (a
    shipped model whose weights already are the EMA ones; loading falls back to ``model.safetensors``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    state = _tensors(model.state_dict())
    (directory / CONFIG_FILE).write_text(model.cfg.to_json())
    save_file(state, str(directory / MODEL_FILE))
    if ema_state is not None or write_ema:
        ema = _tensors(ema_state) if ema_state is not None else state
        if set(ema) != set(state):
            raise ValueError("ema_state keys do not match the model's state dict")
        save_file({k: v.to(state[k].dtype) for k, v in ema.items()}, str(directory / EMA_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "step": 0,
        "num_parameters": model.num_parameters(),
        "has_ema": ema_state is not None,
        "saved_unix": time.time(),
        "torch_version": torch.__version__,
    }
    meta.update(extra or {})
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_model(
    directory: str | Path, use_ema: bool = True, device: str | torch.device | None = None
) -> SASModel:
    """Rebuild the ``SASModel`` in eval mode from a checkpoint directory (EMA weights by default)."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint directory (no {CONFIG_FILE})")
    meta = load_meta(directory)
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format {meta['format_version']} is newer than this code ({FORMAT_VERSION})"
        )
    weights = directory / (EMA_FILE if use_ema and (directory / EMA_FILE).is_file() else MODEL_FILE)
    model = SASModel(ModelConfig.load(config_path))
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.to(device or "cpu").eval()


def load_segmenter(
    directory: str | Path,
    use_ema: bool = True,
    device: str | torch.device | None = None,
    **sampler_overrides: Any,
) -> SequentialSegmenter:
    """``SequentialSegmenter`` over the checkpoint's model; overrides patch the saved sampler config."""
    model = load_model(directory, use_ema=use_ema, device=device)
    sampler_cfg = model.cfg.replace(**{f"sampler.{k}": v for k, v in sampler_overrides.items()}).sampler
    return SequentialSegmenter(model, sampler_cfg=sampler_cfg, device=device)
