"""Learning-curve probe: how fast does a model learn occlusion order? (single process, no Ray, no MLflow)

Trains a preset on scenes rendered in-process (train split of a scene family) and, every
``--eval-steps`` steps (or ``--eval-every`` minutes), evaluates the EMA weights on held-out val
scenes of the same family, beside the trivial answers on the same scenes:

- teacher-forced IoU per layer (given the true ``C_k``), the trivial answer "everything not yet in
  ``C_k``" (``trivial/layer{k}``; layer 0: "every object is in front") and the margin over it;
- ``probe_pair_order``: over true occlusion edges whose front object is in layer 0, the front object's
  mean predicted layer-0 probability over its visible pixels beats the back object's (chance 0.5);
- with the full evaluation (not ``--quick``, and always at the end): the free-running segmenter's
  IoU per layer, ``pair_order`` (front object in an earlier predicted layer), layer-count accuracy.

One JSON line per evaluation goes to ``--out``. ``--minimal`` is the quick mechanism check of the model
issue (2 flat objects, layer 0 only, the deterministic head; a few CPU minutes)::

    python pipelines/bench/learning.py --minimal --steps 2000 --eval-steps 500
    python pipelines/bench/learning.py --preset tiny --family flat --steps 3000 --out runs/curve.jsonl
    python pipelines/bench/learning.py --preset small --device cuda --batch 256 --minutes 8 --save ckpt

With ``--save DIR`` the run writes a resumable state there after each evaluation (model, EMA,
optimiser, step, curve) and a rerun of the same command continues from it.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.cli.args import parse_override
from pipelines.training.augment import FLIP_FIELDS, perturb_cumulative_mask
from pipelines.training.optim import EMA, TrainStep, lr_at, make_optimizer
from sas_model.checkpoint import save_checkpoint
from sas_model.config import ModelConfig
from sas_model.metrics import layer_ious, mask_iou, mean_by_layer, pair_order, trivial_layer_ious
from sas_model.model import SASModel
from sas_model.segmenter import SequentialSegmenter
from synth.families import FAMILIES, family_config
from synth.reader import Sample, collate_samples, scene_to_samples
from synth.render import RenderConfig, render_scenes

VAL_START = 10_000_000  # val scenes come from ids far from the training ids


CHUNK = 256  # scenes rendered per task


def render_samples(
    seed: int, start: int, render: RenderConfig, layers: tuple[int, ...] | None
) -> list[Sample]:
    """The training samples of scenes ``start .. start + CHUNK`` (train split; only ``layers`` if given)."""
    return [
        s
        for sc in render_scenes(seed, start, CHUNK, render)
        if sc.split == "train"
        for s in scene_to_samples(sc)
        if layers is None or s.layer_index in layers
    ]


def _quiet_worker() -> None:
    torch.set_num_threads(1)


class SampleStream:
    """Endless shuffled training samples from train-split scenes rendered on the fly.

    ``layers``: keep only samples of these layer indices (None: every k, the terminal one included).
    ``batch`` returns :func:`synth.reader.collate_samples` tensors; with ``hflip`` half the batches
    are mirrored left-right. ``workers`` > 0 renders chunks in that many processes, a few chunks
    ahead, so a GPU is not kept waiting; the scenes and their order are the same as with 0.
    """

    def __init__(
        self,
        seed: int,
        render: RenderConfig,
        buffer: int = 2048,
        layers: tuple[int, ...] | None = None,
        hflip: bool = True,
        workers: int = 0,
    ) -> None:
        self.seed, self.cfg, self.buffer = seed, render, buffer
        self.layers, self.hflip = layers, hflip
        self.next_id, self.pool = 0, []
        self.rng = np.random.default_rng(seed)
        self.workers = workers
        self._procs: Any = None
        self._ahead: deque[tuple[int, Any]] = deque()

    def _next_chunk(self) -> list[Sample]:
        if not self.workers:
            return render_samples(self.seed, self.next_id, self.cfg, self.layers)
        if self._procs is None:
            ctx = multiprocessing.get_context("spawn")
            self._procs = ctx.Pool(self.workers, initializer=_quiet_worker)
        while self._ahead and self._ahead[0][0] != self.next_id:  # stale after restore
            self._ahead.popleft()
        start = self._ahead[-1][0] + CHUNK if self._ahead else self.next_id
        while len(self._ahead) < 2 * self.workers:
            args = (self.seed, start, self.cfg, self.layers)
            self._ahead.append((start, self._procs.apply_async(render_samples, args)))
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

    def state(self) -> dict[str, Any]:
        return {"next_id": self.next_id}

    def restore(self, state: dict[str, Any]) -> None:
        self.next_id, self.pool = int(state["next_id"]), []

    def close(self) -> None:
        if self._procs is not None:
            self._procs.terminate()
            self._procs = None


def val_scenes(seed: int, render: RenderConfig, count: int) -> list:
    scenes, start = [], VAL_START
    while len(scenes) < count:
        scenes += [s for s in render_scenes(seed, start, 256, render) if s.split == "val"]
        start += 256
    return scenes[:count]


def probe_pair_order(soft: np.ndarray, scenes: list) -> tuple[int, int]:
    """``(correct, pairs)``: edges (front, back) with the front in layer 0 whose front object's mean
    layer-0 probability ``soft float[N,H,W]`` over its visible pixels beats the back object's."""
    correct = pairs = 0
    for prob, scene in zip(soft, scenes, strict=True):
        if not scene.has_instances:
            continue
        score = [float(prob[v].mean()) if v.any() else 0.0 for v in scene.visible_masks]
        for front, back in np.asarray(scene.occlusion_edges).reshape(-1, 2):
            if scene.object_layer[front] == 0:
                pairs += 1
                correct += int(score[front] > score[back])
    return correct, pairs


