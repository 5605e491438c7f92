"""The sequential segmenter: layer by layer, an ensemble of diffusion samples per layer.

    segmenter = SequentialSegmenter(model)                    # or checkpoint.load_segmenter(dir)
    results = segmenter.segment(images_uint8_NxHxWx3, seed=0)   # list[SegmentationResult]

Per layer ``k`` and per still-active image (all active images × ensemble members in one batched
chain; rows are image-major, member-minor):

1. sample ``E`` clean masks given the image and ``C_k``; threshold the foreground probability
   ``(x0/s + 1)/2`` at ``threshold``;
2. drop members whose foreground fraction is below ``min_foreground`` (near-empty);
3. consensus: ``medoid`` (the member closest in L1 to the survivors' mean, the reference) or
   ``vote`` (pixel majority of survivors); uncertainty = per-pixel variance over survivors;
4. stop when no member survives, the consensus is (near-)empty, or after ``max_layers`` layers;
5. with ``merge_disconnected`` (the reference rule), parts of the consensus that do not touch layer
   ``k-1`` are moved into layer ``k-1``;
6. ``C_{k+1} = C_k ∪ M_k``; finished images leave the batch.

Each image draws its noise from its own generator, seeded from ``seed`` and the image's bytes, so an
image gets the same result alone or in any batch. Layers are then split into objects
(``instances.py``).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np
import torch

from sas_model.config import SamplerConfig
from sas_model.instances import SegmentedObject, extract_objects, occlusion_edges, split_disconnected
from sas_model.precision import autocast, autocast_dtype
from sas_model.results import LayerPrediction, SegmentationResult
from sas_model.samplers import make_sampler

__all__ = ["LayerPrediction", "SegmentationResult", "SegmentedObject", "SequentialSegmenter", "check_images"]


def check_images(images: Any, image_size: int, factor: int) -> np.ndarray:
    """Validate user images → ``uint8 [N,H,W,3]``; a single ``[H,W,3]`` image is accepted too."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be an N×H×W×3 uint8 array, got shape {images.shape}")
    if images.shape[-1] != 3:
        raise ValueError(f"images must have 3 colour channels (N×H×W×3 RGB), got {images.shape[-1]}")
    if images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 in [0, 255], got {images.dtype}; convert with "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    h, w = images.shape[1:3]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}×{w} is not divisible by the UNet's factor {factor}")
    if (h, w) != (image_size, image_size):
        raise ValueError(
            f"image size {h}×{w} does not match the model's {image_size}×{image_size}; resize first"
        )
    return images


def _image_seed(base: int, *arrays: np.ndarray) -> int:
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).tobytes(), crc)
    return (base * 1_000_003 + crc) % (2**63 - 1)


