"""What every importer shares: resizing, the import report, shards + manifest, the Ray fan-out.

Resizing stretches to ``size x size`` (no letterbox): images bilinear (PIL, anti-aliased when
shrinking), masks nearest neighbour at the same pixel-centre geometry, so a mask pixel samples the
source pixel under its centre. An input already at the target size is not resampled (lossless).

Output follows ``synth/generate.py``: ``shard-00000.parquet`` ... written to ``_tmp/`` and moved into
place when complete, then ``manifest.json`` (schema version, importer config, counts, layer
histograms, shard list, and the import report: what was skipped and why).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from synth.cli import UserError, one_line
from synth.ray_runtime import init_ray
from synth.reader import MANIFEST_NAME, SHARD_PATTERN, _join, open_filesystem
from synth.schema import Manifest, Scene
from synth.shards import (
    TMP_DIR,
    delete_entries,
    empty_stats,
    list_output,
    merge_stats,
    publish_manifest,
    row_group_scenes,
    shard_name,
    write_scenes_atomic,
)
from synth.splits import SPLITS, split_of

EXAMPLES_PER_REASON = 5


def check_size(size: int) -> int:
    """The target side must suit the model: a multiple of 16 from 32 to 512 (as for generate.py)."""
    if not (32 <= size <= 512 and size % 16 == 0):
        raise UserError(f"--size must be a multiple of 16 between 32 and 512, got {size}")
    return size


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[size, size, 3], bilinear (unchanged when already that size)."""
    if image.shape[:2] == (size, size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """bool[K, H, W] -> bool[K, size, size], nearest neighbour at pixel centres (PIL's geometry)."""
    _, height, width = masks.shape
    if (height, width) == (size, size):
        return masks
    rows = np.minimum(((np.arange(size) + 0.5) * height / size).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * width / size).astype(np.int64), width - 1)
    return masks[:, rows[:, None], cols[None, :]]


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file -> uint8[H, W, 3] (any PIL mode converted to RGB; no EXIF rotation, as COCO)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


