"""Validation during training (rank 0 only): val loss, per-layer IoU, and an overlay sheet PNG.

- **val loss**: the training objective on a fixed set of val layer samples, with a fixed noise seed so
  successive validations are comparable.
- **teacher-forced IoU** (``val/iou_tf/layer{k}``, ``val/iou_tf/terminal``, ``val/miou_tf``):
  ``predict_layer`` given the ground-truth cumulative mask ``C_k``, IoU against ``M_k`` per layer
  index; the terminal samples (``C_L`` = everything, empty target) are scored apart: an empty
  prediction scores 1.
- **free-running IoU** (``val/iou_free/layer{k}``, ``val/miou_free``): full ``segment()`` on a few
  scenes, predicted layer ``k`` against ground-truth layer ``k`` (a missing layer counts as empty).
  ``val/miou_free`` is the metric the registry's champion policy compares.

Evaluation uses the EMA weights, which are what gets exported.
"""

from __future__ import annotations

import tempfile
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.training.worker_log import say
from sas_model.metrics import mask_iou
from sas_model.metrics_report import MetricsAccumulator, ObjectsTruth, score_image
from sas_model.model import SASModel
from sas_model.overlay import overlay_sheet
from sas_model.segmenter import SequentialSegmenter
from synth.reader import collate_samples, iter_scenes, scene_to_samples


def _prediction_masks(prediction: Any) -> np.ndarray:
    """Bool masks [N,H,W] from a ``LayerPrediction`` (field name tolerant to the contract's wording)."""
    for name in ("layer_mask", "layer_masks", "mask", "masks"):
        if hasattr(prediction, name):
            return np.asarray(getattr(prediction, name)).astype(bool)
    raise AttributeError(f"LayerPrediction has no mask field: {sorted(vars(prediction))}")


VAL_BATCH = 32  # teacher-forced samples per forward
VAL_SAMPLES = 128  # teacher-forced samples scored (loss and IoU per layer)
VAL_MAX_STEPS = 25  # validation samples with at most this many denoising steps


def validation_sampler(sampler: Any) -> dict[str, Any]:
    """Sampler overrides for validation inside training: none when the preset's sampler is cheap
    (at most ``VAL_MAX_STEPS`` steps); else deterministic DDIM with ``VAL_MAX_STEPS`` steps (``paper``'s
    DDPM-1000 would cost 40x the training step budget per validation). Evaluation keeps the preset's."""
    if sampler.name == "ddpm" or sampler.steps > VAL_MAX_STEPS:
        return {"name": "ddim", "steps": VAL_MAX_STEPS, "eta": 0.0}
    return {}


def free_running_summary(
    segmenter: Any, scenes: list, seed: int = 0, sampler_overrides: dict | None = None
) -> tuple[dict[str, float], list]:
    """Segment ``scenes`` free-running (sampler ``seed``) and score them with ``metrics_report`` (the
    definitions of ``evaluate.py``, instance metrics and AP included); returns the summary and the
    per-scene results."""
    images = np.stack([scene.image for scene in scenes])
    results = segmenter.segment(images, seed=seed, **(sampler_overrides or {}))
    acc = MetricsAccumulator()
    for scene, result in zip(scenes, results, strict=True):
        truth = ObjectsTruth(scene.amodal_masks, scene.visible_masks, scene.occlusion_edges)
        acc.add(
            score_image(
                scene.layer_masks,
                result.layer_masks,
                objects_truth=truth if scene.has_instances else None,
                pred_objects=result.objects,
                unet_passes=result.unet_passes,
            )
        )
    return acc.summary(), results