class SequentialSegmenter:
    """Numpy-facing segmenter over a ``SASModel`` (or any object with ``cfg``, ``schedule``,
    ``condition(image, cumulative_mask)`` and ``predict_x0(cond, x_t, t, self_cond)``)."""

    def __init__(
        self,
        model: Any,
        sampler_cfg: SamplerConfig | None = None,
        device: str | torch.device | None = None,
        max_batch: int = 192,
    ) -> None:
        if device is not None and hasattr(model, "to"):
            model = model.to(device)
        if hasattr(model, "eval"):
            model.eval()
        self.model = model
        self.cfg = model.cfg
        self.sampler_cfg = sampler_cfg or self.cfg.sampler
        params = next(model.parameters(), None) if hasattr(model, "parameters") else None
        self.device = (
            torch.device(device)
            if device is not None
            else (params.device if params is not None else torch.device("cpu"))
        )
        self.max_batch = max_batch  # samples (images × members) per forward pass

    # ---- options ---------------------------------------------------------------------------
    def resolve(self, **overrides: Any) -> SamplerConfig:
        """``sampler_cfg`` with overrides (field names of ``SamplerConfig``), validated."""
        names = {f.name for f in dataclasses.fields(SamplerConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown sampler option {unknown[0]!r}; choose from {', '.join(sorted(names))}")
        cfg = dataclasses.replace(self.cfg, sampler=self.sampler_cfg)
        return cfg.replace(**{f"sampler.{k}": v for k, v in overrides.items()}).validate().sampler

    def _generators(self, seed: int | None, *arrays: np.ndarray) -> list[torch.Generator]:
        base = int(torch.randint(0, 2**31 - 1, ())) if seed is None else int(seed)
        n = len(arrays[0])
        return [torch.Generator().manual_seed(_image_seed(base, *(a[i] for a in arrays))) for i in range(n)]

    # ---- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def _sample_layer(
        self,
        images: np.ndarray,
        cumulative: np.ndarray,
        generators: list[torch.Generator],
        scfg: SamplerConfig,
    ) -> tuple[np.ndarray, int]:
        """Foreground probabilities ``float32 [A,E,H,W]`` for each image's ensemble, and passes per image."""
        members = 1 if self.cfg.diffusion.mode == "deterministic" else scfg.ensemble_size
        chunk = max(1, self.max_batch // members)
        out, passes = [], 0
        for start in range(0, len(images), chunk):
            prob, passes = self._sample_chunk(
                images[start : start + chunk],
                cumulative[start : start + chunk],
                generators[start : start + chunk],
                scfg,
                members,
            )
            out.append(prob)
        return np.concatenate(out), passes

    def _sample_chunk(
        self,
        images: np.ndarray,
        cumulative: np.ndarray,
        generators: list[torch.Generator],
        scfg: SamplerConfig,
        members: int,
    ) -> tuple[np.ndarray, int]:
        model, dev, s = self.model, self.device, self.cfg.diffusion.mask_scale
        a, (h, w) = len(images), images.shape[1:3]
        image_t = torch.as_tensor(images, device=dev).repeat_interleave(members, 0)
        cmask_t = torch.as_tensor(cumulative, device=dev).repeat_interleave(members, 0)
        cond = model.condition(image_t, cmask_t)
        amp_dtype = autocast_dtype(dev, scfg.precision, "sampler.precision")

        def denoise(x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None) -> torch.Tensor:
            with autocast(dev, amp_dtype):  # the UNet pass only; predict_x0 returns fp32
                return model.predict_x0(cond, x_t, t, self_cond)

        if self.cfg.diffusion.mode == "deterministic":
            t = torch.full((a,), self.cfg.diffusion.num_timesteps - 1, dtype=torch.long, device=dev)
            x0, passes = denoise(torch.zeros(a, 1, h, w, device=dev), t, None), 1
        else:
            sampler = make_sampler(model.schedule, scfg, s)

            def noise_fn() -> torch.Tensor:
                return torch.cat([torch.randn(members, 1, h, w, generator=g) for g in generators]).to(dev)

            x0, steps = sampler.sample(denoise, noise_fn, self_condition=self.cfg.unet.self_condition)
            passes = steps * members
        prob = ((x0.float() / s + 1) / 2).clamp(0, 1)
        return prob.reshape(a, members, h, w).cpu().numpy(), passes

    @staticmethod
    def _consensus(prob: np.ndarray, scfg: SamplerConfig) -> dict[str, np.ndarray]:
        """One image's ensemble ``float [E,H,W]`` → consensus, uncertainty, agreement, samples, kept.

        Uncertainty is the per-pixel variance of the surviving thresholded members (in [0, 0.25]); with a
        single member it is ``p(1-p)`` of that member's foreground probability instead.
        """
        samples = prob > scfg.threshold
        kept = samples.mean(axis=(1, 2)) >= scfg.min_foreground
        survivors = samples[kept].astype(np.float32)
        shape = prob.shape[1:]
        if len(survivors) == 0:
            mask, uncertainty = np.zeros(shape, bool), np.zeros(shape, np.float32)
        else:
            mean = survivors.mean(0)
            if scfg.consensus == "medoid":
                mask = survivors[np.abs(survivors - mean).sum(axis=(1, 2)).argmin()] > 0.5
            else:
                mask = mean > 0.5
            uncertainty = survivors.var(0).astype(np.float32)
            if len(prob) == 1:  # a single member (deterministic mode): Bernoulli variance of its soft output
                uncertainty = (prob[0] * (1 - prob[0])).astype(np.float32)
        agreement = (survivors.sum(0) / len(samples)).astype(np.float32) if len(survivors) else uncertainty
        return {
            "mask": mask,
            "uncertainty": uncertainty,
            "agreement": agreement,
            "samples": samples,
            "kept": kept,
        }

    # ---- public API --------------------------------------------------------------------------
    def predict_layer(
        self, images: Any, cumulative_masks: Any, seed: int | None = None, **sampler_overrides: Any
    ) -> LayerPrediction:
        """Teacher-forced: one layer per image given ``cumulative_masks bool [N,H,W]`` (no merge rule)."""
        scfg = self.resolve(**sampler_overrides)
        images = check_images(images, self.cfg.image_size, self.cfg.downsample_factor)
        cumulative = np.asarray(cumulative_masks).astype(bool)
        if cumulative.ndim == 2:
            cumulative = cumulative[None]
        if cumulative.shape != images.shape[:3]:
            raise ValueError(
                f"cumulative_masks shape {cumulative.shape} does not match images {images.shape[:3]}"
            )
        prob, passes = self._sample_layer(
            images, cumulative, self._generators(seed, images, cumulative), scfg
        )
        parts = [self._consensus(p, scfg) for p in prob]
        stack = {key: np.stack([p[key] for p in parts]) for key in parts[0]}
        empty = stack["mask"].mean(axis=(1, 2)) < scfg.min_foreground
        stack["mask"][empty] = False
        return LayerPrediction(
            layer_mask=stack["mask"],
            probability=stack["agreement"],
            uncertainty=stack["uncertainty"],
            samples=stack["samples"],
            kept=stack["kept"],
            unet_passes=passes,
            soft=prob.mean(axis=1).astype(np.float32),
        )

    def segment(
        self, images: Any, seed: int | None = None, **sampler_overrides: Any
    ) -> list[SegmentationResult]:
        """Segment ``images uint8 [N,H,W,3]`` layer by layer; one ``SegmentationResult`` per image."""
        scfg = self.resolve(**sampler_overrides)
        images = check_images(images, self.cfg.image_size, self.cfg.downsample_factor)
        n, shape = len(images), images.shape[1:3]
        generators = self._generators(seed, images)
        cumulative = np.zeros((n, *shape), dtype=bool)
        layers: list[list[dict[str, np.ndarray]]] = [[] for _ in range(n)]
        passes, stop = [0] * n, [""] * n
        active = list(range(n))
        for _ in range(scfg.max_layers):
            prob, step_passes = self._sample_layer(
                images[active], cumulative[active], [generators[i] for i in active], scfg
            )
            still_active = []
            for row, i in enumerate(active):
                passes[i] += step_passes
                consensus = self._consensus(prob[row], scfg)
                stop[i] = self._add_layer(layers[i], consensus, scfg)
                if not stop[i]:
                    cumulative[i] |= consensus["mask"]  # C_{k+1} = C_k ∪ M_k, merged parts included
                    still_active.append(i)
            active = still_active
            if not active:
                break
        for i in active:
            stop[i] = "max_layers"
        return [self._result(layers[i], passes[i], stop[i], shape, scfg) for i in range(n)]

    @staticmethod
    def _add_layer(
        layers: list[dict[str, np.ndarray]], layer: dict[str, np.ndarray], scfg: SamplerConfig
    ) -> str:
        """Append (or merge) one consensus layer; returns a stop reason or ``""`` to continue."""
        if not layer["kept"].any():
            return "no_sample"
        if layer["mask"].mean() < scfg.min_foreground:
            return "empty"
        if scfg.merge_disconnected and layers:
            previous = layers[-1]
            stays, moves = split_disconnected(layer["mask"], previous["mask"])
            if moves.any():
                previous["mask"] = previous["mask"] | moves
                for key in ("uncertainty", "agreement"):
                    previous[key] = np.where(moves, np.maximum(previous[key], layer[key]), previous[key])
                if not stays.any():  # everything belonged to the previous layer; C_k still grows
                    return ""
                layer = {**layer, "mask": stays}
        layers.append(layer)
        return ""

    @staticmethod
    def _result(
        layers: list[dict[str, np.ndarray]],
        passes: int,
        stop: str,
        shape: tuple[int, int],
        scfg: SamplerConfig,
    ) -> SegmentationResult:
        def stack(key: str, dtype: Any) -> np.ndarray:
            return (
                np.stack([layer[key] for layer in layers]).astype(dtype)
                if layers
                else np.zeros((0, *shape), dtype)
            )

        layer_masks, agreement = stack("mask", bool), stack("agreement", np.float32)
        objects = extract_objects(layer_masks, agreement, scfg.min_object_area)
        return SegmentationResult(
            layer_masks=layer_masks,
            uncertainty=stack("uncertainty", np.float32),
            agreement=agreement,
            objects=objects,
            occlusion_edges=occlusion_edges(objects),
            unet_passes=passes,
            stop_reason=stop,
        )
