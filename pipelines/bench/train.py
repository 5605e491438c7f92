"""Benchmark: training throughput through Ray Train (1 and 2 workers) vs a bare PyTorch loop.

All variants train the same model with the same global batch and the same per-step work
(``augment_batch`` then ``TrainStep``: forward/backward, grad clipping, AdamW, EMA):

- **bare**: one process, samples pre-expanded in memory, random batches by indexing (no data wait
  to speak of), ``torch`` threads = all CPUs.
- **ray-N**: ``pipelines/train.py``'s own ``train_loop_per_worker`` under ``TorchTrainer`` with N
  workers, data streamed by Ray Data through ``get_dataset_shard`` exactly as in training.
  Throughput and data-wait fraction are taken over all progress windows after the first one
  (the first holds worker and Ray Data start-up).

    python pipelines/bench/train.py --data data/bench --preset tiny --steps 60 [--workers 1,2]

The bare loop runs before and after the Ray variants; ratios are against the mean of the two (the
spread between them shows how much the machine's load drifted). Prints a table and writes ``--out``
(JSON) if given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from pipelines.cli.args import parse_override
from pipelines.cli.env import apply_env_defaults
from pipelines.cli.files import resolve_local_or_remote
from pipelines.training import data, trainer
from pipelines.training.augment import augment_batch
from pipelines.training.config import RunConfig, model_config
from pipelines.training.optim import EMA, TrainStep, lr_at, make_optimizer
from sas_model.model import SASModel
from synth.cli import UserError, fail, parse_number
from synth.ray_runtime import init_ray
from synth.reader import collate_samples, iter_scenes, scene_to_samples


def bare_loop(data_path: str, cfg: Any, steps: int, warmup: int) -> dict[str, float]:
    """Single-process loop over in-memory samples; returns samples/s and data-wait fraction."""
    samples = [s for scene in iter_scenes(data_path, split="train") for s in scene_to_samples(scene)]
    data = {k: torch.as_tensor(v) for k, v in collate_samples(samples).items()}
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = SASModel(cfg)
    tc = cfg.train
    optimizer = make_optimizer(model, tc.lr, tc.weight_decay)
    ema = EMA(model, tc.ema_decay)
    train_step = TrainStep(  # as train_loop does
        model, optimizer, ema, torch.device("cpu"), tc.precision, tc.grad_clip
    )
    batch = int(tc.batch_size)
    wait = 0.0
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            wait, start = 0.0, time.perf_counter()
        t0 = time.perf_counter()
        index = torch.randint(len(data["image"]), (batch,))
        inputs = {k: v[index] for k, v in data.items()}
        wait += time.perf_counter() - t0
        inputs = augment_batch(inputs, tc.hflip_p, tc.cmask_noise_p, generator)
        train_step(inputs, lr_at(step, tc.lr, tc.warmup_steps, warmup + steps))
    elapsed = time.perf_counter() - start
    return {"samples_per_s": steps * batch / elapsed, "data_wait_frac": wait / elapsed, "steps": steps}


def ray_run(
    data_path: str,
    preset: str,
    workers: int,
    steps: int,
    batch: int | None,
    storage: str,
    shuffle: str = "buffer",
    cache: bool = False,
    overrides: tuple[str, ...] = (),
) -> dict:
    """``train_loop_per_worker`` under TorchTrainer; returns its steady-state throughput numbers."""
    run = RunConfig(
        model=model_config(preset, dict(parse_override(item) for item in overrides), steps, batch or None),
        data_path=data_path,
        name=f"bench-{workers}w",
        storage=storage,
        workers=workers,
        val_every=0,
        ckpt_every=steps,
        log_every=5,
        max_failures=0,
        shuffle=shuffle,
    ).validate()
    total_cpus = float(ray.cluster_resources().get("CPU", 1))
    cpus = trainer.cpus_per_worker(total_cpus, workers, False)
    run = run.replace(
        shuffle_buffer=data.shuffle_buffer_size(shuffle, run.global_batch),
        torch_threads=max(1, int(total_cpus // workers)),
    )
    started = time.perf_counter()
    result = trainer.fit(
        run,
        data.build_train_dataset(data_path, shuffle, cache, completion=run.model.order.enabled),
        cpus,
        False,
    )
    if result.error is not None:
        raise RuntimeError(f"ray-{workers} failed: {result.error}")
    outcome = result.return_value or {}
    return {
        "samples_per_s": outcome.get("steady_samples_per_s"),
        "data_wait_frac": outcome.get("steady_data_wait_frac"),
        "steps": steps,
        "fit_wall_s": time.perf_counter() - started,
        "cpus_per_worker": cpus,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=parse_number, default=60)
    parser.add_argument("--warmup", type=parse_number, default=5, help="bare-loop steps not timed")
    parser.add_argument("--batch", type=parse_number, help="global batch (default: preset's)")
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray Train worker counts")
    parser.add_argument(
        "--shuffle",
        choices=("buffer", "global", "none"),
        default="buffer",
        help="Ray Data shuffle as in train.py (none: block order only, for comparison)",
    )
    parser.add_argument(
        "--cache",
        choices=("auto", "on", "off"),
        default="auto",
        help="as train.py --cache: decode the samples once into the object store",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="train.precision for every variant (default: the preset's, auto)",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    return parser


def ray_variants(
    args: argparse.Namespace, data_path: str, manifest: Any, cfg: Any, overrides: tuple[str, ...]
) -> dict[str, Any]:
    """``ray-N`` → ``ray_run``'s numbers for each ``--workers`` count, on a Ray started here (and
    shut down after), plus ``cache``: whether the samples were cached in the object store."""
    init_ray(num_cpus=os.cpu_count())
    cache = data.should_cache(
        args.cache, manifest, int(cfg.image_size), ray.available_resources().get("object_store_memory", 0)
    )
    results: dict[str, Any] = {"cache": cache}
    with tempfile.TemporaryDirectory(prefix="sas-bench-") as storage:
        for workers in [int(w) for w in args.workers.split(",") if w]:
            results[f"ray-{workers}"] = run = ray_run(
                data_path,
                args.preset,
                workers,
                args.steps,
                args.batch,
                storage,
                args.shuffle,
                cache,
                overrides,
            )
            print(
                f"[bench] ray-{workers}: {run['samples_per_s']:.1f} samples/s, "
                f"data wait {100 * run['data_wait_frac']:.1f}%",
                flush=True,
            )
    ray.shutdown()
    return results


def print_table(results: dict[str, Any], preset: str, steps: int, precision: str) -> None:
    """Each variant's samples/s, its ratio to the mean bare loop, and its data-wait fraction."""
    bare = results["bare_mean_samples_per_s"]
    print(
        f"\nmodel preset {preset}, global batch {results['global_batch']}, {steps} timed steps, "
        f"{results['cpus']} CPUs, train.precision {precision}"
    )
    print(f"{'variant':<8} {'samples/s':>10} {'vs bare':>8} {'data wait':>10}")
    for key in [k for k in results if k in ("bare", "bare_after") or k.startswith("ray-")]:
        row = results[key]
        print(
            f"{key:<8} {row['samples_per_s']:>10.1f} {row['samples_per_s'] / bare:>7.2f}x "
            f"{100 * row['data_wait_frac']:>9.1f}%"
        )


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    overrides = (f"train.precision={args.precision}",) if args.precision else ()
    data_path = resolve_local_or_remote(args.data)
    try:
        manifest = data.check_dataset(data_path)
    except UserError as exc:
        fail(str(exc))
    results: dict[str, Any] = {"cpus": os.cpu_count(), "torch": torch.__version__}
    cfg = model_config(
        args.preset, dict(parse_override(item) for item in overrides), args.steps, args.batch or None
    )
    results["global_batch"] = int(cfg.train.batch_size)
    torch.set_num_threads(os.cpu_count() or 1)
    results["bare"] = bare_loop(data_path, cfg, args.steps, args.warmup)
    print(f"[bench] bare: {results['bare']['samples_per_s']:.1f} samples/s", flush=True)
    results.update(ray_variants(args, data_path, manifest, cfg, overrides))
    # the bare loop again, after Ray: on a shared machine this shows how much the load drifted
    after = bare_loop(data_path, cfg, args.steps, args.warmup)
    results["bare_after"] = after
    print(f"[bench] bare (again, after Ray): {after['samples_per_s']:.1f} samples/s", flush=True)
    results["bare_mean_samples_per_s"] = 0.5 * (results["bare"]["samples_per_s"] + after["samples_per_s"])
    print_table(results, args.preset, args.steps, cfg.train.precision)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
