"""Seconds per training step, with and without the cue module, per preset and precision (no Ray).

One batch of ``flat`` samples at the preset's image size, forward + backward + AdamW; warm-up steps,
then the mean of the timed ones; samples/s beside it::

    python pipelines/bench/probes/step_cost.py --threads 1 --precision fp32
    python pipelines/bench/probes/step_cost.py --device cuda --presets tiny small paper \
        --precision fp32 bf16 --batch 64
"""

import argparse
import json
import time

import torch

from sas_model.config import ModelConfig
from sas_model.model import SASModel
from sas_model.precision import autocast, autocast_dtype
from synth.families import family_config
from synth.reader import collate_samples, scene_to_samples
from synth.render import render_scenes


def flat_batch(size: int, count: int, device: torch.device) -> dict[str, torch.Tensor]:
    samples: list = []
    start = 0
    while len(samples) < count:
        samples += [
            s
            for scene in render_scenes(0, start, 64, family_config("flat", size))
            for s in scene_to_samples(scene)
        ]
        start += 64
    return {k: torch.from_numpy(v).to(device) for k, v in collate_samples(samples[:count]).items()}


def seconds_per_step(
    model: SASModel, batch: dict, device: torch.device, precision: str, warmup: int, timed: int
) -> float:
    dtype = autocast_dtype(device, precision)
    opt = torch.optim.AdamW(model.parameters())
    for i in range(warmup + timed):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast(device, dtype):
            loss, _ = model(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", nargs="+", default=["tiny"])
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timed", type=int, default=3)
    ap.add_argument("--no-cues-row", action="store_true", help="only the preset as it is")
    ap.add_argument(
        "--set", nargs="*", default=[], help="extra overrides for the cue row, e.g. cues.query_stride=4"
    )
    ap.add_argument("--json", default=None, help="write the rows to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    extra = dict(kv.split("=", 1) for kv in a.set)
    variants = [("cues", {"cues.enabled": True, **extra})]
    if not a.no_cues_row:
        variants.insert(0, ("no cues", {"cues.enabled": False}))
    rows = []
    for preset in a.presets:
        base = ModelConfig.preset(preset)
        batch = flat_batch(base.image_size, a.batch, device)
        for label, overrides in variants:
            for precision in a.precision:
                torch.manual_seed(0)
                model = SASModel(base.replace(**overrides)).to(device)
                s = seconds_per_step(model, batch, device, precision, a.warmup, a.timed)
                row = {
                    "preset": preset,
                    "variant": label,
                    "precision": precision,
                    "device": a.device,
                    "batch": a.batch,
                    "image_size": base.image_size,
                    "s_per_step": round(s, 4),
                    "samples_per_s": round(a.batch / s, 1),
                }
                rows.append(row)
                print(
                    f"{preset} {label}: {s:.3f} s/step, {a.batch / s:.0f} samples/s "
                    f"({precision}, {a.device}, {a.threads} thread(s), batch {a.batch})",
                    flush=True,
                )
                del model
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
