"""Writing and validating one Parquet shard of generated scenes (runs inside Ray workers).

A shard holds a contiguous range of scene ids. It is written to ``<out>/_tmp/<name>.<uuid>`` and
moved to ``<out>/shard-00000.parquet`` only when complete, so an interrupted run never leaves a
half-written shard visible (on S3 the move is a server-side copy: the object appears whole).
The footer's key-value metadata carries the schema version, the generator config and the
shard's statistics, so a rerun can check a shard and rebuild the manifest without reading rows.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np

from synth.reader import _join, open_filesystem
from synth.render import RenderConfig, render_block
from synth.schema import ARROW_SCHEMA, SCHEMA_VERSION, SCHEMA_VERSION_KEY, scene_from_masks, scenes_to_table
from synth.splits import split_of

CONFIG_KEY = b"synth.generator_config"
STATS_KEY = b"synth.shard_stats"
TMP_DIR = "_tmp"


def row_group_scenes(size: int) -> int:
    """Scenes rendered and written per row group: 1024 at 64x64, fewer for larger images
    (a block's decoded masks take ~100 KB per scene at 64x64, so memory stays ~100 MB)."""
    return max(16, 1024 * 64 * 64 // (size * size))


@dataclass(frozen=True)
class JobConfig:
    """Everything that defines a dataset's content and layout (recorded in shards and manifest)."""

    n: int
    seed: int
    shard_size: int
    render: RenderConfig

    @property
    def num_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(self.n, start + self.shard_size)

    def to_dict(self) -> dict:
        from synth.render import GENERATOR_VERSION

        return {
            "schema_version": SCHEMA_VERSION,
            "generator_version": GENERATOR_VERSION,
            "n": self.n,
            "seed": self.seed,
            "shard_size": self.shard_size,
            **self.render.to_dict(),
        }


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def empty_stats() -> dict:
    return {"num_scenes": 0, "splits": {}, "layers": {}, "num_layers": {}, "objects": {}}


def merge_stats(total: dict, part: dict) -> dict:
    """Add histogram dicts of ``part`` into ``total`` (keys are strings, JSON-friendly)."""
    total["num_scenes"] += part["num_scenes"]
    for key in ("splits", "layers", "num_layers", "objects"):
        counter = Counter(total[key])
        counter.update(part[key])
        total[key] = {k: counter[k] for k in sorted(counter, key=lambda s: (len(s), s))}
    return total


def write_shard(out: str, endpoint_url: str | None, job: JobConfig, index: int) -> dict:
    """Render shard ``index`` and publish it atomically; returns its stats dict."""
    import pyarrow.parquet as pq

    filesystem, root = open_filesystem(out, endpoint_url)
    start, stop = job.shard_range(index)
    name = shard_name(index)
    tmp = _join(root, f"{TMP_DIR}/{name}.{uuid.uuid4().hex}")
    stats = empty_stats()
    splits: Counter = Counter()
    layers: Counter = Counter()
    num_layers: Counter = Counter()
    objects: Counter = Counter()
    config_json = json.dumps(job.to_dict(), sort_keys=True)
    schema = ARROW_SCHEMA.with_metadata(
        {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode(), CONFIG_KEY: config_json}
    )
    filesystem.create_dir(_join(root, TMP_DIR), recursive=True)
    try:
        with filesystem.open_output_stream(tmp) as stream:
            with pq.ParquetWriter(stream, schema, compression="zstd") as writer:
                step = row_group_scenes(job.render.size)
                for block_start in range(start, stop, step):
                    ids = np.arange(block_start, min(stop, block_start + step))
                    block = render_block(job.seed, ids, job.render)
                    scenes = [
                        scene_from_masks(
                            int(scene_id),
                            split_of(job.seed, int(scene_id), job.render.split_fractions),
                            block.images[i],
                            block.amodal_masks[i],
                            np.arange(len(block.amodal_masks[i])),
                        )
                        for i, scene_id in enumerate(ids)
                    ]
                    writer.write_table(scenes_to_table(scenes), row_group_size=len(scenes))
                    for scene in scenes:
                        splits[scene.split] += 1
                        layers.update(scene.object_layer.tolist())
                        num_layers[scene.num_layers] += 1
                        objects[scene.num_objects] += 1
                stats["num_scenes"] = stop - start
                for key, counter in (
                    ("splits", splits),
                    ("layers", layers),
                    ("num_layers", num_layers),
                    ("objects", objects),
                ):
                    stats[key] = {str(k): int(counter[k]) for k in sorted(counter)}
                stats.update({"file": name, "first_scene_id": start, "end_scene_id": stop})
                writer.add_key_value_metadata({STATS_KEY: json.dumps(stats, sort_keys=True)})
        filesystem.move(tmp, _join(root, name))
    except BaseException:
        try:
            filesystem.delete_file(tmp)
        except OSError:
            pass
        raise
    return stats


def read_shard_stats(filesystem, path: str, job: JobConfig, index: int) -> dict | None:
    """The stats of an existing complete shard written with ``job``'s config, else None.

    Raises ``ValueError`` when the shard is complete but was written with another config.
    """
    import pyarrow.parquet as pq

    try:
        with filesystem.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - unreadable footer: treat as absent, it gets rewritten
        return None
    kv = meta.metadata or {}
    if CONFIG_KEY not in kv or STATS_KEY not in kv:
        return None
    if json.loads(kv[CONFIG_KEY]) != job.to_dict():
        raise ValueError(f"{shard_name(index)} was written with a different generator config")
    stats = json.loads(kv[STATS_KEY])
    start, stop = job.shard_range(index)
    if meta.num_rows != stop - start or stats.get("num_scenes") != stop - start:
        return None
    return stats
