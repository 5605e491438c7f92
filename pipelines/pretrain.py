"""Pretrain the model that ships with the project: one Ray-free command, scenes rendered on the fly.

    python pipelines/pretrain.py --out runs/pretrain --samples 1e6            # CPU, resumable
    python pipelines/pretrain.py --out runs/pretrain --minutes 60              # one hour more of it
    python pipelines/pretrain.py --out runs/pretrain --device cuda --batch 256 --render-workers 12
    python pipelines/pretrain.py --out runs/pretrain --no-train --ship models/pretrained   # ship it now

Trains a preset (default ``tiny``) on a mixture of scene families (``--mix``) with one shape kind held
out (``--hold-out``), every scene fresh (rendered by ``--render-workers`` processes, or inline), with
the optimiser step of ``pipelines/train.py``; the LR follows a cosine over ``--samples``. Every
``--eval-every`` samples the EMA weights are scored free-running on fresh test-split scenes
(a seed training never uses) of ``flat``, ``textured`` and ``flat`` made only of the held-out kind,
with the metrics of ``evaluate.py`` (layer 0 against the trivial answer, pair order over every edge and
the decidable ones, object-layer accuracy, layer count, AP50), one JSON line each in
``<out>/curve.jsonl``; then ``<out>/checkpoint`` (an ordinary checkpoint directory) and the resumable
state ``<out>/state.pt`` are rewritten (the state also every ``--save-every`` minutes). Rerun the
same command to go on; ``--minutes`` bounds one
invocation, ``--samples`` the run. ``--ship DIR`` writes the last evaluated checkpoint with its model
card (``MODEL_CARD.md``, from the run's own numbers) to ``DIR``, at most 20 MB.

Needs PyTorch, numpy, Pillow, pyarrow and scikit-image only (no Ray, no MLflow): it runs as is on a
bare GPU machine (``PYTHONPATH=.`` from the repository root when the project is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.cli.args import parse_override
from pipelines.training.augment import perturb_cumulative_mask
from pipelines.training.card import SHIP_LIMIT_BYTES, example_sheet, write_model_card
from pipelines.training.local import LocalState, ema_model
from pipelines.training.optim import EMA, TrainStep, lr_at, make_optimizer
from pipelines.training.scenes import SampleStream, SceneMix, val_scenes
from pipelines.training.validate import free_running_summary
from sas_model.checkpoint import CONFIG_FILE, META_FILE, MODEL_FILE, load_segmenter, save_checkpoint
from sas_model.config import ModelConfig
from sas_model.model import SASModel
from sas_model.segmenter import SequentialSegmenter
from synth.families import family_config
from synth.shapes import SHAPE_KINDS, kind_weights_for

DEFAULT_MIX = "flat=0.4,flat8=0.15,mixed=0.15,textured=0.3"
DEFAULT_HOLD_OUT = "star"
EVAL_SEED_OFFSET = 1000  # test scenes come from seed + this: a seed training never renders
METRICS = (
    "iou_free/layer0",
    "trivial/layer0",
    "margin_free/layer0",
    "miou_free",
    "pair_order",
    "pair_order_decidable",
    "decidable_fraction",
    "object_layer_acc",
    "trivial/object_layer_acc",
    "layer_count_acc",
    "ap50",
    "coco_ap50",
    "unet_passes_mean",
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/pretrain", help="run folder: state, curve, checkpoint")
    ap.add_argument("--preset", default="tiny", help="preset name or a config JSON file")
    ap.add_argument("--set", nargs="*", default=[], help="dotted config overrides, e.g. train.lr=1e-3")
    ap.add_argument("--mix", default=DEFAULT_MIX, help=f"scene families with weights (default {DEFAULT_MIX})")
    ap.add_argument(
        "--hold-out",
        default=DEFAULT_HOLD_OUT,
        help=f"shape kind never trained on, tested apart ({', '.join(SHAPE_KINDS)}; 'none' to train on all)",
    )
    ap.add_argument("--samples", type=float, default=1e6, help="samples of the whole run (LR schedule, stop)")
    ap.add_argument("--minutes", type=float, default=0.0, help="stop this invocation after so many minutes")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: the preset's)")
    ap.add_argument("--lr", type=float, default=0.0, help="peak learning rate (default: the preset's)")
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped weights")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    ap.add_argument("--eval-every", type=float, default=1e5, help="samples between evaluations")
    ap.add_argument("--eval-scenes", type=int, default=200, help="test scenes per evaluation set")
    ap.add_argument(
        "--save-every", type=float, default=10.0, help="minutes between saves of the resumable state"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--render-workers", type=int, default=0, help="processes rendering training scenes")
    ap.add_argument(
        "--probe-kind",
        default=None,
        help="also test on flat scenes made only of this shape kind (default: the held-out kind; "
        "keeps a kind's curve going after it joins training)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ship", default=None, help="write the last evaluated model and its card here")
    ap.add_argument("--no-train", action="store_true", help="train nothing (with --ship: ship what there is)")
    return ap


class Run:
    """What one invocation sets up: config, model, optimiser, stream, state and the evaluation sets."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        cfg = (
            ModelConfig.load(args.preset)
            if args.preset.endswith(".json")
            else ModelConfig.preset(args.preset)
        )
        cfg = cfg.replace(**dict(parse_override(item) for item in args.set))
        changes = {"train.ema_decay": args.ema, "train.warmup_steps": args.warmup}
        if args.batch:
            changes["train.batch_size"] = args.batch
        if args.lr:
            changes["train.lr"] = args.lr
        self.cfg = cfg.replace(**changes).validate()
        held = () if args.hold_out in ("", "none") else (args.hold_out,)
        self.held_out = held
        self.mix = SceneMix.parse(args.mix, self.cfg.image_size, without=held)
        self.device = torch.device(args.device)
        self.model = SASModel(self.cfg).to(self.device)
        tc = self.cfg.train
        self.opt = make_optimizer(self.model, tc.lr, tc.weight_decay)
        self.ema = EMA(self.model, tc.ema_decay)
        self.step_fn = TrainStep(self.model, self.opt, self.ema, self.device, tc.precision, tc.grad_clip)
        self.stream = SampleStream(
            args.seed, self.mix, workers=args.render_workers, completion=self.cfg.order.enabled
        )
        self.state = LocalState(self.out / "state.pt", self.model, self.ema, self.opt, self.stream)
        self.total_steps = max(1, int(args.samples) // tc.batch_size)

    def eval_sets(self) -> dict[str, list]:
        """Fresh test-split scenes: ``flat``, ``textured`` and, when a kind is held out, ``flat`` made
        only of it (``flat_<kind>``; ``--probe-kind`` names it when none is held out)."""
        size, seed = self.cfg.image_size, self.args.seed + EVAL_SEED_OFFSET
        n = self.args.eval_scenes
        sets = {
            name: val_scenes(seed, family_config(name, size), n, split="test")
            for name in ("flat", "textured")
        }
        probes = self.held_out if self.args.probe_kind is None else (self.args.probe_kind,)
        for kind in (k for k in probes if k not in ("", "none")):
            only = replace(family_config("flat", size), shape_weights=kind_weights_for((kind,)))
            sets[f"flat_{kind}"] = val_scenes(seed, only, n, split="test")
        return sets


def evaluate(model: Any, sets: dict[str, list], device: torch.device) -> dict[str, dict[str, float]]:
    """The free-running metrics (``METRICS``) of ``model`` on each evaluation set."""
    seg = SequentialSegmenter(model, device=device)
    out = {}
    for name, scenes in sets.items():
        summary, _ = free_running_summary(seg, scenes, seed=0)
        out[name] = {key: round(float(summary[key]), 4) for key in METRICS if key in summary}
    return out


def save_eval_checkpoint(run: Run, counters: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """The EMA weights as an ordinary checkpoint directory ``<out>/checkpoint`` (written aside, then
    renamed into place), with the run's facts in its ``meta.json``."""
    target = run.out / "checkpoint"
    tmp = run.out / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    extra = {
        "step": counters["step"],
        "samples_seen": counters["samples"],
        "train_minutes": round(counters["train_s"] / 60, 1),
        "pretrain": {
            "mix": run.mix.describe(),
            "held_out_shape_kinds": list(run.held_out),
            "seed": run.args.seed,
            "eval_seed": run.args.seed + EVAL_SEED_OFFSET,
            "batch_size": run.cfg.train.batch_size,
            "hardware": counters.get("hardware", []),
            "commands": counters.get("commands", []),
            "phases": counters.get("phases", []),
            "metrics": metrics,
        },
    }
    save_checkpoint(tmp, ema_model(run.model, run.ema), extra=extra, write_ema=False)
    old = run.out / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def ship(checkpoint: Path, destination: Path, curve: list[dict[str, Any]], examples: list) -> None:
    """Copy the checkpoint's files to ``destination`` with ``MODEL_CARD.md``, ``curve.jsonl`` and
    ``examples.png`` (what the model does on ``examples``, fresh test scenes)."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, MODEL_FILE, META_FILE):
        shutil.copyfile(checkpoint / name, destination / name)
    (destination / "curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    write_model_card(destination, json.loads((checkpoint / META_FILE).read_text()), curve)
    example_sheet(load_segmenter(destination), examples, destination / "examples.png")
    size = sum(f.stat().st_size for f in destination.iterdir() if f.is_file())
    if size > SHIP_LIMIT_BYTES:
        raise SystemExit(f"error: the shipped model takes {size / 2**20:.1f} MB, over the 20 MB limit")
    print(f"[pretrain] shipped {checkpoint} to {destination} ({size / 2**20:.1f} MB)", flush=True)


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        flags = Path("/proc/cpuinfo").read_text()
        cpu += " avx512_bf16" if "avx512_bf16" in flags else " avx2 (no bf16)"
    except OSError:
        pass
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()}-core CPU ({cpu}), {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        run = Run(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    tc = run.cfg.train
    run.out.mkdir(parents=True, exist_ok=True)
    counters: dict[str, Any] = {"step": 0, "samples": 0, "train_s": 0.0, "hardware": []}
    curve: list[dict[str, Any]] = []
    resumed = run.state.load(run.device)
    if resumed:
        counters, curve = resumed
        torch.manual_seed(args.seed + int(counters["step"]))
        print(f"[pretrain] resumed from {run.state.path} at {counters['samples']:,} samples", flush=True)
    if not args.no_train:
        if hardware() not in counters["hardware"]:
            counters["hardware"].append(hardware())
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python", "pipelines/pretrain.py", *given])
        if command not in counters.setdefault("commands", []):
            counters["commands"].append(command)
        phase = {"mix": run.mix.describe(), "held_out": list(run.held_out)}
        phases = counters.setdefault("phases", [])
        if not phases or {k: phases[-1][k] for k in phase} != phase:  # the data changed from here on
            phases.append({"from_samples": int(counters["samples"]), **phase})
    print(
        f"[pretrain] {run.cfg.name}: {run.model.num_parameters():,} params, mix {run.mix.describe()}, "
        f"held out {list(run.held_out) or 'none'}, batch {tc.batch_size}, lr {tc.lr}, "
        f"{run.step_fn.precision_label()}, target {int(args.samples):,} samples, out {run.out}",
        flush=True,
    )
    sets = run.eval_sets()
    started = last_print = last_save = time.perf_counter()
    wait, window = 0.0, 0
    losses: list[float] = []
    next_eval = (int(counters["samples"]) // int(args.eval_every) + 1) * int(args.eval_every)
    while counters["samples"] < args.samples and not args.no_train:
        if args.minutes and time.perf_counter() - started > args.minutes * 60:
            break
        t0 = time.perf_counter()
        batch = {k: v.to(run.device) for k, v in run.stream.batch(tc.batch_size).items()}
        wait += time.perf_counter() - t0
        batch["cumulative_mask"] = perturb_cumulative_mask(batch["cumulative_mask"], tc.cmask_noise_p)
        result = run.step_fn(batch, lr_at(int(counters["step"]), tc.lr, tc.warmup_steps, run.total_steps))
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        counters["train_s"] += time.perf_counter() - t0
        counters["step"] += 1
        counters["samples"] += tc.batch_size
        window += tc.batch_size
        losses.append(float(result.loss))
        if time.perf_counter() - last_print > 60:
            elapsed = time.perf_counter() - last_print
            print(
                f"[pretrain] {counters['samples']:,} samples, loss {np.mean(losses[-100:]):.4f}, "
                f"{window / elapsed:.1f} samples/s, data wait {wait / elapsed:.0%}",
                flush=True,
            )
            last_print, wait, window = time.perf_counter(), 0.0, 0
            losses = losses[-100:]
        if time.perf_counter() - last_save > args.save_every * 60:
            run.state.save(counters, curve)
            last_save = time.perf_counter()
        if counters["samples"] >= next_eval or counters["samples"] >= args.samples:
            next_eval += int(args.eval_every)
            t1 = time.perf_counter()
            metrics = evaluate(ema_model(run.model, run.ema), sets, run.device)
            row = {
                "samples": counters["samples"],
                "step": counters["step"],
                "train_minutes": round(counters["train_s"] / 60, 1),
                "loss": round(float(np.mean(losses[-100:])), 4),
                "metrics": metrics,
                "eval_s": round(time.perf_counter() - t1, 1),
            }
            curve.append(row)
            print(json.dumps(row), flush=True)
            (run.out / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
            save_eval_checkpoint(run, counters, metrics)
            run.state.save(counters, curve)
            last_print, wait, window = time.perf_counter(), 0.0, 0
    if not args.no_train:  # a --no-train --ship beside a running run must not overwrite its state
        run.state.save(counters, curve)
    run.stream.close()
    print(f"[pretrain] stopped at {counters['samples']:,} of {int(args.samples):,} samples", flush=True)
    if args.ship:
        checkpoint = run.out / "checkpoint"
        if not checkpoint.exists():
            raise SystemExit("error: no evaluated checkpoint yet; train past the first --eval-every first")
        examples = [scenes[i] for scenes in sets.values() for i in range(min(2, len(scenes)))]
        ship(checkpoint, Path(args.ship), curve, examples)


if __name__ == "__main__":
    main()
