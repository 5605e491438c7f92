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
from typing import Any, Protocol

import numpy as np
import torch

from sas_model.config import ModelConfig, SamplerConfig
from sas_model.consensus import LayerRecord, ensemble_consensus
from sas_model.instances import SegmentedObject, extract_objects, occlusion_edges, split_disconnected
from sas_model.order import clean_layer_map
from sas_model.precision import autocast, autocast_dtype
from sas_model.results import LayerPrediction, SegmentationResult
from sas_model.samplers import make_sampler
from sas_model.schedules import NoiseSchedule

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


class LayerModel(Protocol):
    """What the segmenter needs of a model (``SASModel`` is one; tests use scripted stand-ins).

    ``condition`` gives the clean conditioning channels of a layer step once, ``predict_x0`` the
    clean-mask estimate ``[B,1,H,W]`` in ``[-s, s]`` once per denoising step. An **order model** also
    has a non-None ``order`` (its order head) and ``visible_layers(image) -> (V long[B,H,W], p
    float[B,K+1,H,W])``, and its ``condition`` takes the layer's visible part. A model that is an
    ``nn.Module`` is moved to the device and put in eval mode."""

    cfg: ModelConfig
    schedule: NoiseSchedule

    def condition(
        self, image: torch.Tensor, cumulative_mask: torch.Tensor, visible: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def predict_x0(
        self, cond: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class SequentialSegmenter:
    """Numpy-facing segmenter over a :class:`LayerModel`: sequential diffusion layer by layer, or, for
    an order model, layers from its visible-layer map completed by diffusion."""

    def __init__(
        self,
        model: LayerModel,
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
        self.by_order = getattr(model, "order", None) is not None  # layers from the order head's map
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
        if self.by_order:
            k = np.asarray(layer_index if layer_index is not None else np.zeros(len(images)), dtype=np.int64)
            return self._predict_layer_by_order(images, cumulative, k.reshape(-1), generators, scfg)
        prob, passes = self._sample_layer(images, cumulative, generators, scfg)
        parts = [ensemble_consensus(p, scfg) for p in prob]
        mask = np.stack([p.mask for p in parts])
        mask[mask.mean(axis=(1, 2)) < scfg.min_foreground] = False
        return LayerPrediction(
            layer_mask=mask,
            probability=np.stack([p.agreement for p in parts]),
            uncertainty=np.stack([p.uncertainty for p in parts]),
            samples=np.stack([p.samples for p in parts]),
            kept=np.stack([p.kept for p in parts]),
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
        if self.by_order:
            return self._segment_by_order(images, generators, scfg)
        cumulative = np.zeros((n, *shape), dtype=bool)
        layers: list[list[LayerRecord]] = [[] for _ in range(n)]
        passes, stop = [0] * n, [""] * n
        active = list(range(n))
        for _ in range(scfg.max_layers):
            prob, step_passes = self._sample_layer(
                images[active], cumulative[active], [generators[i] for i in active], scfg
            )
            still_active = []
            for row, i in enumerate(active):
                passes[i] += step_passes
                consensus = ensemble_consensus(prob[row], scfg)
                stop[i] = self._add_layer(layers[i], consensus, scfg)
                if not stop[i]:
                    cumulative[i] |= consensus.mask  # C_{k+1} = C_k ∪ M_k, merged parts included
                    still_active.append(i)
            active = still_active
            if not active:
                break
        for i in active:
            stop[i] = "max_layers"
        return [self._result(layers[i], passes[i], stop[i], shape, scfg) for i in range(n)]

    # ---- order-map models -----------------------------------------------------------------------
    @torch.no_grad()
    def order_maps(
        self, images: np.ndarray, max_layers: int, min_region_area: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The order head's map, cleaned: ``(V int64[N,H,W], confidence float32[N,H,W])``.

        ``V`` is -1 on the background, else the pixel's layer (:func:`sas_model.order.clean_layer_map`:
        speckle absorbed, layers renumbered 0..L-1, at most ``max_layers``); ``confidence`` is the
        head's probability of the pixel's decoded class."""
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
            v[i] = clean_layer_map(v[i], min_region_area, max_layers)
        return v, np.concatenate(confidence)

    def _complete(
        self,
        images: np.ndarray,
        cumulative: np.ndarray,
        visible: np.ndarray,
        generators: list[torch.Generator],
        scfg: SamplerConfig,
    ) -> tuple[list[LayerRecord], int]:
        """Layers completed from their visible part (one row each): the ensemble's consensus inside
        ``cumulative`` joined to ``visible``; near-empty members are kept (a hidden part may be a few
        pixels)."""
        if not len(images):
            return [], 0
        prob, passes = self._sample_layer(images, cumulative, generators, scfg, visible)
        keep_all = dataclasses.replace(scfg, min_foreground=0.0)
        parts = []
        for row, p in enumerate(prob):
            part = ensemble_consensus(p, keep_all)
            inside = cumulative[row]
            parts.append(
                part.replace(
                    mask=visible[row] | (part.mask & inside), samples=visible[row] | (part.samples & inside)
                )
            )
        return parts, passes

    def _segment_by_order(
        self, images: np.ndarray, generators: list[torch.Generator], scfg: SamplerConfig
    ) -> list[SegmentationResult]:
        v, confidence = self.order_maps(images, scfg.max_layers, scfg.min_region_area)
        uncertainty = (confidence * (1 - confidence)).astype(np.float32)
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
                order_unc = np.where(visible, uncertainty[i], 0).astype(np.float32)
                order_agree = np.where(visible, confidence[i], 0).astype(np.float32)
                if k == 0:
                    members = np.repeat(visible[None], 1, axis=0)
                    layers.append(LayerRecord(visible, order_unc, order_agree, members, np.ones(1, bool)))
                    continue
                part, inside = completed[(i, k)], (v[i] >= 0) & (v[i] < k)
                layers.append(
                    part.replace(
                        uncertainty=np.where(inside, part.uncertainty, order_unc),
                        agreement=np.where(inside, part.agreement, order_agree),
                    )
                )
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
        v, confidence = self.order_maps(images, scfg.max_layers, scfg.min_region_area)
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
            mask[i] = part.mask
            uncertainty[i] = np.where(inside, part.uncertainty, uncertainty[i])
            probability[i] = np.where(inside, part.agreement, probability[i])
            soft[i] = np.where(inside, part.agreement, soft[i])
            samples[i] = part.samples
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
    def _add_layer(layers: list[LayerRecord], layer: LayerRecord, scfg: SamplerConfig) -> str:
        """Append (or merge) one consensus layer; returns a stop reason or ``""`` to continue."""
        if not layer.kept.any():
            return "no_sample"
        if layer.mask.mean() < scfg.min_foreground:
            return "empty"
        if scfg.merge_disconnected and layers:
            previous = layers[-1]
            stays, moves = split_disconnected(layer.mask, previous.mask)
            if moves.any():
                layers[-1] = previous.replace(
                    mask=previous.mask | moves,
                    uncertainty=np.where(
                        moves, np.maximum(previous.uncertainty, layer.uncertainty), previous.uncertainty
                    ),
                    agreement=np.where(
                        moves, np.maximum(previous.agreement, layer.agreement), previous.agreement
                    ),
                )
                if not stays.any():  # everything belonged to the previous layer; C_k still grows
                    return ""
                layer = layer.replace(mask=stays)
        layers.append(layer)
        return ""

    @staticmethod
    def _result(
        layers: list[LayerRecord],
        passes: int,
        stop: str,
        shape: tuple[int, int],
        scfg: SamplerConfig,
    ) -> SegmentationResult:
        def stack(key: str, dtype: Any) -> np.ndarray:
            return (
                np.stack([getattr(layer, key) for layer in layers]).astype(dtype)
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
