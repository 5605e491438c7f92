"""Learning-curve probe: how fast does a model learn occlusion order? (single process, no Ray, no MLflow)

Trains a preset on scenes rendered in-process (train split of a scene family) and, every
``--eval-steps`` steps (or ``--eval-every`` minutes), evaluates the EMA weights on held-out val
scenes of the same family, beside the trivial answers on the same scenes:

- teacher-forced IoU per layer (given the true ``C_k``), the trivial answer "everything not yet in
  ``C_k``" (``trivial/layer{k}``; layer 0: "every object is in front") and the margin over it;
- ``probe_pair_order``: over true occlusion edges whose front object is in layer 0, the front object's
  mean predicted layer-0 probability over its visible pixels beats the back object's (chance 0.5);
- with the full evaluation (not ``--quick``, and always at the end): the free-running segmenter
  scored as ``evaluate.py`` does: layer-0 IoU, the trivial answer and the margin,
  ``pair_order`` over every edge and over decidable ones, object-layer accuracy, layer count.

One JSON line per evaluation goes to ``--out``. ``--minimal`` is the quick mechanism check of the model
issue (2 flat objects, layer 0 only, the deterministic head; a few CPU minutes)::

    python pipelines/bench/learning.py --minimal --steps 2000 --eval-steps 500
    python pipelines/bench/learning.py --preset tiny --family flat --steps 3000 --out runs/curve.jsonl
    python pipelines/bench/learning.py --preset small --device cuda --batch 256 --minutes 8 --save ckpt
    python pipelines/bench/learning.py --family flat --score ckpt/checkpoint   # score a checkpoint only

With ``--save DIR`` the run writes a resumable state there after each evaluation (model, EMA,
optimiser, step, curve) and a rerun of the same command continues from it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.cli.args import parse_override
from pipelines.training.augment import perturb_cumulative_mask
from pipelines.training.local import LocalState, ema_model
from pipelines.training.optim import EMA, TrainStep, lr_at, make_optimizer
from pipelines.training.scenes import SampleStream, val_scenes
from pipelines.training.validate import free_running_summary
from sas_model.checkpoint import load_model, save_checkpoint
from sas_model.config import ModelConfig
from sas_model.metrics import mask_iou, mean_by_layer, trivial_layer_ious
from sas_model.model import SASModel
from sas_model.segmenter import SequentialSegmenter
from synth.families import FAMILIES, family_config


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


# free-running summary key (sas_model.metrics_report) -> curve key
FREE_KEYS = {
    "iou_free/layer0": "free_layer0",
    "margin_free/layer0": "margin_free_layer0",
    "iou_free/layer1": "free_layer1",
    "iou_free/layer2": "free_layer2",
    "miou_free": "free_miou",
    "pair_order": "pair_order",
    "pair_order_decidable": "pair_order_decidable",
    "decidable_fraction": "decidable_fraction",
    "object_layer_acc": "object_layer_acc",
    "layer_count_acc": "layer_count_acc",
    "unet_passes_mean": "unet_passes",
}


def evaluate(
    model: SASModel,
    scenes: list,
    max_layer: int = 3,
    quick: bool = False,
    layers: tuple[int, ...] | None = None,
) -> dict[str, float]:
    """EMA metrics on val scenes; ``quick``: teacher-forced only, one ensemble member.

    The free-running part is scored by ``sas_model.metrics_report`` (the definitions of
    ``evaluate.py``): layer-0 IoU beside the trivial answer, pair order over every edge and over the
    decidable ones, object-layer accuracy and layer count (keys: ``FREE_KEYS``)."""
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
            layer_index=np.full(len(rows), k),
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
    summary, _ = free_running_summary(seg, scenes, seed=0)
    out.update({name: summary[key] for key, name in FREE_KEYS.items() if key in summary})
    return out


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
    ap.add_argument(
        "--score",
        default=None,
        metavar="CHECKPOINT",
        help="train nothing: score this checkpoint on the val scenes (the full evaluation), print it",
    )
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


def score_checkpoint(args: argparse.Namespace, render: Any, device: torch.device) -> None:
    """``--score``: the same val scenes and evaluation as a training run of these flags, printed."""
    model = load_model(args.score, device=device)
    if args.set:
        model.cfg = model.cfg.replace(**dict(parse_override(item) for item in args.set))
    scenes = val_scenes(args.seed, render, args.val_scenes)
    scores = evaluate(model, scenes, layers=tuple(args.layers or ()) or None)
    print(json.dumps({"checkpoint": args.score, **{k: round(v, 4) for k, v in scores.items()}}), flush=True)


def resume(
    state: LocalState | None, args: argparse.Namespace, device: torch.device
) -> tuple[int, float, list]:
    """``(step, train_s, curve)`` of the saved state, or of a fresh run."""
    resumed = state.load(device) if state else None
    if not resumed:
        return 0, 0.0, []
    counters, curve = resumed
    step, train_s = int(counters["step"]), float(counters["train_s"])
    torch.manual_seed(args.seed + step)
    print(f"[probe] resumed from {args.save} at step {step}", flush=True)
    return step, train_s, curve


def finished(args: argparse.Namespace, step: int, train_s: float) -> bool:
    """Whether the budget (``--steps``, else ``--minutes`` of training) is spent."""
    return step >= args.steps if args.steps else train_s >= args.minutes * 60


def learning_rate(step: int, tc: Any, total: int) -> float:
    """The cosine schedule over ``total`` steps; with a time budget (``total`` 0) warm-up, then flat."""
    if total:
        return lr_at(step, tc.lr, tc.warmup_steps, total)
    return tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))


def curve_row(model: SASModel, val: list, quick: bool, layers: tuple[int, ...] | None, **facts: Any) -> dict:
    """One curve row: ``facts`` (minutes, step, samples, ...), then the metrics of ``model`` on ``val``."""
    t1 = time.perf_counter()
    metrics = evaluate(model, val, quick=quick, layers=layers)
    return {
        **facts,
        **{k: round(v, 4) for k, v in metrics.items()},
        "eval_s": round(time.perf_counter() - t1, 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cfg, render = probe_config(args)
    if args.score:
        score_checkpoint(args, render, device)
        return
    layers = tuple(args.layers) if args.layers is not None else None
    model = SASModel(cfg).to(device)
    tc = cfg.train
    opt = make_optimizer(model, tc.lr, tc.weight_decay)
    ema = EMA(model, tc.ema_decay)
    train_step = TrainStep(model, opt, ema, device, tc.precision, tc.grad_clip)
    stream = SampleStream(
        args.seed, render, layers=layers, workers=args.render_workers, completion=cfg.order.enabled
    )
    val = val_scenes(args.seed, render, args.val_scenes)
    state = LocalState(Path(args.save) / "probe_state.pt", model, ema, opt, stream) if args.save else None
    out = Path(args.out) if args.out else None
    step, train_s, curve = resume(state, args, device)
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
    every = args.eval_steps if total else args.eval_every * 60
    next_eval = (len(curve) + 1) * every
    losses: list[float] = []
    done = finished(args, step, train_s)
    while not done:
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in stream.batch(tc.batch_size).items()}
        batch["cumulative_mask"] = perturb_cumulative_mask(batch["cumulative_mask"], tc.cmask_noise_p)
        result = train_step(batch, learning_rate(step, tc, total))
        step += 1
        losses.append(float(result.loss))
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - t0
        done = finished(args, step, train_s)
        if (step if total else train_s) >= next_eval or done:
            row = curve_row(
                ema_model(model, ema), val, args.quick and not done, layers,
                minutes=round(train_s / 60, 2), step=step, samples=step * tc.batch_size,
                s_per_step=round(train_s / step, 3), loss=round(float(np.mean(losses[-50:])), 4),
            )  # fmt: skip
            curve.append(row)
            print(json.dumps(row), flush=True)
            if out:
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            next_eval += every
            if state:
                state.save({"step": step, "train_s": train_s}, curve)
    stream.close()
    if args.save:
        checkpoint = Path(args.save) / "checkpoint"
        save_checkpoint(checkpoint, ema_model(model, ema), extra={"step": step, "probe": vars(args)})


if __name__ == "__main__":
    main()
