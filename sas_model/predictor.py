"""Images of any size and mode in, segmentations at the image's own size out: the one implementation
of decoding, resizing in and resizing out, shared by ``pipelines/predict.py``, the MLflow pyfunc and
the demo page.

**Decoding.** Anything Pillow reads (PNG, JPEG, BMP, TIFF, WebP, ...). RGBA / LA / palette with
transparency are composited on white; greyscale and palette become RGB; 16-bit (``I;16``) and 32-bit
integer greyscale are scaled by 1/257 to 8 bits, float images (``F``) from [0, 1] (or clipped to
[0, 255] when their range is larger). An image over ``max_pixels`` (H×W) is refused before its
pixels are decoded; an empty image or bytes that are not an image raise a one-line ``ValueError``.

**Sizes.** The model works at its training size S×S. Every image is resized to S×S (bilinear; the
aspect ratio is not kept), segmented there, and every mask is resized back to the image's own H×W
(bilinear on 0/1, thresholded at 0.5; the uncertainty map bilinear). Boxes, areas and visible
fractions are measured on the resized-back masks, in the original pixels.

    predictor = Predictor(load_segmenter("runs/x/checkpoint"))
    (prediction,) = predictor.predict([decode_image(png_bytes)], seed=0)
    prediction.document(), prediction.files(), prediction.to_dict()
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from sas_model.codec import encode_png, mask_to_b64png
from sas_model.overlay import heat_map, render_overlay

MAX_PIXELS_ENV = "SAS_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 4096 * 4096


def max_pixels_from_env(default: int | None = DEFAULT_MAX_PIXELS) -> int | None:
    """``$SAS_MAX_PIXELS`` (``0`` or ``none``: no limit), else ``default``."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().lower()
    if not text:
        return default
    if text in ("0", "none", "off"):
        return None
    try:
        value = int(float(text))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r} is not a number of pixels") from None
    return value if value > 0 else None


# ---- decoding -------------------------------------------------------------------------------------
def _to_rgb(image: Any) -> np.ndarray:
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(background)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64) / 257.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.max() <= 1.0 and values.min() >= 0.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Image file bytes → ``uint8 [H,W,3]`` RGB; ``ValueError`` (one line) when it is not an image,
    is empty, or has more than ``max_pixels`` pixels."""
    if not data:
        raise ValueError("empty input: no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width < 1 or height < 1:
                raise ValueError("empty image (0 pixels)")
            if max_pixels is not None and width * height > max_pixels:
                raise ValueError(
                    f"image too large: {width}×{height} = {width * height:,} pixels "
                    f"(limit {max_pixels:,}, set {MAX_PIXELS_ENV})"
                )
            image.load()
            array = _to_rgb(image)
    except ValueError as exc:
        if str(exc).startswith(("empty image", "image too large")):
            raise
        raise ValueError(f"not a readable image ({_reason(exc)})") from None
    except Exception as exc:
        raise ValueError(f"not a readable image ({_reason(exc)})") from None
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError("empty image (0 pixels)")
    return array


def _reason(exc: Exception) -> str:
    text = re.sub(r" <[^>]*>", "", " ".join(str(exc).split()))[:120]  # drop "<_io.BytesIO at 0x..>"
    return f"{type(exc).__name__}: {text}"


# ---- resizing -------------------------------------------------------------------------------------
def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [H,W,3]`` → ``uint8 [size,size,3]`` (bilinear, aspect ratio not kept)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """``bool [h,w]`` → ``bool [height,width]``: bilinear on 0/1, thresholded at 0.5."""
    return resize_float(np.asarray(mask, dtype=np.float32), height, width) >= 0.5


def resize_float(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """``float [h,w]`` → ``float32 [height,width]`` (bilinear)."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape == (height, width):
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize((width, height), Image.Resampling.BILINEAR))