def evaluate(
    model: SASModel,
    scenes: list,
    max_layer: int = 3,
    quick: bool = False,
    layers: tuple[int, ...] | None = None,
) -> dict[str, float]:
    """EMA metrics on val scenes; ``quick``: teacher-forced only, one ensemble member."""
    seg = SequentialSegmenter(model, device=next(model.parameters()).device)
    overrides = {"ensemble_size": 1} if quick else {}
    out: dict[str, float] = {}
    trivial = mean_by_layer([dict(enumerate(trivial_layer_ious(s.layer_masks))) for s in scenes])
    for k in range(max_layer) if layers is None else layers:
        rows = [s for s in scenes if s.layer_masks.shape[0] > k]
        if not rows:
            continue
        pred = seg.predict_layer(
            np.stack([s.image for s in rows]),
            np.stack([s.cumulative_masks[k] for s in rows]),
            seed=0,
            **overrides,
        )
        iou = float(
            np.mean([mask_iou(p, s.layer_masks[k]) for p, s in zip(pred.layer_mask, rows, strict=True)])
        )
        out[f"tf_layer{k}"] = iou
        out[f"trivial_layer{k}"] = trivial[k]
        out[f"margin_tf_layer{k}"] = iou - trivial[k]
        if k == 0:
            correct, pairs = probe_pair_order(pred.soft, rows)
            out["probe_pair_order"] = correct / max(1, pairs)
    if quick:
        return out
    results = seg.segment(np.stack([s.image for s in scenes]), seed=0)
    free = mean_by_layer(
        [layer_ious(r.layer_masks, s.layer_masks) for r, s in zip(results, scenes, strict=True)]
    )
    for k in range(max_layer):
        if k in free:
            out[f"free_layer{k}"] = free[k]
    correct = pairs = 0
    for r, s in zip(results, scenes, strict=True):
        if s.has_instances:
            c, p = pair_order(r.layer_masks, s.visible_masks, s.occlusion_edges)
            correct, pairs = correct + c, pairs + p
    out["pair_order"] = correct / max(1, pairs)
    out["layer_count_acc"] = float(
        np.mean([r.num_layers == s.layer_masks.shape[0] for r, s in zip(results, scenes, strict=True)])
    )
    return out


def ema_model(model: SASModel, ema: EMA) -> SASModel:
    """A copy of ``model`` holding the EMA weights, in eval mode."""
    copy_ = copy.deepcopy(model).eval()
    copy_.load_state_dict(ema.state_dict())
    return copy_


def _state_path(save: Path) -> Path:
    return save / "probe_state.pt"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="preset name or a config JSON file")
    ap.add_argument("--set", nargs="*", default=[], help="dotted overrides, e.g. train.lr=2e-3")
    ap.add_argument("--family", default="textured", help=f"scene family: {', '.join(FAMILIES)}")
    ap.add_argument("--objects", nargs=2, type=int, default=None, metavar=("MIN", "MAX"))
    ap.add_argument("--layers", nargs="*", type=int, default=None, help="train (and score) only these k")
    ap.add_argument(
        "--minimal",
        action="store_true",
        help="the minimal task: --family flat2 --layers 0 --set diffusion.mode=deterministic --quick",
    )
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--eval-every", type=float, default=3.0, help="minutes of training between evaluations")
    ap.add_argument("--steps", type=int, default=0, help="step budget instead of minutes")
    ap.add_argument("--eval-steps", type=int, default=500, help="steps between evaluations with --steps")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: the preset's)")
    ap.add_argument("--val-scenes", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="cheap evaluations; the full one at the end only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--render-workers", type=int, default=0, help="processes rendering training scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON-lines file for the curve")
    ap.add_argument("--save", default=None, help="resumable state and the final EMA checkpoint go here")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.minimal:
        args.family = "flat2" if args.family == "textured" else args.family
        args.layers = args.layers if args.layers is not None else [0]
        args.set = ["diffusion.mode=deterministic", *args.set]
        args.quick = True
    return args


