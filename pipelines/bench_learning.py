"""Learning-curve probe: how fast does a preset learn on this CPU? (single process, no Ray)

Trains a preset on scenes rendered in-process (train split of ``synth.render``), and every
``--eval-every`` minutes evaluates the EMA weights on held-out val scenes:

- teacher-forced IoU per layer (given the true cumulative mask ``C_k``), and
- free-running IoU per layer (the full sequential segmenter), plus layer-count accuracy.

It writes one JSON line per evaluation to ``--out`` and prints a table; it is how the tiny/small
recipes were chosen (see the model issue's note)::

    python pipelines/bench_learning.py --preset tiny --minutes 15 --out runs/curve_tiny.jsonl
    python pipelines/bench_learning.py --preset tiny --set diffusion.mode=deterministic --minutes 15
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.augment import perturb_cumulative_mask
from pipelines.optim import lr_at
from sas_model.checkpoint import save_checkpoint
from sas_model.config import ModelConfig
from sas_model.metrics import layer_ious, mask_iou, mean_by_layer
from sas_model.model import SASModel
from sas_model.precision import autocast, autocast_dtype
from sas_model.segmenter import SequentialSegmenter
from synth.reader import scene_to_samples
from synth.render import RenderConfig, render_scenes


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as JSON when they parse)."""
    out: dict[str, object] = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


class SampleStream:
    """Endless shuffled training samples from train-split scenes rendered on the fly.

    ``expand(scene)`` gives a scene's sample tuples (default ``scene_to_samples(scene, True)``:
    ``(image, C_k, M_k, k, foreground)``); ``batch`` stacks the tuple positions in ``fields``
    (default image, C_k, M_k, foreground) and, with ``hflip``, flips half the batches left-right
    (fields must then be ``[H,W,3]`` or ``[H,W]`` arrays).
    """

    def __init__(
        self,
        seed: int,
        size: int,
        buffer: int = 2048,
        expand: Callable[[Any], list[tuple]] | None = None,
        fields: tuple[int, ...] = (0, 1, 2, 4),
        hflip: bool = True,
    ) -> None:
        self.seed, self.cfg, self.buffer = seed, RenderConfig(size=size), buffer
        self.expand = expand or (lambda scene: scene_to_samples(scene, with_foreground=True))
        self.fields, self.hflip = fields, hflip
        self.next_id, self.pool = 0, []
        self.rng = np.random.default_rng(seed)

    def _refill(self) -> None:
        while len(self.pool) < self.buffer:
            scenes = render_scenes(self.seed, self.next_id, 256, self.cfg)
            self.next_id += 256
            self.pool += [s for sc in scenes if sc.split == "train" for s in self.expand(sc)]
        order = self.rng.permutation(len(self.pool))
        self.pool = [self.pool[i] for i in order]

    def batch(self, n: int) -> tuple[torch.Tensor, ...]:
        """One tensor ``[n, ...]`` per position in ``fields``."""
        if len(self.pool) < self.buffer // 2:
            self._refill()
        taken, self.pool = self.pool[:n], self.pool[n:]
        tensors = tuple(torch.from_numpy(np.stack([s[i] for s in taken])) for i in self.fields)
        if self.hflip and self.rng.random() < 0.5:  # horizontal flip of the whole batch
            tensors = tuple(t.flip(2) for t in tensors)
        return tensors


def train_step(
    model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, step: int
) -> None:
    """Backward, gradient clipping and AdamW step, then the EMA copy's update; ``step`` counts from 0.

    The EMA decay warms up as ``min(ema_decay, (1 + step) / (10 + step))``.
    """
    tc = model.cfg.train
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - min(tc.ema_decay, (1 + step) / (10 + step)))


def val_scenes(seed: int, size: int, count: int) -> list:
    scenes, start = [], 10_000_000  # far from the training ids
    while len(scenes) < count:
        scenes += [s for s in render_scenes(seed, start, 256, RenderConfig(size=size)) if s.split == "val"]
        start += 256
    return scenes[:count]


