"""Scenes rendered on the fly for Ray-free training (the learning probe, ``pipelines/pretrain.py``).

- :class:`SceneMix`: which scenes: one family, or a weighted mixture of families, optionally with
  shape kinds held out (``SceneMix.parse("flat=0.3,textured=0.7", without=("star",))``).
- :class:`SampleStream`: endless shuffled training samples ``(image, C_k, M_k, ...)`` from
  train-split scenes, rendered in chunks of ``CHUNK`` scenes, in worker processes if asked; the
  scenes and their order depend on the seed alone, so a restored stream goes on where it stopped.
- :func:`val_scenes`: held-out val-split scenes, from ids far from the training ids.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from pipelines.training.augment import FLIP_FIELDS
from synth.families import FAMILIES, family_config
from synth.reader import Sample, collate_samples, scene_to_samples
from synth.render import RenderConfig, render_scenes
from synth.shapes import kind_weights_for

VAL_START = 10_000_000  # val scenes come from ids far from the training ids
CHUNK = 256  # scenes rendered per task (one family per chunk)


@dataclass(frozen=True)
class SceneMix:
    """Families with weights (``configs[i]`` drawn for a chunk with probability ``weights[i]``)."""

    names: tuple[str, ...]
    configs: tuple[RenderConfig, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(
        cls, spec: str, size: int = 64, without: tuple[str, ...] = (), only: tuple[str, ...] = ()
    ) -> SceneMix:
        """``"flat"`` or ``"flat=0.3,flat8=0.2,textured=0.5"``; ``without``/``only`` restrict the shape
        kinds (``synth.shapes.SHAPE_KINDS``). One-line ``ValueError`` on a bad spec."""
        names, weights = [], []
        for part in spec.split(","):
            name, _, weight = part.strip().partition("=")
            if name not in FAMILIES:
                raise ValueError(
                    f"unknown scene family {name!r} in {spec!r}; choose from {', '.join(FAMILIES)}"
                )
            try:
                value = float(weight) if weight else 1.0
            except ValueError:
                raise ValueError(f"family weight {weight!r} in {spec!r} is not a number") from None
            if value <= 0:
                raise ValueError(f"family weight of {name} must be positive, got {value}")
            names.append(name)
            weights.append(value)
        shapes = kind_weights_for(only or None, without)
        configs = tuple(replace(family_config(n, size), shape_weights=shapes) for n in names)
        total = sum(weights)
        return cls(tuple(names), configs, tuple(w / total for w in weights))

    @classmethod
    def of(cls, render: RenderConfig, name: str = "custom") -> SceneMix:
        return cls((name,), (render,), (1.0,))

    def config_of_chunk(self, seed: int, start: int) -> RenderConfig:
        """The family of the chunk of scenes starting at id ``start`` (a function of seed and start)."""
        if len(self.configs) == 1:
            return self.configs[0]
        u = np.random.default_rng([seed, start, 0x5CE4E]).random()
        return self.configs[
            int(np.searchsorted(np.cumsum(self.weights), u * sum(self.weights), side="right"))
        ]

    def describe(self) -> str:
        return ",".join(f"{n}={w:.2f}" for n, w in zip(self.names, self.weights, strict=True))


def render_samples(
    seed: int, start: int, render: RenderConfig, layers: tuple[int, ...] | None, completion: bool = False
) -> list[Sample]:
    """The training samples of scenes ``start .. start + CHUNK`` (train split; only ``layers`` if given;
    ``completion``: those of ``synth.reader.sample_layers``, for a model with an order head)."""
    return [
        s
        for sc in render_scenes(seed, start, CHUNK, render)
        if sc.split == "train"
        for s in scene_to_samples(sc, completion)
        if layers is None or s.layer_index in layers
    ]


def _quiet_worker() -> None:
    torch.set_num_threads(1)


class SampleStream:
    """Endless shuffled training samples from train-split scenes rendered on the fly.

    ``render``: a :class:`SceneMix` or one ``RenderConfig``. ``layers``: keep only samples of these
    layer indices (None: every k, the terminal one included); ``completion``: the samples of a model
    with an order head (``synth.reader.sample_layers``). ``batch`` returns
    :func:`synth.reader.collate_samples` tensors; with ``hflip`` half the batches are mirrored
    left-right. ``workers`` > 0 renders chunks in that many processes, a few chunks ahead, so a GPU is
    not kept waiting; the scenes and their order are the same as with 0.
    """

    def __init__(
        self,
        seed: int,
        render: SceneMix | RenderConfig,
        buffer: int = 2048,
        layers: tuple[int, ...] | None = None,
        hflip: bool = True,
        workers: int = 0,
        completion: bool = False,
    ) -> None:
        self.seed, self.buffer, self.completion = seed, buffer, completion
        self.mix = render if isinstance(render, SceneMix) else SceneMix.of(render)
        self.layers, self.hflip = layers, hflip
        self.next_id, self.pool = 0, []
        self.rng = np.random.default_rng(seed)
        self.workers = workers
        self._procs: Any = None
        self._ahead: deque[tuple[int, Any]] = deque()

    def _args(self, start: int) -> tuple:
        return (self.seed, start, self.mix.config_of_chunk(self.seed, start), self.layers, self.completion)

    def _next_chunk(self) -> list[Sample]:
        if not self.workers:
            return render_samples(*self._args(self.next_id))
        if self._procs is None:
            ctx = multiprocessing.get_context("spawn")
            self._procs = ctx.Pool(self.workers, initializer=_quiet_worker)
        while self._ahead and self._ahead[0][0] != self.next_id:  # stale after restore
            self._ahead.popleft()
        start = self._ahead[-1][0] + CHUNK if self._ahead else self.next_id
        while len(self._ahead) < 2 * self.workers:
            self._ahead.append((start, self._procs.apply_async(render_samples, self._args(start))))
            start += CHUNK
        return self._ahead.popleft()[1].get()

    def _refill(self) -> None:
        while len(self.pool) < self.buffer:
            self.pool += self._next_chunk()
            self.next_id += CHUNK
        order = self.rng.permutation(len(self.pool))
        self.pool = [self.pool[i] for i in order]

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        if len(self.pool) < max(n, self.buffer // 2):
            self._refill()
        taken, self.pool = self.pool[:n], self.pool[n:]
        arrays = collate_samples(taken)
        if self.hflip and self.rng.random() < 0.5:  # numpy flips: ~50x torch.flip on CPU uint8
            for k in FLIP_FIELDS:
                width_axis = 2 if k == "image" else -1  # image [B,H,W,3]; masks [B,...,H,W]
                arrays[k] = np.ascontiguousarray(np.flip(arrays[k], axis=width_axis))
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    @property
    def scenes_rendered(self) -> int:
        """Scene ids consumed so far (train and held-out splits alike)."""
        return self.next_id

    def state(self) -> dict[str, Any]:
        return {"next_id": self.next_id}

    def restore(self, state: dict[str, Any]) -> None:
        self.next_id, self.pool = int(state["next_id"]), []

    def close(self) -> None:
        if self._procs is not None:
            self._procs.terminate()
            self._procs = None


def val_scenes(seed: int, render: RenderConfig, count: int, split: str = "val") -> list:
    """``count`` scenes of ``render`` of one held-out split (``val`` or ``test``) from ids ``VAL_START``
    on (never trained on: training takes train-split scenes from id 0)."""
    scenes, start = [], VAL_START
    while len(scenes) < count:
        scenes += [s for s in render_scenes(seed, start, 256, render) if s.split == split]
        start += 256
    return scenes[:count]