def probe_config(args: argparse.Namespace) -> tuple[ModelConfig, Any]:
    """The model config (preset, ``--set``, ``--batch``) and the scene family's render config."""
    cfg = ModelConfig.load(args.preset) if args.preset.endswith(".json") else ModelConfig.preset(args.preset)
    cfg = cfg.replace(**dict(parse_override(item) for item in args.set))
    if args.batch:
        cfg = cfg.replace(**{"train.batch_size": args.batch})
    counts = {"min_objects": args.objects[0], "max_objects": args.objects[1]} if args.objects else {}
    return cfg, family_config(args.family, cfg.image_size, **counts)


class ProbeState:
    """The resumable state under ``--save``: model, EMA, optimiser, sample stream, clock and curve,
    written atomically after every evaluation."""

    def __init__(self, save: Path, model: SASModel, ema: EMA, opt: torch.optim.Optimizer, stream: Any):
        self.path, self.model, self.ema, self.opt, self.stream = _state_path(save), model, ema, opt, stream

    def load(self, device: torch.device) -> tuple[int, float, list[dict[str, Any]]] | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location=device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"], int(state.get("ema_updates", state["step"])))
        self.opt.load_state_dict(state["optimizer"])
        self.stream.restore(state["stream"])
        return int(state["step"]), float(state["train_s"]), json.loads(state["curve"])

    def save(self, step: int, train_s: float, curve: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "ema_updates": self.ema.num_updates,
            "optimizer": self.opt.state_dict(),
            "stream": self.stream.state(),
            "step": step,
            "train_s": train_s,
            "curve": json.dumps(curve),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cfg, render = probe_config(args)
    layers = tuple(args.layers) if args.layers is not None else None
    model = SASModel(cfg).to(device)
    tc = cfg.train
    opt = make_optimizer(model, tc.lr, tc.weight_decay)
    ema = EMA(model, tc.ema_decay)
    train_step = TrainStep(model, opt, ema, device, tc.precision, tc.grad_clip)
    stream = SampleStream(args.seed, render, layers=layers, workers=args.render_workers)
    val = val_scenes(args.seed, render, args.val_scenes)
    state = ProbeState(Path(args.save), model, ema, opt, stream) if args.save else None
    out = Path(args.out) if args.out else None
    train_s, step, curve = 0.0, 0, []
    resumed = state.load(device) if state else None
    if resumed:
        step, train_s, curve = resumed
        torch.manual_seed(args.seed + step)
        print(f"[probe] resumed from {args.save} at step {step}", flush=True)
    print(
        f"[probe] preset={cfg.name} params={model.num_parameters():,} family={args.family} "
        f"objects={render.min_objects}-{render.max_objects} layers={layers or 'all'} overrides={args.set} "
        f"device={device} precision={train_step.precision_label()} batch={tc.batch_size}",
        flush=True,
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(row) + "\n" for row in curve))
    total = args.steps
    next_eval = (len(curve) + 1) * (args.eval_steps if total else args.eval_every * 60)
    losses: list[float] = []
    done = (total and step >= total) or (not total and train_s >= args.minutes * 60)
    while not done:
        t0 = time.perf_counter()
        lr = (
            lr_at(step, tc.lr, tc.warmup_steps, total)
            if total
            else tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
        )
        batch = {k: v.to(device) for k, v in stream.batch(tc.batch_size).items()}
        batch["cumulative_mask"] = perturb_cumulative_mask(batch["cumulative_mask"], tc.cmask_noise_p)
        result = train_step(batch, lr)
        step += 1
        losses.append(float(result.loss))
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - t0
        done = (total and step >= total) or (not total and train_s >= args.minutes * 60)
        if (step if total else train_s) >= next_eval or done:
            t1 = time.perf_counter()
            metrics = evaluate(ema_model(model, ema), val, quick=args.quick and not done, layers=layers)
            row = {
                "minutes": round(train_s / 60, 2),
                "step": step,
                "samples": step * tc.batch_size,
                "s_per_step": round(train_s / step, 3),
                "loss": round(float(np.mean(losses[-50:])), 4),
                **{k: round(v, 4) for k, v in metrics.items()},
                "eval_s": round(time.perf_counter() - t1, 1),
            }
            curve.append(row)
            print(json.dumps(row), flush=True)
            if out:
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            next_eval += args.eval_steps if total else args.eval_every * 60
            if state:
                state.save(step, train_s, curve)
    stream.close()
    if args.save:
        checkpoint = Path(args.save) / "checkpoint"
        save_checkpoint(checkpoint, ema_model(model, ema), extra={"step": step, "probe": vars(args)})


if __name__ == "__main__":
    main()
