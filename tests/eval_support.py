"""Helpers for the evaluate/predict tests: an untrained `tiny-sequential` checkpoint whose answer is known."""

from __future__ import annotations

from pathlib import Path

# two denoising steps, two members, three layers at most: a segment() of 64x64 costs milliseconds
FAST_SAMPLER = ["--steps", "2", "--ensemble", "2"]


def make_checkpoint(out: Path, head_bias: float = 0.0, seed: int = 0, **overrides) -> Path:
    """Save an untrained `tiny-sequential` model (max 3 layers) with ``sas_model.checkpoint.save_checkpoint``.

    The sequential model (no order head) decides every layer with the UNet alone, so one bias fixes
    its whole answer; the order-head path has its own known-answer tests (``test_order_head.py``).

    The UNet head starts at zero, so the model predicts x0 = ``head_bias`` everywhere: 0 gives empty
    layers (the segmenter stops at once), a positive bias gives full-frame layers up to ``max_layers``.
    """
    import torch

    from sas_model.checkpoint import save_checkpoint
    from sas_model.config import ModelConfig
    from sas_model.model import SASModel

    torch.manual_seed(seed)
    cfg = ModelConfig.preset("tiny-sequential").replace(**{"sampler.max_layers": 3, **overrides})
    model = SASModel(cfg.validate())
    with torch.no_grad():
        model.unet.head.bias.fill_(head_bias)
    return save_checkpoint(out, model)