class Validator:
    """Holds a fixed val subset and an eval copy of the model; ``run`` returns metrics for Ray/MLflow."""

    def __init__(self, run: Any, device: torch.device) -> None:
        """``run``: the ``RunConfig`` (its data, model config and ``val_scenes``/``val_free_scenes``)."""
        self.device = device
        self.batch_size = VAL_BATCH
        self.sampler_overrides = validation_sampler(run.model.sampler)
        scenes = list(islice(iter_scenes(run.data_path, split="val"), run.val_scenes))
        if not scenes:
            say("[train] warning: the dataset has no 'val' split; validation is skipped")
        self.scenes = scenes
        self.free_scenes = scenes[: run.val_free_scenes]
        samples = [s for scene in scenes for s in scene_to_samples(scene)]
        limit = VAL_SAMPLES
        self.samples = samples[:limit]
        self.terminal = [k == scene.num_layers for scene in scenes for k in range(scene.num_layers + 1)][
            :limit
        ]
        self.eval_model = SASModel(run.model).to(device).eval()
        self.out_dir = Path(tempfile.mkdtemp(prefix="sas-val-"))

    def _batches(self):
        for start in range(0, len(self.samples), self.batch_size):
            batch = collate_samples(self.samples[start : start + self.batch_size])
            terminal = np.array(self.terminal[start : start + self.batch_size])
            yield batch, terminal

    @torch.no_grad()
    def run(self, model: torch.nn.Module, ema: Any, step: int, logger: Any) -> dict[str, float]:
        if not self.samples:
            return {}
        self.eval_model.load_state_dict(ema.state_dict())
        metrics: dict[str, float] = {}
        losses = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            for batch, _ in self._batches():
                loss, _ = self.eval_model(
                    **{k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}
                )
                losses.append(float(loss))
        metrics["val/loss"] = float(np.mean(losses))

        segmenter = SequentialSegmenter(self.eval_model, device=self.device)
        per_layer: dict[str, list[float]] = {}
        for batch, terminal in self._batches():
            prediction = segmenter.predict_layer(
                batch["image"],
                batch["cumulative_mask"].astype(bool),
                seed=0,
                layer_index=batch["layer_index"],
                **self.sampler_overrides,
            )
            pred_masks = _prediction_masks(prediction)
            for i, k in enumerate(batch["layer_index"]):
                key = "terminal" if terminal[i] else f"layer{int(k)}"
                truth = batch["layer_mask"][i].astype(bool)
                per_layer.setdefault(key, []).append(mask_iou(pred_masks[i], truth))
        for k, values in sorted(per_layer.items()):
            metrics[f"val/iou_tf/{k}"] = float(np.mean(values))
        metrics["val/miou_tf"] = float(np.mean([v for values in per_layer.values() for v in values]))

        if self.free_scenes:
            metrics.update(self._free_running(segmenter, step, logger))
        return metrics

    def _free_running(self, segmenter: Any, step: int, logger: Any) -> dict[str, float]:
        """The free-running segmenter on ``free_scenes``, scored by ``metrics_report`` (the same
        definitions as ``evaluate.py``), plus an overlay sheet of the first 8."""
        summary, results = free_running_summary(segmenter, self.free_scenes, 0, self.sampler_overrides)
        shown = zip(self.free_scenes[:8], results, strict=False)  # the first 8 of the segmented scenes
        rows = [result.comparison_panels(scene.image, scene.layer_masks) for scene, result in shown]
        metrics = {
            f"val/iou_free/layer{k}": summary[f"iou_free/layer{k}"]
            for k in range(8)
            if f"iou_free/layer{k}" in summary
        }
        for key in (
            "miou_free",
            "layer_count_acc",
            "pair_order",
            "pair_order_decidable",
            "object_layer_acc",
            "trivial/layer0",
            "margin_free/layer0",
        ):
            if key in summary:
                metrics[f"val/{key}"] = summary[key]
        metrics["val/unet_passes"] = summary["unet_passes_mean"]  # per image
        from PIL import Image

        path = self.out_dir / f"overlay_step{step:07d}.png"
        Image.fromarray(overlay_sheet(rows, scale=max(1, 192 // rows[0][0].shape[0]))).save(path)
        logger.artifact(path, "overlays")
        logger.image(path, "val/overlay", step)
        return metrics


def val_line(step: int, metrics: dict[str, float]) -> str:
    """One console line for a validation: loss, IoU per layer (teacher-forced / free-running), the
    margin over the trivial answer, pair order and layer-count accuracy."""

    def num(key: str) -> str:
        return f"{metrics[key]:.3f}" if key in metrics else "-"

    layers = sorted(
        {int(k.rsplit("layer", 1)[1]) for k in metrics if "/layer" in k and k.rsplit("layer", 1)[1].isdigit()}
    )
    per_layer = " ".join(
        f"L{k} {num(f'val/iou_tf/layer{k}')}/{num(f'val/iou_free/layer{k}')}" for k in layers[:4]
    )
    return (
        f"[val] step {step}: loss {num('val/loss')} | IoU tf/free {per_layer} | "
        f"L0 trivial {num('val/trivial/layer0')} margin {num('val/margin_free/layer0')} | "
        f"pair order {num('val/pair_order')} (decidable {num('val/pair_order_decidable')}) | "
        f"object layer {num('val/object_layer_acc')} | layer count {num('val/layer_count_acc')}"
    )