class ImportReport:
    """Counts of skipped inputs and of warnings by reason, with a few example messages each."""

    def __init__(self) -> None:
        self.skipped: Counter = Counter()
        self.warnings: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def _example(self, reason: str, detail: str) -> None:
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(detail)

    def skip(self, reason: str, detail: str) -> None:
        """One input (image / scene) not imported."""
        self.skipped[reason] += 1
        self._example(reason, detail)

    def warn(self, reason: str, detail: str, count: int = 1) -> None:
        """Imported, with a caveat worth knowing."""
        self.warnings[reason] += count
        self._example(reason, detail)

    def merge(self, other: ImportReport) -> ImportReport:
        self.skipped.update(other.skipped)
        self.warnings.update(other.warnings)
        for reason, examples in other.examples.items():
            for detail in examples:
                self._example(reason, detail)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": dict(sorted(self.skipped.items())),
            "warnings": dict(sorted(self.warnings.items())),
            "examples": {k: self.examples[k] for k in sorted(self.examples)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImportReport:
        report = cls()
        report.skipped.update(data.get("skipped", {}))
        report.warnings.update(data.get("warnings", {}))
        report.examples = {k: list(v) for k, v in data.get("examples", {}).items()}
        return report

    def lines(self) -> list[str]:
        """Human-readable lines, one per reason: ``skipped 2 missing_image (e.g. a.jpg; b.jpg)``."""
        out = []
        for kind, counter in (("skipped", self.skipped), ("warning", self.warnings)):
            for reason in sorted(counter):
                examples = "; ".join(self.examples.get(reason, [])[:2])
                out.append(f"{kind} {counter[reason]} {reason}" + (f" (e.g. {examples})" if examples else ""))
        return out


def pick_split(forced: str | None, given: Any, seed: int, scene_id: int) -> str:
    """``--split`` if given, else the source's own split if it is one of ours, else a stable hash."""
    if forced is not None:
        return forced
    if isinstance(given, str) and given in SPLITS:
        return given
    return split_of(seed, scene_id)


# ----- output


def prepare_output(out: str, endpoint: str | None, overwrite: bool) -> None:
    """Check ``out`` is empty (or, with ``overwrite``, holds only a dataset, which is removed)."""
    filesystem, root, entries = list_output(out, endpoint)
    ours = [e for e in entries if SHARD_PATTERN.match(e.base_name) or e.base_name in (MANIFEST_NAME, TMP_DIR)]
    foreign = sorted(e.base_name for e in entries if e not in ours)
    if foreign:
        raise UserError(
            f"{out} holds files that are not a dataset ({foreign[0]}, ...): choose an empty --out"
        )
    if ours and not overwrite:
        raise UserError(f"{out} already holds a dataset: choose an empty --out, or pass --overwrite")
    delete_entries(filesystem, ours)
    try:
        filesystem.create_dir(_join(root, TMP_DIR), recursive=True)
    except Exception as exc:
        raise UserError(f"cannot write to {out}: {one_line(exc)}") from None


def write_scene_shard(
    out: str, endpoint: str | None, index: int, scenes: Iterable[Scene], config: dict, size: int
) -> dict | None:
    """Write ``scenes`` to ``shard-<index>.parquet`` atomically; its stats, or None if no scenes."""
    scenes = iter(scenes)
    blocks = iter(lambda: list(islice(scenes, row_group_scenes(size))), [])
    return write_scenes_atomic(out, endpoint, shard_name(index), blocks, config)


def write_import_manifest(
    out: str,
    endpoint: str | None,
    config: dict,
    shard_stats: list[dict],
    report: ImportReport,
    has_instances: bool,
) -> str:
    """Write ``manifest.json`` (temp object, then move); return its path/URI."""
    filesystem, root = open_filesystem(out, endpoint)
    total = empty_stats()
    for stats in shard_stats:
        merge_stats(total, stats)
    manifest = Manifest.build(
        config,
        total,
        [{"file": s["file"], "num_scenes": s["num_scenes"]} for s in shard_stats],
        source=config["source"],
        has_instances=has_instances,
        import_report=report.to_dict(),
    )
    return publish_manifest(out, filesystem, root, manifest)


# ----- running shards in-process or on Ray Data

ShardConverter = Callable[[dict, dict, ImportReport], Iterator[Scene]]


def import_shard(
    out: str, endpoint: str | None, index: int, payload: dict, config: dict, convert: ShardConverter
) -> dict:
    """Convert one shard's ``payload`` with ``convert`` (an importer's ``scenes_from_payload``) and
    write it; returns ``{"stats": dict | None, "report": dict}``."""
    report = ImportReport()
    scenes = convert(payload, config, report)
    stats = write_scene_shard(out, endpoint, index, scenes, config, config["size"])
    return {"stats": stats, "report": report.to_dict()}


def run_shards(
    out: str,
    endpoint: str | None,
    payloads: list[dict],
    config: dict,
    convert: ShardConverter,
    use_ray: bool,
    on_shard: Callable[[dict], None],
) -> None:
    """Convert every payload into a shard (index = position) with ``convert`` (a module-level function,
    so Ray workers import it by name); ``on_shard(result)`` as each finishes."""
    if not use_ray:
        for index, payload in enumerate(payloads):
            on_shard(import_shard(out, endpoint, index, payload, config, convert))
        return
    import ray.data

    init_ray(num_cpus=os.cpu_count(), include_dashboard=False)  # all of this machine's cores

    def convert_batch(batch: dict) -> dict:
        results = [
            import_shard(out, endpoint, int(i), json.loads(p), config, convert)
            for i, p in zip(batch["index"], batch["payload"], strict=True)
        ]
        return {"result": [json.dumps(r) for r in results]}

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"index": i, "payload": json.dumps(p)} for i, p in enumerate(payloads)]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    dataset = dataset.map_batches(convert_batch, batch_size=1, num_cpus=1)
    for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
        for item in batch["result"]:
            on_shard(json.loads(item))
