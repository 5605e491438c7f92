"""Pretraining of the shipped model, Ray-free (``pipelines/pretrain.py`` parses its flags into a
``PretrainRequest`` and calls ``run``): scenes rendered on the fly, the optimiser step of the Ray Train
worker, free-running evaluations on fresh test scenes, the resumable state ``<out>/state.pt``
(``pipelines.training.local.LocalState``) and ``ship``, which writes the model with its card.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.cli.args import parse_override
from pipelines.cli.flags import option
from pipelines.training.augment import perturb_cumulative_mask
from pipelines.training.card import SHIP_LIMIT_BYTES, example_sheet, write_model_card
from pipelines.training.config import model_config
from pipelines.training.local import LocalState, ema_model
from pipelines.training.optim import EMA, TrainStep, lr_at, make_optimizer
from pipelines.training.scenes import SampleStream, SceneMix, val_scenes
from pipelines.training.validate import free_running_summary
from sas_model.checkpoint import CONFIG_FILE, META_FILE, MODEL_FILE, load_segmenter, save_checkpoint
from sas_model.model import SASModel
from sas_model.segmenter import SequentialSegmenter
from synth.cli import UserError
from synth.families import family_config
from synth.shapes import SHAPE_KINDS, kind_weights_for

DEFAULT_MIX = "flat=0.4,flat8=0.15,mixed=0.15,textured=0.3"
DEFAULT_HOLD_OUT = "star"
NO_KIND = ("", "none")  # --hold-out / --probe-kind values that name no shape kind
EVAL_SEED_OFFSET = 1000  # test scenes come from seed + this: a seed training never renders
PRINT_EVERY_S = 60.0  # seconds between progress lines
LOSS_WINDOW = 100  # the last so many steps' losses make the loss reported
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


@dataclass(frozen=True, kw_only=True)
class PretrainRequest:
    """One invocation of the pretraining command; each field is its flag of the same name."""

    out: str = option("runs/pretrain", "run folder: state, curve, checkpoint")
    preset: str = option("tiny", "preset name or a config JSON file")
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE ... (a flag of any number of values: build_parser's)
    mix: str = option(DEFAULT_MIX, "scene families with weights")
    hold_out: str = option(
        DEFAULT_HOLD_OUT,
        f"shape kind never trained on, tested apart ({', '.join(SHAPE_KINDS)}; 'none' to train on all)",
    )
    samples: float = option(1e6, "samples of the whole run (LR schedule, stop)", parse=float)
    minutes: float = option(
        0.0,
        "stop this invocation after so many minutes (default: at --samples)",
        parse=float,
        show_default=False,
    )
    batch: int = option(0, "batch size (default: the preset's)", parse=int, show_default=False)
    lr: float = option(0.0, "peak learning rate (default: the preset's)", parse=float, show_default=False)
    ema: float = option(0.999, "EMA decay of the shipped weights", parse=float)
    warmup: int = option(200, "warm-up steps", parse=int)
    eval_every: float = option(1e5, "samples between evaluations", parse=float)
    eval_scenes: int = option(200, "test scenes per evaluation set", parse=int)
    save_every: float = option(10.0, "minutes between saves of the resumable state", parse=float)
    threads: int = option(0, "torch threads (default: torch's choice)", parse=int, show_default=False)
    render_workers: int = option(0, "processes rendering training scenes", parse=int)
    probe_kind: str | None = option(
        None,
        "also test on flat scenes made only of this shape kind (default: the held-out kind; "
        "keeps a kind's curve going after it joins training)",
    )
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...")
    seed: int = option(0, f"seed of the training scenes (test scenes: seed + {EVAL_SEED_OFFSET})", parse=int)
    ship: str | None = option(None, "write the last evaluated model and its card here")
    train: bool = option(True, "train nothing (with --ship: ship what there is)")

    def validate(self) -> PretrainRequest:
        """This request, or a one-line ``UserError`` naming the flag that is wrong."""
        positive = {"samples": self.samples, "save-every": self.save_every}
        at_least_one = {"eval-every": self.eval_every, "eval-scenes": self.eval_scenes}
        not_negative = {
            "minutes": self.minutes,
            "batch": self.batch,
            "lr": self.lr,
            "warmup": self.warmup,
            "threads": self.threads,
            "render-workers": self.render_workers,
        }
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"--{name} must be > 0, got {value}")
        for name, value in at_least_one.items():
            if not value >= 1:
                raise UserError(f"--{name} must be >= 1, got {value}")
        for name, value in not_negative.items():
            if not value >= 0:
                raise UserError(f"--{name} must be >= 0, got {value}")
        if not 0.0 <= self.ema < 1.0:
            raise UserError(f"--ema must be in [0, 1), got {self.ema}")
        for name, kind in (("hold-out", self.hold_out), ("probe-kind", self.probe_kind)):
            if kind is not None and kind not in (*NO_KIND, *SHAPE_KINDS):
                raise UserError(f"--{name}: unknown shape kind {kind!r} (one of {', '.join(SHAPE_KINDS)})")
        for item in self.overrides:
            try:
                parse_override(item)
            except argparse.ArgumentTypeError as exc:
                raise UserError(str(exc)) from None
        return self


class Run:
    """What one invocation sets up: config, model, optimiser, stream, state and the evaluation sets."""

    def __init__(self, request: PretrainRequest) -> None:
        self.request, self.out = request, Path(request.out)
        cfg = model_config(request.preset, dict(parse_override(item) for item in request.overrides))
        changes = {"train.ema_decay": request.ema, "train.warmup_steps": request.warmup}
        if request.batch:
            changes["train.batch_size"] = request.batch
        if request.lr:
            changes["train.lr"] = request.lr
        self.cfg = cfg.replace(**changes).validate()
        self.held_out = () if request.hold_out in NO_KIND else (request.hold_out,)
        self.mix = SceneMix.parse(request.mix, self.cfg.image_size, without=self.held_out)
        self.device = torch.device(request.device)
        self.model = SASModel(self.cfg).to(self.device)
        tc = self.cfg.train
        self.opt = make_optimizer(self.model, tc.lr, tc.weight_decay)
        self.ema = EMA(self.model, tc.ema_decay)
        self.step_fn = TrainStep(self.model, self.opt, self.ema, self.device, tc.precision, tc.grad_clip)
        self.stream = SampleStream(
            request.seed, self.mix, workers=request.render_workers, completion=self.cfg.order.enabled
        )
        self.state = LocalState(self.out / "state.pt", self.model, self.ema, self.opt, self.stream)
        self.total_steps = max(1, int(request.samples) // tc.batch_size)

    def eval_sets(self) -> dict[str, list]:
        """Fresh test-split scenes: ``flat``, ``textured`` and, when a kind is held out, ``flat`` made
        only of it (``flat_<kind>``; ``--probe-kind`` names it when none is held out)."""
        size, seed = self.cfg.image_size, self.request.seed + EVAL_SEED_OFFSET
        n = self.request.eval_scenes
        sets = {
            name: val_scenes(seed, family_config(name, size), n, split="test")
            for name in ("flat", "textured")
        }
        probes = self.held_out if self.request.probe_kind is None else (self.request.probe_kind,)
        for kind in (k for k in probes if k not in NO_KIND):
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
            "seed": run.request.seed,
            "eval_seed": run.request.seed + EVAL_SEED_OFFSET,
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
        raise UserError(f"the shipped model takes {size / 2**20:.1f} MB, over the 20 MB limit")
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


def record_invocation(run: Run, counters: dict[str, Any], command: str) -> None:
    """Note in ``counters`` (kept in the state, copied to the checkpoint's meta) this machine, this
    command line and, when the data changes from here on, a new phase."""
    if hardware() not in counters["hardware"]:
        counters["hardware"].append(hardware())
    if command not in counters.setdefault("commands", []):
        counters["commands"].append(command)
    phase = {"mix": run.mix.describe(), "held_out": list(run.held_out)}
    phases = counters.setdefault("phases", [])
    if not phases or {k: phases[-1][k] for k in phase} != phase:  # the data changed from here on
        phases.append({"from_samples": int(counters["samples"]), **phase})


@dataclass(frozen=True)
class Due:
    """What a training step is followed by."""

    report: bool  # a progress line
    save: bool  # the resumable state
    evaluate: bool  # an evaluation, then the curve, the checkpoint and the state


def due_after_step(
    samples: int, next_eval: int, target: float, since_report_s: float, since_save_s: float, save_every: float
) -> Due:
    """What follows a step that brought the run to ``samples`` (``target``: the run's ``--samples``;
    ``save_every``: minutes between saves; ``since_*``: seconds since the last progress line / save)."""
    return Due(
        report=since_report_s > PRINT_EVERY_S,
        save=since_save_s > save_every * 60,
        evaluate=samples >= next_eval or samples >= target,
    )


def first_eval_at(samples: int, every: int) -> int:
    """The first evaluation of an invocation that starts at ``samples``: the next multiple of ``every``."""
    return (samples // every + 1) * every


@dataclass
class Window:
    """What one invocation measures between progress lines (never saved)."""

    started: float  # when this window began (perf_counter)
    wait: float = 0.0  # seconds spent waiting for data
    samples: int = 0
    losses: list[float] = field(default_factory=list)

    def restart(self) -> None:
        self.started, self.wait, self.samples = time.perf_counter(), 0.0, 0

    def loss(self) -> float:
        return float(np.mean(self.losses[-LOSS_WINDOW:]))


def train_step(run: Run, counters: dict[str, Any], window: Window) -> None:
    """One optimiser step on a fresh batch, counted in ``counters`` and ``window``."""
    tc = run.cfg.train
    t0 = time.perf_counter()
    batch = {k: v.to(run.device) for k, v in run.stream.batch(tc.batch_size).items()}
    window.wait += time.perf_counter() - t0
    batch["cumulative_mask"] = perturb_cumulative_mask(batch["cumulative_mask"], tc.cmask_noise_p)
    result = run.step_fn(batch, lr_at(int(counters["step"]), tc.lr, tc.warmup_steps, run.total_steps))
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    counters["train_s"] += time.perf_counter() - t0
    counters["step"] += 1
    counters["samples"] += tc.batch_size
    window.samples += tc.batch_size
    window.losses.append(float(result.loss))


def report(counters: dict[str, Any], window: Window) -> None:
    """The progress line: samples so far, loss, throughput and data wait since the last one."""
    elapsed = time.perf_counter() - window.started
    print(
        f"[pretrain] {counters['samples']:,} samples, loss {window.loss():.4f}, "
        f"{window.samples / elapsed:.1f} samples/s, data wait {window.wait / elapsed:.0%}",
        flush=True,
    )
    window.restart()
    window.losses = window.losses[-LOSS_WINDOW:]


def evaluate_and_save(
    run: Run, counters: dict[str, Any], curve: list[dict[str, Any]], sets: dict[str, list], loss: float
) -> None:
    """Score the EMA weights, append the row to ``curve`` (and ``<out>/curve.jsonl``), then rewrite
    ``<out>/checkpoint`` and the resumable state."""
    t1 = time.perf_counter()
    metrics = evaluate(ema_model(run.model, run.ema), sets, run.device)
    row = {
        "samples": counters["samples"],
        "step": counters["step"],
        "train_minutes": round(counters["train_s"] / 60, 1),
        "loss": round(loss, 4),
        "metrics": metrics,
        "eval_s": round(time.perf_counter() - t1, 1),
    }
    curve.append(row)
    print(json.dumps(row), flush=True)
    (run.out / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    save_eval_checkpoint(run, counters, metrics)
    run.state.save(counters, curve)


def train(run: Run, counters: dict[str, Any], curve: list[dict[str, Any]], sets: dict[str, list]) -> None:
    """Train until ``--samples`` (or ``--minutes`` of this invocation), printing, saving and evaluating
    as they fall due; then save the state."""
    request = run.request
    started = last_save = time.perf_counter()
    window = Window(started)
    every = int(request.eval_every)
    next_eval = first_eval_at(int(counters["samples"]), every)
    while counters["samples"] < request.samples:
        if request.minutes and time.perf_counter() - started > request.minutes * 60:
            break
        train_step(run, counters, window)
        now = time.perf_counter()
        since_report, since_save = now - window.started, now - last_save
        due = due_after_step(
            counters["samples"], next_eval, request.samples, since_report, since_save, request.save_every
        )
        if due.report:
            report(counters, window)
        if due.save:
            run.state.save(counters, curve)
            last_save = time.perf_counter()
        if due.evaluate:
            next_eval += every
            evaluate_and_save(run, counters, curve, sets, window.loss())
            window.restart()
    run.state.save(counters, curve)


@dataclass(frozen=True)
class PretrainResult:
    """Where a pretraining invocation stopped and what it wrote."""

    samples: int  # seen by the run so far
    curve: list[dict[str, Any]]  # every evaluation of the run, this invocation's included
    shipped: Path | None  # where --ship wrote the model, if it did


def run(request: PretrainRequest, command: str = "") -> PretrainResult:
    """Resume (or start) the run in ``request.out``, train (unless ``request.train`` is false), and
    ship the last evaluated checkpoint when ``request.ship`` names a folder. ``command``: the command
    line, recorded in the state and the model card."""
    if request.threads:
        torch.set_num_threads(request.threads)
    torch.manual_seed(request.seed)
    try:
        setup = Run(request)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    tc = setup.cfg.train
    setup.out.mkdir(parents=True, exist_ok=True)
    counters: dict[str, Any] = {"step": 0, "samples": 0, "train_s": 0.0, "hardware": []}
    curve: list[dict[str, Any]] = []
    resumed = setup.state.load(setup.device)
    if resumed:
        counters, curve = resumed
        torch.manual_seed(request.seed + int(counters["step"]))
        print(f"[pretrain] resumed from {setup.state.path} at {counters['samples']:,} samples", flush=True)
    if request.train:
        record_invocation(setup, counters, command)
    print(
        f"[pretrain] {setup.cfg.name}: {setup.model.num_parameters():,} params, mix {setup.mix.describe()}, "
        f"held out {list(setup.held_out) or 'none'}, batch {tc.batch_size}, lr {tc.lr}, "
        f"{setup.step_fn.precision_label()}, target {int(request.samples):,} samples, out {setup.out}",
        flush=True,
    )
    try:
        sets = setup.eval_sets()
        if request.train:  # a --no-train --ship beside a running run must not overwrite its state
            train(setup, counters, curve, sets)
    finally:
        setup.stream.close()
    print(f"[pretrain] stopped at {counters['samples']:,} of {int(request.samples):,} samples", flush=True)
    shipped = None
    if request.ship:
        checkpoint = setup.out / "checkpoint"
        if not checkpoint.exists():
            raise UserError("no evaluated checkpoint yet; train past the first --eval-every first")
        examples = [scenes[i] for scenes in sets.values() for i in range(min(2, len(scenes)))]
        shipped = Path(request.ship)
        ship(checkpoint, shipped, curve, examples)
    return PretrainResult(int(counters["samples"]), curve, shipped)