def nearest_resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height) * mask.shape[0] // height).clip(0, mask.shape[0] - 1)
    cols = (np.arange(width) * mask.shape[1] // width).clip(0, mask.shape[1] - 1)
    return np.asarray(mask, bool)[rows][:, cols]


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


# ---- results at the image's size -------------------------------------------------------------------
@dataclass
class PredictedObject:
    id: int
    layer: int
    score: float
    amodal: np.ndarray  # bool [H,W]
    visible: np.ndarray  # bool [H,W]

    @property
    def area(self) -> int:
        return int(self.amodal.sum())

    @property
    def visible_area(self) -> int:
        return int(self.visible.sum())

    @property
    def visible_fraction(self) -> float:
        return round(self.visible_area / self.area, 4) if self.area else 0.0

    @property
    def bbox(self) -> list[int]:
        return _bbox(self.amodal) if self.area else [0, 0, 0, 0]


@dataclass
class Prediction:
    """One image's segmentation resized back to the image: ``layers bool [L,H,W]``, ``uncertainty
    float32 [L,H,W]``, objects, ``occlusion_edges`` ``(front_id, back_id)``."""

    image: np.ndarray
    layers: np.ndarray
    uncertainty: np.ndarray
    objects: list[PredictedObject] = field(default_factory=list)
    occlusion_edges: list[tuple[int, int]] = field(default_factory=list)
    unet_passes: int = 0
    stop_reason: str = ""
    model_size: int = 0

    @property
    def num_layers(self) -> int:
        return int(self.layers.shape[0])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def resized(self) -> bool:
        return self.image.shape[:2] != (self.model_size, self.model_size)

    def layer_uncertainty(self) -> list[float]:
        return [
            round(float(u[m].mean()) if m.any() else 0.0, 5)
            for u, m in zip(self.uncertainty, self.layers, strict=True)
        ]

    def peak_uncertainty(self) -> np.ndarray:
        """``float32 [H,W]`` in [0, 1]: the ensemble variance, max over layers, over its maximum 0.25."""
        if not self.num_layers:
            return np.zeros((self.height, self.width), np.float32)
        return self.uncertainty.max(0) / 0.25

    def overlay(self) -> np.ndarray:
        """``uint8 [H, 2W+2, 3]``: layers tinted over the image with object outlines | uncertainty."""
        return render_overlay(
            self.image, self.layers, self.uncertainty, outlines=[o.amodal for o in self.objects]
        )

    def document(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """``predict.py``'s ``result.json``: sizes, layers, objects (mask file names), edges."""
        unc = self.layer_uncertainty()
        return {
            **(meta or {}),
            "height": self.height,
            "width": self.width,
            "num_layers": self.num_layers,
            "layers": [
                {"index": k, "mask": f"layer_{k}.png", "area": int(m.sum()), "mean_uncertainty": unc[k]}
                for k, m in enumerate(self.layers)
            ],
            "objects": [{**self._object_facts(o), "mask": f"object_{o.id}.png"} for o in self.objects],
            "occlusion_edges": [[int(a), int(b)] for a, b in self.occlusion_edges],
            "unet_passes": int(self.unet_passes),
            "stop_reason": self.stop_reason,
        }

    def files(self, meta: dict[str, Any] | None = None) -> dict[str, bytes]:
        """All of ``predict.py``'s files of one image (name → bytes)."""
        files: dict[str, bytes] = {}
        for k, mask in enumerate(self.layers):
            files[f"layer_{k}.png"] = encode_png(mask.astype(np.uint8) * 255)
        for obj in self.objects:
            files[f"object_{obj.id}.png"] = encode_png(obj.amodal.astype(np.uint8) * 255)
        files["uncertainty.png"] = encode_png(heat_map(self.peak_uncertainty()))
        files["overlay.png"] = encode_png(self.overlay())
        files["result.json"] = json.dumps(self.document(meta), indent=2).encode()
        return files

    def to_dict(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The served model's result (one JSON per image): ``SegmentationResult.to_dict``'s keys with
        every mask at the image's own size as a base64 PNG, plus sizes and per-object visible facts."""
        return {
            **(meta or {}),
            "height": self.height,
            "width": self.width,
            "model_size": self.model_size,
            "resized": self.resized,
            "num_layers": self.num_layers,
            "layers": [mask_to_b64png(m) for m in self.layers],
            "layer_uncertainty": self.layer_uncertainty(),
            "objects": [
                {
                    **self._object_facts(o),
                    "amodal_mask": mask_to_b64png(o.amodal),
                    "visible_mask": mask_to_b64png(o.visible),
                }
                for o in self.objects
            ],
            "occlusion_edges": [[int(a), int(b)] for a, b in self.occlusion_edges],
            "unet_passes": int(self.unet_passes),
            "stop_reason": self.stop_reason,
        }

    @staticmethod
    def _object_facts(obj: PredictedObject) -> dict[str, Any]:
        return {
            "id": int(obj.id),
            "layer": int(obj.layer),
            "score": round(float(obj.score), 4),
            "bbox": obj.bbox,
            "area": obj.area,
            "visible_area": obj.visible_area,
            "visible_fraction": obj.visible_fraction,
        }


def resize_result(image: np.ndarray, result: Any, model_size: int) -> Prediction:
    """A ``SegmentationResult`` at S×S → ``Prediction`` at ``image``'s own H×W."""
    height, width = image.shape[:2]
    if result.num_layers:
        layers = np.stack([resize_mask(m, height, width) for m in result.layer_masks])
        uncertainty = np.stack([resize_float(u, height, width) for u in result.uncertainty])
    else:
        layers = np.zeros((0, height, width), bool)
        uncertainty = np.zeros((0, height, width), np.float32)
    objects = []
    for obj in result.objects:
        amodal = resize_mask(obj.amodal_mask, height, width)
        if not amodal.any():  # a sliver that vanished when resized back: keep it at its nearest pixels
            amodal = nearest_resize(obj.amodal_mask, height, width)
        visible = resize_mask(obj.visible_mask, height, width) & amodal
        objects.append(PredictedObject(int(obj.id), int(obj.layer), float(obj.score), amodal, visible))
    return Prediction(
        image=image,
        layers=layers,
        uncertainty=uncertainty,
        objects=objects,
        occlusion_edges=[(int(a), int(b)) for a, b in result.occlusion_edges],
        unet_passes=int(result.unet_passes),
        stop_reason=result.stop_reason,
        model_size=model_size,
    )


class Predictor:
    """Owns a ``SequentialSegmenter`` and the resizing in and out: ``predict(images)`` takes
    ``uint8 [H,W,3]`` images of any (mixed) sizes and returns one ``Prediction`` per image."""

    def __init__(self, segmenter: Any, max_pixels: int | None = None) -> None:
        self.segmenter = segmenter
        self.size = int(segmenter.cfg.image_size)
        self.max_pixels = max_pixels

    @property
    def device(self) -> str:
        return str(getattr(self.segmenter, "device", "cpu"))

    def decode(self, data: bytes) -> np.ndarray:
        return decode_image(data, self.max_pixels)

    def predict(self, images: list[np.ndarray], seed: int = 0, **overrides: Any) -> list[Prediction]:
        """One batched ``segment`` call at S×S for all ``images`` (one ``seed``; the noise is per
        image, so a result does not depend on its batch-mates)."""
        if not len(images):
            return []
        images = [np.ascontiguousarray(np.asarray(im, dtype=np.uint8)) for im in images]
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3 or im.shape[0] < 1 or im.shape[1] < 1:
                raise ValueError(f"images must be uint8 [H,W,3] with H, W >= 1, got shape {im.shape}")
        small = np.stack([resize_image(im, self.size) for im in images])
        results = self.segmenter.segment(small, seed=seed, **overrides)
        return [resize_result(im, r, self.size) for im, r in zip(images, results, strict=True)]
