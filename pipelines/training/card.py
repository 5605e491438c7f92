"""The shipped model's card (``MODEL_CARD.md``), written from the run's own numbers.

``write_model_card(folder, meta, curve)``: ``meta`` is the checkpoint's ``meta.json`` (samples
seen, training minutes and the ``pretrain`` facts of ``pipelines/pretrain.py``: mix, held-out kinds,
seeds, hardware, the last evaluation), ``curve`` the run's evaluation rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sas_model.overlay import overlay_sheet, save_png

ROWS = (
    ("iou_free/layer0", "layer-0 IoU (free-running)"),
    ("trivial/layer0", "  trivial: every object in front"),
    ("margin_free/layer0", "  margin over trivial"),
    ("pair_order", "pair order, every edge"),
    ("pair_order_decidable", "pair order, decidable edges (>= 3 px of visible border)"),
    ("object_layer_acc", "object-layer accuracy"),
    ("trivial/object_layer_acc", "  trivial: every object in front"),
    ("layer_count_acc", "layer-count accuracy"),
    ("miou_free", "mIoU (free-running)"),
    ("ap50", "AP50 (ours)"),
    ("coco_ap50", "AP50 (COCOeval)"),
    ("unet_passes_mean", "UNet passes per image"),
)


SHIP_LIMIT_BYTES = 20 * 2**20  # the shipped model folder (weights, config, card, pictures) stays under this


def _cell(value: Any) -> str:
    return "–" if value is None else (f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}")


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per metric, one column per evaluation set."""
    names = list(metrics)
    lines = ["| metric | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(metrics[n].get(key)) for n in names) + " |")
    return "\n".join(lines)


def curve_table(curve: list[dict[str, Any]], family: str = "flat") -> str:
    """Markdown learning curve of one evaluation set: samples against the headline metrics."""
    keys = ("margin_free/layer0", "pair_order", "pair_order_decidable", "object_layer_acc", "layer_count_acc")
    lines = [
        "| samples | train min | " + " | ".join(keys) + " |",
        "|---:|---:|" + "---:|" * len(keys),
    ]
    for row in curve:
        m = row["metrics"].get(family, {})
        lines.append(
            f"| {row['samples']:,} | {row['train_minutes']} | "
            + " | ".join(_cell(m.get(k)) for k in keys)
            + " |"
        )
    return "\n".join(lines)


def _data_phases(facts: dict[str, Any], held: list[str]) -> str:
    """The training data in words: one mix and held-out set, or each phase when they changed."""
    phases = facts.get("phases") or []

    def held_out(kinds: list[str]) -> str:
        return ", ".join(kinds) or "none"

    if len(phases) <= 1:
        return f"family mix `{facts.get('mix')}`; shape kinds held out of training: {held_out(held)}"
    return "in phases: " + "; ".join(
        f"from {int(p['from_samples']):,} samples mix `{p['mix']}`, held out: {held_out(p['held_out'])}"
        for p in phases
    )


def held_out_summary(phases: list[dict[str, Any]], curve: list[dict[str, Any]]) -> str:
    """For each shape kind held out of a phase: the layer-0 margin and pair order on scenes made only of
    it against `flat`'s, at the last evaluation before it joined training (or now, if it never did)."""
    lines = []
    for i, phase in enumerate(phases):
        end = phases[i + 1]["from_samples"] if i + 1 < len(phases) else float("inf")
        for kind in phase["held_out"]:
            rows = [r for r in curve if r["samples"] <= end and f"flat_{kind}" in r["metrics"]]
            if not rows:
                continue
            row = rows[-1]
            flat, only = row["metrics"].get("flat", {}), row["metrics"][f"flat_{kind}"]
            lines.append(
                f"Held-out shape kind `{kind}`, at {row['samples']:,} samples (never trained on): layer-0 "
                f"margin {_cell(only.get('margin_free/layer0'))} against `flat`'s "
                f"{_cell(flat.get('margin_free/layer0'))}, pair order {_cell(only.get('pair_order'))} "
                f"against {_cell(flat.get('pair_order'))}."
            )
    return ("\n" + "\n\n".join(lines) + "\n") if lines else ""


def write_model_card(folder: Path, meta: dict[str, Any], curve: list[dict[str, Any]]) -> Path:
    facts = meta.get("pretrain", {})
    commands = facts.get("commands") or ["not recorded"]
    held = facts.get("held_out_shape_kinds") or []
    text = f"""# Model card: the shipped `sas` model (`models/pretrained`)

A class-agnostic sequential amodal segmenter: an order head decides each visible pixel's layer
(`V`, one pass), and a conditional diffusion UNet completes the hidden part of every layer k >= 1
inside `C_k = {{V < k}}` (an ensemble of samples per layer gives the uncertainty map). README,
"Model", explains the split and how it relates to the paper's sequential diffusion.

## Training

- Command{"s, in order" if len(commands) > 1 else ""}: {"; then ".join(f"`{c}`" for c in commands)}
  (resumable: rerun the last one to go on)
- Data: scenes rendered on the fly, train split, seed {facts.get("seed")}; {_data_phases(facts, held)}
- Samples seen: {int(meta.get("samples_seen", 0)):,} (steps {int(meta.get("step", 0)):,} of batch
  {facts.get("batch_size")}); training time {meta.get("train_minutes")} minutes
- Hardware: {"; ".join(facts.get("hardware", [])) or "not recorded"}
- Config: `config.json` here (`{int(meta.get("num_parameters", 0)):,}` parameters); weights are the EMA
  weights (`model.safetensors`)

## How it does (fresh test-split scenes, seed {facts.get("eval_seed")}, never trained on)

Free-running segmentation scored by the definitions of `pipelines/evaluate.py`; `flat_<kind>` is the
`flat` family made only of one shape kind (the held-out one, or `--probe-kind`).

![examples](examples.png)

(`examples.png`: two test scenes of each set; per row the image, the true layers, the predicted layers
with object outlines, and the uncertainty map.)

{metrics_table(facts.get("metrics", {}))}
{held_out_summary(facts.get("phases") or [], curve)}
Learning curve on `flat` (`curve.jsonl` has every set):

{curve_table(curve)}

## Use

```bash
python pipelines/predict.py --model models/pretrained --input photos/ --out outputs/pred
python pipelines/demo.py --model models/pretrained
python pipelines/train.py --data data/mine --init pretrained    # fine-tune it on your data
```

Limits: 64×64 inputs (larger images are resized); synthetic training scenes only (flat colours,
gradients, patterns, photo crops as backgrounds); edges whose two objects share fewer than 3 px of
visible border were not in its training scenes.
"""
    path = Path(folder) / "MODEL_CARD.md"
    path.write_text(text)
    return path


def example_sheet(segmenter: Any, scenes: list, path: Path, scale: int = 3) -> Path:
    """A picture of what the model does: one row per scene, image | true layers | predicted layers
    with object outlines | uncertainty, front layer first (the README's first screen shows it)."""
    results = segmenter.segment(np.stack([s.image for s in scenes]), seed=0)
    rows = [
        result.comparison_panels(s.image, s.layer_masks) for s, result in zip(scenes, results, strict=True)
    ]
    return save_png(path, overlay_sheet(rows, scale=scale))
