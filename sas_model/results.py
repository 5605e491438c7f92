"""Result objects of the segmenter (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sas_model import overlay
from sas_model.codec import mask_to_b64png
from sas_model.instances import SegmentedObject


@dataclass
class SegmentationResult:
    """One image's sequential segmentation, front layer first.

    ``layer_masks bool[L,H,W]`` (consensus per layer), ``uncertainty float32[L,H,W]`` (per-pixel
    variance over the surviving ensemble members, in [0, 0.25]), ``agreement float32[L,H,W]`` (fraction
    of all members voting foreground), ``objects`` (instances, ``id`` in front-to-back order),
    ``occlusion_edges`` ``(front_id, back_id)``, ``unet_passes`` spent on this image, ``stop_reason``
    (``"no_sample"`` | ``"empty"`` | ``"max_layers"``).
    """

    layer_masks: np.ndarray
    uncertainty: np.ndarray
    agreement: np.ndarray
    objects: list[SegmentedObject] = field(default_factory=list)
    occlusion_edges: list[tuple[int, int]] = field(default_factory=list)
    unet_passes: int = 0
    stop_reason: str = ""

    @property
    def num_layers(self) -> int:
        return int(self.layer_masks.shape[0])

    def to_dict(self, encode_masks: bool = True) -> dict[str, Any]:
        """JSON-able dict; masks as base64 PNG strings (or bool arrays with ``encode_masks=False``)."""
        enc = mask_to_b64png if encode_masks else (lambda m: np.asarray(m, dtype=bool))
        return {
            "num_layers": self.num_layers,
            "layers": [enc(m) for m in self.layer_masks],
            "layer_uncertainty": [
                float(u[m].mean()) if m.any() else 0.0
                for u, m in zip(self.uncertainty, self.layer_masks, strict=True)
            ],
            "objects": [
                {
                    "id": o.id,
                    "layer": o.layer,
                    "score": round(o.score, 4),
                    "bbox": list(o.bbox),
                    "area": o.area,
                    "amodal_mask": enc(o.amodal_mask),
                    "visible_mask": enc(o.visible_mask),
                }
                for o in self.objects
            ],
            "occlusion_edges": [list(e) for e in self.occlusion_edges],
            "unet_passes": self.unet_passes,
            "stop_reason": self.stop_reason,
        }

    def overlay_panels(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(prediction, uncertainty)``, each ``uint8 [H, W, 3]``: layers tinted over ``image`` with
        object outlines, and the uncertainty heat map (``overlay.overlay_panels``)."""
        return overlay.overlay_panels(
            image, self.layer_masks, self.uncertainty, outlines=[o.amodal_mask for o in self.objects]
        )

    def comparison_panels(self, image: np.ndarray, true_layers: np.ndarray) -> list[np.ndarray]:
        """``[image, true layers tinted, prediction, uncertainty]``, each ``uint8 [H, W, 3]``: one row of
        the overlay sheets (evaluation, validation, the model card)."""
        truth = overlay.tint_layers(image, np.asarray(true_layers, bool))
        return [image, truth, *self.overlay_panels(image)]

    def render_overlay(self, image: np.ndarray) -> np.ndarray:
        """``uint8 [H, 2W+2, 3]``: layers tinted over ``image``, object outlines | uncertainty heat map."""
        return overlay.render_overlay(
            image, self.layer_masks, self.uncertainty, outlines=[o.amodal_mask for o in self.objects]
        )

    def save_overlay(self, path: str | Path, image: np.ndarray) -> Path:
        """Write ``render_overlay(image)`` as a PNG."""
        return overlay.save_png(path, self.render_overlay(image))


@dataclass
class LayerPrediction:
    """Teacher-forced prediction of one layer per image (given ``C_k``).

    ``layer_mask bool[N,H,W]`` (consensus; empty when every member was near-empty), ``probability
    float32[N,H,W]`` (fraction of members voting foreground), ``uncertainty float32[N,H,W]``,
    ``samples bool[N,E,H,W]`` (thresholded members), ``kept bool[N,E]`` (not dropped as near-empty),
    ``unet_passes`` per image, ``soft float32[N,H,W]`` (the members' mean foreground probability
    before thresholding: a graded score, e.g. for ranking objects front to back).
    """

    layer_mask: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray
    samples: np.ndarray
    kept: np.ndarray
    unet_passes: int
    soft: np.ndarray | None = None
