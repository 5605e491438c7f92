"""Sampling cost: the paper protocol (DDPM-1000, ensemble 3, members looped) vs fast batched samplers.

    python pipelines/bench/sampling.py --presets tiny paper --images 4

For each preset (random weights: cost does not depend on them) it reports UNet passes and seconds
per image for ONE layer, and for a 6-layer worst case (the paper's ``max_layers``):

- ``paper-ddpm1000-looped``: the reference, each ensemble member sampled on its own (batch 1).
  DDPM-1000 is too slow to run in full on a CPU: a subset of ``--ddpm-subset`` steps is timed and
  the time is extrapolated linearly to 1000 steps (marked ``extrapolated``);
- ``ddpm1000-batched``: the same protocol with the 3 members in one forward (also extrapolated);
- ``ddim-k`` / ``dpmpp2m-k``: the segmenter's ``predict_layer`` on ``--images`` images at once,
  all images × members in one batched chain (timed in full).

Also the batched-vs-looped ensemble speed-up at equal steps. Every row runs its UNet passes at the
same ``--precision`` (``sampler.precision``; default: the preset's, ``auto``), so the ratios compare
protocols, not dtypes. Prints a table and, with ``--json``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

from sas_model.config import PRECISIONS, ModelConfig
from sas_model.model import SASModel
from sas_model.precision import autocast, autocast_dtype
from sas_model.samplers import make_sampler
from sas_model.segmenter import SequentialSegmenter

MAX_LAYERS = 6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_chain(model: SASModel, batch: int, steps_timed: int, total_steps: int, name: str = "ddpm") -> float:
    """Seconds for ``total_steps`` denoising steps on ``batch`` samples, from ``steps_timed`` timed ones.

    The UNet passes autocast as the model's ``sampler.precision`` says, as the segmenter's do.
    """
    cfg = model.cfg.replace(**{"sampler.name": name, "sampler.steps": total_steps}).sampler
    size, device = model.cfg.image_size, model.schedule.betas.device
    amp_dtype = autocast_dtype(device, cfg.precision, "sampler.precision")
    cond = model.condition(
        torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8), torch.zeros(batch, size, size)
    )

    def denoise(x: torch.Tensor, t: torch.Tensor, sc: torch.Tensor | None) -> torch.Tensor:
        with autocast(device, amp_dtype):
            return model.predict_x0(cond, x, t, sc)  # fp32 (x0_from_output casts)

    sampler = make_sampler(model.schedule, cfg, model.mask_scale)
    sampler.timesteps = sampler.timesteps[:steps_timed]
    noise = lambda: torch.randn(batch, 1, size, size, device=device)  # noqa: E731
    sampler.sample(denoise, noise)  # warm-up (one-off allocations)
    _sync(device)
    start = time.perf_counter()
    sampler.sample(denoise, noise)
    _sync(device)
    return (time.perf_counter() - start) * total_steps / steps_timed


def bench_preset(
    name: str,
    images: int,
    ddpm_subset: int,
    fast: list[tuple[str, int]],
    device: str = "cpu",
    precision: str | None = None,
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    cfg = ModelConfig.preset(name)
    if precision:
        cfg = cfg.replace(**{"sampler.precision": precision}).validate()
    model = SASModel(cfg).eval().to(device)
    amp = autocast_dtype(torch.device(device), cfg.sampler.precision, "sampler.precision")
    ensemble = 3
    rows: list[dict[str, Any]] = []

    def add(protocol: str, passes: int, seconds: float, extrapolated: bool) -> None:
        rows.append(
            {
                "device": device,
                "precision": str(amp or torch.float32).removeprefix("torch."),
                "preset": name,
                "params_M": round(model.num_parameters() / 1e6, 2),
                "protocol": protocol,
                "passes_per_layer": passes,
                "passes_6_layers": passes * MAX_LAYERS,
                "s_per_image_layer": seconds,
                "s_per_image_6_layers": seconds * MAX_LAYERS,
                "extrapolated": extrapolated,
            }
        )

    looped = ensemble * time_chain(model, 1, ddpm_subset, 1000)
    add("paper-ddpm1000-looped", 1000 * ensemble, looped, True)
    add("ddpm1000-batched", 1000 * ensemble, time_chain(model, ensemble, ddpm_subset, 1000), True)
    segmenter = SequentialSegmenter(model)
    size = model.cfg.image_size
    batch = np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    empty = np.zeros((images, size, size), bool)
    for sampler, steps in fast:
        overrides = {"name": sampler, "steps": steps, "ensemble_size": ensemble}
        segmenter.predict_layer(batch[:1], empty[:1], seed=0, **overrides)  # warm-up
        start = time.perf_counter()
        prediction = segmenter.predict_layer(batch, empty, seed=0, **overrides)
        add(
            f"{sampler}-{steps}-batched(x{images} images)",
            prediction.unet_passes,
            (time.perf_counter() - start) / images,
            False,
        )
    steps = fast[0][1]
    one_by_one = ensemble * time_chain(model, 1, steps, steps, "ddim")
    together = time_chain(model, ensemble, steps, steps, "ddim")
    rows.append(
        {
            "preset": name,
            "protocol": f"speed-up: ensemble batched vs looped (ddim-{steps}, 1 image)",
            "looped_s": one_by_one,
            "batched_s": together,
            "speedup": one_by_one / together,
        }
    )
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    """Print one preset's rows (adds the ratios to the paper protocol in place)."""
    reference = next(r for r in rows if r["protocol"] == "paper-ddpm1000-looped")
    for r in rows:
        if "speedup" in r:
            print(
                f"{r['preset']:6} {r['protocol']}: looped {r['looped_s']:.3f}s, "
                f"batched {r['batched_s']:.3f}s, x{r['speedup']:.2f}",
                flush=True,
            )
            continue
        r["passes_fraction_of_paper"] = r["passes_per_layer"] / reference["passes_per_layer"]
        r["speedup_vs_paper"] = reference["s_per_image_layer"] / r["s_per_image_layer"]
        print(
            f"{r['preset']:6} {r['params_M']:6.2f}M {r['precision']:8} {r['protocol']:34} "
            f"passes/layer {r['passes_per_layer']:5d} "
            f"(6 layers {r['passes_6_layers']:6d}, 1/{1 / r['passes_fraction_of_paper']:.0f} of paper)  "
            f"s/image/layer {r['s_per_image_layer']:9.3f}  6 layers {r['s_per_image_6_layers']:9.2f}s  "
            f"x{r['speedup_vs_paper']:.0f}{'  (extrapolated)' if r['extrapolated'] else ''}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--images", type=int, default=4, help="images per batched predict_layer call")
    parser.add_argument(
        "--ddpm-subset", type=int, default=20, help="DDPM steps actually timed (then extrapolated)"
    )
    parser.add_argument(
        "--fast", nargs="+", default=["ddim:10", "ddim:25", "dpmpp2m:10"], help="sampler:steps"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="sampler.precision for every row (default: the preset's, auto)",
    )
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)
    fast = [(spec.split(":")[0], int(spec.split(":")[1])) for spec in args.fast]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for preset in args.presets:
        preset_rows = bench_preset(preset, args.images, args.ddpm_subset, fast, args.device, args.precision)
        report(preset_rows)
        rows += preset_rows
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
