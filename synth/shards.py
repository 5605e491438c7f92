"""Writing and validating one Parquet shard of generated scenes (runs inside Ray workers).

A shard holds a contiguous range of scene ids. It is written to ``<out>/_tmp/<name>.<uuid>`` and
moved to ``<out>/shard-00000.parquet`` only when complete, so an interrupted run never leaves a
half-written shard visible (on S3 the move is a server-side copy: the object appears whole).
The footer's key-value metadata carries the schema version, the generator config and the
shard's statistics, so a rerun can check a shard and rebuild the manifest without reading rows.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.cli import UserError, one_line
from synth.families import family_of
from synth.reader import MANIFEST_NAME, _join, open_filesystem
from synth.render import GENERATOR_VERSION, LEGACY_RENDER_FIELDS, RenderConfig, render_block
from synth.schema import (
    ARROW_SCHEMA,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    Manifest,
    Scene,
    scene_from_masks,
    scenes_to_table,
)
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
        return {
            "schema_version": SCHEMA_VERSION,
            "generator_version": GENERATOR_VERSION,
            "n": self.n,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "family": family_of(self.render) or "custom",
            **self.render.to_dict(),
        }


def normalised_config(config: dict) -> dict:
    """A generator config (manifest ``config`` / shard footer) with the fields added since it was
    written filled in, so datasets generated before scene families existed still resume and read
    as ``textured`` (their renderer output is byte-identical)."""
    out = {**LEGACY_RENDER_FIELDS, **config}
    defaults = RenderConfig().to_dict()
    for key, value in defaults.items():
        out.setdefault(key, value)
    if "family" not in out:
        render = RenderConfig.from_dict({key: out[key] for key in defaults})
        out["family"] = family_of(render) or "custom"
    return out


def same_config(a: dict | None, b: dict | None) -> bool:
    """Whether two generator configs describe the same dataset (older configs normalised first)."""
    return a is not None and b is not None and normalised_config(a) == normalised_config(b)


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


def list_output(out: str, endpoint_url: str | None) -> tuple[Any, str, list[Any]]:
    """Open ``out`` (creating an S3 bucket if needed) and list it: ``(filesystem, root, entries)``.

    Raises ``UserError`` when ``out`` is a file or cannot be reached.
    """
    from pyarrow import fs

    try:
        filesystem, root = open_filesystem(out, endpoint_url, create_bucket=True)
        if filesystem.get_file_info(root).type == fs.FileType.File:
            raise UserError(f"--out {out} is a file; give a folder or s3://bucket/prefix")
        entries = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot access {out}: {one_line(exc)}") from None
    return filesystem, root, entries


def delete_entries(filesystem: Any, entries: Iterable[Any]) -> None:
    """Delete listed files and folders (a dataset being overwritten)."""
    from pyarrow import fs

    for entry in entries:
        if entry.type == fs.FileType.Directory:
            filesystem.delete_dir(entry.path)
        else:
            filesystem.delete_file(entry.path)


def publish_manifest(out: str, filesystem: Any, root: str, manifest: Manifest) -> str:
    """Write ``manifest.json`` atomically (temporary name, then rename), drop ``_tmp/``; its location."""
    tmp = _join(root, f"{TMP_DIR}/{MANIFEST_NAME}.{os.getpid()}")
    with filesystem.open_output_stream(tmp) as stream:
        stream.write(json.dumps(manifest.to_dict(), indent=2).encode())
    filesystem.move(tmp, _join(root, MANIFEST_NAME))
    try:
        filesystem.delete_dir(_join(root, TMP_DIR))
    except OSError:
        pass
    if out.startswith("s3://"):
        return out.rstrip("/") + "/" + MANIFEST_NAME
    return str(Path(root) / MANIFEST_NAME)


def write_scenes_atomic(
    out: str,
    endpoint_url: str | None,
    name: str,
    blocks: Iterable[list[Scene]],
    config: dict,
    extra_stats: dict | None = None,
) -> dict | None:
    """Write ``blocks`` of scenes (one row group each) to ``<out>/<name>`` atomically.

    The footer gets the schema version, ``config`` and the shard's stats (histograms, ``file``, and
    ``extra_stats``). Returns the stats, or None (and writes nothing) when there were no scenes.
    Shared by the generator and the importers.
    """
    import pyarrow.parquet as pq

    filesystem, root = open_filesystem(out, endpoint_url)
    tmp = _join(root, f"{TMP_DIR}/{name}.{uuid.uuid4().hex}")
    histograms: dict[str, Counter] = {key: Counter() for key in ("splits", "layers", "num_layers", "objects")}
    num_scenes = 0
    schema = ARROW_SCHEMA.with_metadata(
        {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode(), CONFIG_KEY: json.dumps(config, sort_keys=True)}
    )
    filesystem.create_dir(_join(root, TMP_DIR), recursive=True)
    try:
        with filesystem.open_output_stream(tmp) as stream:
            with pq.ParquetWriter(stream, schema, compression="zstd") as writer:
                for block in blocks:
                    if not block:
                        continue
                    writer.write_table(scenes_to_table(block), row_group_size=len(block))
                    num_scenes += len(block)
                    for scene in block:
                        histograms["splits"][scene.split] += 1
                        histograms["layers"].update(scene.object_layer.tolist())
                        histograms["num_layers"][scene.num_layers] += 1
                        histograms["objects"][scene.num_objects] += 1
                stats = empty_stats()
                stats["num_scenes"] = num_scenes
                for key, counter in histograms.items():
                    stats[key] = {str(k): int(counter[k]) for k in sorted(counter)}
                stats.update({"file": name, **(extra_stats or {})})
                writer.add_key_value_metadata({STATS_KEY: json.dumps(stats, sort_keys=True)})
        if not num_scenes:
            filesystem.delete_file(tmp)
            return None
        filesystem.move(tmp, _join(root, name))
    except BaseException:
        try:
            filesystem.delete_file(tmp)
        except OSError:
            pass
        raise
    return stats


def _rendered_blocks(job: JobConfig, start: int, stop: int) -> Iterator[list[Scene]]:
    """The scenes ``start..stop-1`` of ``job``, rendered one row group at a time."""
    step = row_group_scenes(job.render.size)
    for block_start in range(start, stop, step):
        ids = np.arange(block_start, min(stop, block_start + step))
        block = render_block(job.seed, ids, job.render)
        yield [
            scene_from_masks(
                int(scene_id),
                split_of(job.seed, int(scene_id), job.render.split_fractions),
                block.images[i],
                block.amodal_masks[i],
                np.arange(len(block.amodal_masks[i])),
            )
            for i, scene_id in enumerate(ids)
        ]


def write_shard(out: str, endpoint_url: str | None, job: JobConfig, index: int) -> dict:
    """Render shard ``index`` and publish it atomically; returns its stats dict."""
    start, stop = job.shard_range(index)
    stats = write_scenes_atomic(
        out,
        endpoint_url,
        shard_name(index),
        _rendered_blocks(job, start, stop),
        job.to_dict(),
        {"first_scene_id": start, "end_scene_id": stop},
    )
    assert stats is not None, f"shard {index} of {job} has no scenes"
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
    except Exception:
        return None
    kv = meta.metadata or {}
    if CONFIG_KEY not in kv or STATS_KEY not in kv:
        return None
    if not same_config(json.loads(kv[CONFIG_KEY]), job.to_dict()):
        raise ValueError(f"{shard_name(index)} was written with a different generator config")
    stats = json.loads(kv[STATS_KEY])
    start, stop = job.shard_range(index)
    if meta.num_rows != stop - start or stats.get("num_scenes") != stop - start:
        return None
    return stats