def evaluate(model: SASModel, scenes: list, max_layer: int = 3, quick: bool = False) -> dict[str, float]:
    """EMA metrics on val scenes; ``quick``: teacher-forced only, one ensemble member."""
    seg = SequentialSegmenter(model)
    overrides = {"ensemble_size": 1} if quick else {}
    images = np.stack([s.image for s in scenes])
    out: dict[str, float] = {}
    for k in range(max_layer):
        rows = [s for s in scenes if s.layer_masks.shape[0] > k]
        if not rows:
            continue
        pred = seg.predict_layer(
            np.stack([s.image for s in rows]),
            np.stack([s.cumulative_masks[k] for s in rows]),
            seed=0,
            **overrides,
        )
        out[f"tf_layer{k}"] = float(
            np.mean([mask_iou(p, s.layer_masks[k]) for p, s in zip(pred.layer_mask, rows, strict=True)])
        )
    if quick:
        return out
    results = seg.segment(images, seed=0)
    free = mean_by_layer(
        [layer_ious(r.layer_masks, s.layer_masks) for r, s in zip(results, scenes, strict=True)]
    )
    for k in range(max_layer):
        if k in free:
            out[f"free_layer{k}"] = free[k]
    out["layer_count_acc"] = float(
        np.mean([r.num_layers == s.layer_masks.shape[0] for r, s in zip(results, scenes, strict=True)])
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", nargs="*", default=[], help="dotted overrides, e.g. train.lr=2e-3")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--eval-every", type=float, default=3.0, help="minutes of training between evaluations")
    ap.add_argument(
        "--steps", type=int, default=0, help="step budget instead of minutes (for a contended machine)"
    )
    ap.add_argument("--eval-steps", type=int, default=500, help="steps between evaluations with --steps")
    ap.add_argument("--val-scenes", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="cheap evaluations; the full one at the end only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON-lines file for the curve")
    ap.add_argument("--save", default=None, help="write the final EMA model as a checkpoint directory here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = (
        ModelConfig.preset(args.preset)
        if not args.preset.endswith(".json")
        else ModelConfig.load(args.preset)
    )
    cfg = cfg.replace(**parse_overrides(args.set))
    model = SASModel(cfg)
    ema = copy.deepcopy(model).eval()
    tc = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    stream = SampleStream(args.seed, cfg.image_size)
    val = val_scenes(args.seed, cfg.image_size, args.val_scenes)
    cpu = torch.device("cpu")
    amp_dtype = autocast_dtype(cpu, tc.precision)
    print(
        f"preset={cfg.name} params={model.num_parameters():,} overrides={args.set} "
        f"precision={'fp32' if amp_dtype is None else amp_dtype}",
        flush=True,
    )
    out = Path(args.out) if args.out else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")
    train_s, step, next_eval, losses = 0.0, 0, args.eval_every * 60, []
    while True:
        t0 = time.perf_counter()
        lr = (
            lr_at(step, tc.lr, tc.warmup_steps, args.steps)
            if args.steps
            else tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
        )
        for group in opt.param_groups:
            group["lr"] = lr
        image, cumulative, layer, foreground = stream.batch(tc.batch_size)
        cumulative = perturb_cumulative_mask(cumulative, tc.cmask_noise_p)
        with autocast(cpu, amp_dtype):
            loss, _ = model(image, cumulative, layer, foreground)
        train_step(model, ema, opt, loss, step)
        step += 1
        losses.append(float(loss.detach()))
        train_s += time.perf_counter() - t0
        if args.steps:
            due, done = step % args.eval_steps == 0 or step >= args.steps, step >= args.steps
        else:
            due, done = train_s >= next_eval or train_s >= args.minutes * 60, train_s >= args.minutes * 60
        if due:
            t1 = time.perf_counter()
            metrics = evaluate(ema, val, quick=args.quick and not done)
            row = {
                "minutes": round(train_s / 60, 2),
                "step": step,
                "s_per_step": round(train_s / step, 3),
                "loss": float(np.mean(losses[-50:])),
                **{k: round(v, 4) for k, v in metrics.items()},
                "eval_s": round(time.perf_counter() - t1, 1),
            }
            print(json.dumps(row), flush=True)
            if out:
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            next_eval += args.eval_every * 60
        if done:
            break
    if args.save:
        save_checkpoint(args.save, ema)


if __name__ == "__main__":
    main()
