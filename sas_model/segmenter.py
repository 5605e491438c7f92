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

A model with an order head (``order.enabled``) is segmented from its visible-layer map instead: one
pass gives ``V`` (the layer of the visible object at each pixel), layers are renumbered 0..L-1 in
depth order (at most ``max_layers``), and then, for every layer k >= 1 of every image in one batched
chain, the ensemble samples the layer's hidden part given ``C_k = {V < k}`` and its visible part
``{V = k}``; layer k is ``{V = k} ∪ (consensus ∩ C_k)`` (layer 0 is ``{V = 0}``). The uncertainty of
a layer is the ensemble's variance inside ``C_k`` and the order map's ``p(1 - p)`` outside it;
``stop_reason`` is ``"order_map"``. No merge rule is needed: the layers come from one map.
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
        visible: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """Foreground probabilities ``float32 [A,E,H,W]`` for each image's ensemble, and passes per image.

        ``visible bool[A,H,W]``: the layer's visible part, for a model that completes layers from its
        order map (``order.enabled``)."""
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
                None if visible is None else visible[start : start + chunk],
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
        visible: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        model, dev, s = self.model, self.device, self.cfg.diffusion.mask_scale
        a, (h, w) = len(images), images.shape[1:3]
        image_t = torch.as_tensor(images, device=dev).repeat_interleave(members, 0)
        cmask_t = torch.as_tensor(cumulative, device=dev).repeat_interleave(members, 0)
        if visible is None:
            cond = model.condition(image_t, cmask_t)
        else:
            visible_t = torch.as_tensor(visible, device=dev).repeat_interleave(members, 0)
            cond = model.condition(image_t, cmask_t, visible_t)
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
        self,
        images: Any,
        cumulative_masks: Any,
        seed: int | None = None,
        layer_index: Any = None,
        **sampler_overrides: Any,
    ) -> LayerPrediction:
        """Teacher-forced: one layer per image given ``cumulative_masks bool [N,H,W]`` (no merge rule).

        For a model with an order head, layer ``k`` (``layer_index int[N]``, default 0) is the order
        map's ``{V = k}`` outside the given ``C_k``, plus (k >= 1) the completed hidden part inside it."""
        scfg = self.resolve(**sampler_overrides)
        images = check_images(images, self.cfg.image_size, self.cfg.downsample_factor)
        cumulative = np.asarray(cumulative_masks).astype(bool)
        if cumulative.ndim == 2:
            cumulative = cumulative[None]
        if cumulative.shape != images.shape[:3]:
            raise ValueError(
                f"cumulative_masks shape {cumulative.shape} does not match images {images.shape[:3]}"
            )
        generators = self._generators(seed, images, cumulative)
        if getattr(self.model, "order", None) is not None:
            k = np.asarray(layer_index if layer_index is not None else np.zeros(len(images)), dtype=np.int64)
            return self._predict_layer_by_order(images, cumulative, k.reshape(-1), generators, scfg)
        prob, passes = self._sample_layer(images, cumulative, generators, scfg)
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
        if getattr(self.model, "order", None) is not None:
            return self._segment_by_order(images, generators, scfg)
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

    # ---- order-map models -----------------------------------------------------------------------
    @torch.no_grad()
    def order_maps(self, images: np.ndarray, max_layers: int) -> tuple[np.ndarray, np.ndarray]:
        """The order head's map, layers renumbered: ``(V int64[N,H,W], confidence float32[N,H,W])``.

        ``V`` is -1 on the background, else the pixel's layer, renumbered 0..L-1 in depth order over
        the layers the map uses (a layer with no visible pixel cannot exist) and capped at
        ``max_layers - 1``; ``confidence`` is the head's probability of the pixel's decoded class."""
        dev = self.device
        amp_dtype = autocast_dtype(dev, self.sampler_cfg.precision, "sampler.precision")
        layers, confidence = [], []
        for start in range(0, len(images), self.max_batch):
            with autocast(dev, amp_dtype):
                v, p = self.model.visible_layers(
                    torch.as_tensor(images[start : start + self.max_batch], device=dev)
                )
            chosen = torch.gather(p.float(), 1, (v + 1).unsqueeze(1))[:, 0]
            layers.append(v.cpu().numpy())
            confidence.append(chosen.cpu().numpy().astype(np.float32))
        v = np.concatenate(layers)
        for i in range(len(v)):
            used = np.unique(v[i][v[i] >= 0])
            if len(used) and (used[-1] != len(used) - 1 or len(used) > max_layers):
                lookup = np.full(int(used[-1]) + 1, -1, dtype=np.int64)
                lookup[used] = np.minimum(np.arange(len(used)), max_layers - 1)
                v[i] = np.where(v[i] >= 0, lookup[v[i].clip(min=0)], -1)
        return v, np.concatenate(confidence)

    def _complete(
        self,
        images: np.ndarray,
        cumulative: np.ndarray,
        visible: np.ndarray,
        generators: list[torch.Generator],
        scfg: SamplerConfig,
    ) -> tuple[list[dict[str, np.ndarray]], int]:
        """Hidden parts of layers (one row each): the ensemble's consensus inside ``cumulative`` joined
        to ``visible``; near-empty members are kept (a hidden part may be a few pixels)."""
        if not len(images):
            return [], 0
        prob, passes = self._sample_layer(images, cumulative, generators, scfg, visible)
        keep_all = dataclasses.replace(scfg, min_foreground=0.0)
        parts = []
        for row, p in enumerate(prob):
            part = self._consensus(p, keep_all)
            inside = cumulative[row]
            part["mask"] = visible[row] | (part["mask"] & inside)
            part["samples"] = visible[row] | (part["samples"] & inside)
            parts.append(part)
        return parts, passes

    def _segment_by_order(
        self, images: np.ndarray, generators: list[torch.Generator], scfg: SamplerConfig
    ) -> list[SegmentationResult]:
        v, confidence = self.order_maps(images, scfg.max_layers)
        order_unc = (confidence * (1 - confidence)).astype(np.float32)
        counts = [int(v[i].max()) + 1 for i in range(len(v))]
        rows = [(i, k) for i in range(len(v)) for k in range(1, counts[i])]
        hidden, passes = self._complete(
            images[[i for i, _ in rows]],
            np.stack([(v[i] >= 0) & (v[i] < k) for i, k in rows])
            if rows
            else np.zeros((0, *v.shape[1:]), bool),
            np.stack([v[i] == k for i, k in rows]) if rows else np.zeros((0, *v.shape[1:]), bool),
            [generators[i] for i, _ in rows],
            scfg,
        )
        completed = dict(zip(rows, hidden, strict=True))
        results = []
        for i in range(len(v)):
            layers = []
            for k in range(counts[i]):
                visible = v[i] == k
                if k == 0:
                    part = {
                        "mask": visible,
                        "uncertainty": np.where(visible, order_unc[i], 0).astype(np.float32),
                        "agreement": np.where(visible, confidence[i], 0).astype(np.float32),
                    }
                else:
                    part = dict(completed[(i, k)])
                    inside = (v[i] >= 0) & (v[i] < k)
                    part["uncertainty"] = np.where(
                        inside, part["uncertainty"], np.where(visible, order_unc[i], 0)
                    )
                    part["agreement"] = np.where(
                        inside, part["agreement"], np.where(visible, confidence[i], 0)
                    )
                layers.append(part)
            layer_passes = 1 + passes * (counts[i] - 1)  # one order pass, then each completed layer
            results.append(self._result(layers, layer_passes, "order_map", v.shape[1:], scfg))
        return results

    def _predict_layer_by_order(
        self,
        images: np.ndarray,
        cumulative: np.ndarray,
        layer_index: np.ndarray,
        generators: list[torch.Generator],
        scfg: SamplerConfig,
    ) -> LayerPrediction:
        v, confidence = self.order_maps(images, scfg.max_layers)
        visible = (v == layer_index[:, None, None]) & ~cumulative
        mask = visible.copy()
        uncertainty = np.where(visible, confidence * (1 - confidence), 0).astype(np.float32)
        probability = np.where(visible, confidence, 0).astype(np.float32)
        soft = np.where(visible, confidence, 0).astype(np.float32)
        members = 1 if self.cfg.diffusion.mode == "deterministic" else scfg.ensemble_size
        samples = np.repeat(visible[:, None], members, axis=1)
        rows = np.nonzero((layer_index >= 1) & visible.any(axis=(1, 2)))[0]
        parts, passes = self._complete(
            images[rows], cumulative[rows], visible[rows], [generators[i] for i in rows], scfg
        )
        for i, part in zip(rows, parts, strict=True):
            inside = cumulative[i]
            mask[i] = part["mask"]
            uncertainty[i] = np.where(inside, part["uncertainty"], uncertainty[i])
            probability[i] = np.where(inside, part["agreement"], probability[i])
            soft[i] = np.where(inside, part["agreement"], soft[i])
            samples[i] = part["samples"]
        return LayerPrediction(
            layer_mask=mask,
            probability=probability,
            uncertainty=uncertainty,
            samples=samples,
            kept=np.ones(samples.shape[:2], dtype=bool),
            unet_passes=1 + passes,
            soft=soft,
        )

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
