"""Generate synthetic occlusion scenes into Parquet shards with a Ray Data job.

    python synth/generate.py --n 1e5 --out data/synth64 [--size 64] [--seed 0] [--min-objects 2]
        [--max-objects 8] [--min-visible 0.1] [--shard-size N] [--overwrite] [--s3-endpoint URL]

``--out`` is a local folder or ``s3://bucket/prefix`` (endpoint from ``--s3-endpoint`` or
``AWS_ENDPOINT_URL``; credentials from the standard AWS environment). Ray is embedded
(``ray.init`` on this machine) unless ``RAY_ADDRESS`` is set or the script runs under
``ray job submit``. Each Ray Data task renders one shard (a contiguous range of scene ids) and
publishes it atomically; rerunning the same command skips finished shards, so an interrupted run
completes to the same content. ``manifest.json`` is written last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from synth.cli import OneLineParser, UserError, one_line, parse_positive_number
from synth.families import DEFAULT_FAMILY, FAMILIES
from synth.ray_runtime import init_ray
from synth.reader import MANIFEST_NAME, SHARD_PATTERN, _join, open_filesystem
from synth.render import RenderConfig
from synth.schema import Manifest
from synth.shards import (
    TMP_DIR,
    JobConfig,
    delete_entries,
    empty_stats,
    list_output,
    merge_stats,
    publish_manifest,
    read_shard_stats,
    same_config,
    shard_name,
    write_shard,
)

MAX_DEFAULT_SHARD_SIZE = 5000


def default_shard_size(n: int) -> int:
    """n/16 clamped to 250..5000: enough shards to keep every worker busy, few enough files.

    Depends on n only (not on this machine's cores), so the same command always resumes.
    """
    return min(MAX_DEFAULT_SHARD_SIZE, max(250, -(-n // 16)))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="synth/generate.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--n", type=parse_positive_number, required=True, help="number of scenes (1e5, 100000, 100_000)"
    )
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument(
        "--size", type=int, default=64, help="image side in pixels: a multiple of 16 from 32 to 512"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        help=f"scene family ({', '.join(FAMILIES)}; see synth/families.py); default {DEFAULT_FAMILY}",
    )
    p.add_argument("--min-objects", type=int, default=None, help="override the family's object count")
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument("--min-visible", type=float, default=0.10, help="min visible fraction of each object")
    p.add_argument(
        "--min-edge-border",
        type=int,
        default=RenderConfig.min_edge_border,
        help="px of visible border every occlusion edge must show (else the back object is re-drawn); "
        "0 = no check, the scenes of earlier versions",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="scenes per Parquet shard (default: n/16 within 250..5000)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)")
    return p


def job_from_args(args: argparse.Namespace) -> JobConfig:
    if args.family not in FAMILIES:
        raise UserError(f"unknown --family {args.family!r}; choose one of {', '.join(FAMILIES)}")
    base = FAMILIES[args.family]
    counts = {
        "min_objects": base.min_objects if args.min_objects is None else args.min_objects,
        "max_objects": base.max_objects if args.max_objects is None else args.max_objects,
    }
    render = dataclasses.replace(
        base, size=args.size, min_visible=args.min_visible, min_edge_border=args.min_edge_border, **counts
    )
    try:
        render.validate()
    except ValueError as exc:
        raise UserError(f"{exc}") from None
    shard_size = default_shard_size(args.n) if args.shard_size is None else args.shard_size
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    return JobConfig(n=args.n, seed=args.seed, shard_size=min(shard_size, args.n), render=render)


def prepare_output(out: str, endpoint: str | None, job: JobConfig, overwrite: bool) -> dict[int, dict]:
    """Check/clean the output location; return stats of shards already complete for this config."""
    from pyarrow import fs

    filesystem, root, entries = list_output(out, endpoint)
    names = {e.base_name: e for e in entries}
    ours = [n for n in names if SHARD_PATTERN.match(n) or n in (MANIFEST_NAME, TMP_DIR)]
    foreign = sorted(set(names) - set(ours))
    if foreign and not overwrite:
        raise UserError(
            f"{out} is not empty and holds no dataset of this generator ({foreign[0]}, ...): "
            "choose an empty --out, or pass --overwrite"
        )
    if overwrite:
        delete_entries(filesystem, [names[name] for name in ours])
        names = {}
    elif MANIFEST_NAME in names:
        with filesystem.open_input_stream(_join(root, MANIFEST_NAME)) as stream:
            try:
                previous = json.loads(stream.read().decode()).get("config")
            except ValueError:
                previous = None
        if not same_config(previous if isinstance(previous, dict) else None, job.to_dict()):
            raise UserError(
                f"{out} holds a dataset generated with another config: "
                "rerun with the same arguments to resume, or pass --overwrite"
            )
    # Writable? (also creates the folder or bucket)
    try:
        filesystem.create_dir(_join(root, TMP_DIR), recursive=True)
        probe = _join(root, f"{TMP_DIR}/.write-probe-{os.getpid()}")
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"ok")
        filesystem.delete_file(probe)
        for entry in filesystem.get_file_info(fs.FileSelector(_join(root, TMP_DIR))):
            filesystem.delete_file(entry.path)  # leftovers of an interrupted run
    except Exception as exc:
        raise UserError(f"cannot write to {out}: {one_line(exc)}") from None
    done: dict[int, dict] = {}
    for index in range(job.num_shards):
        name = shard_name(index)
        if name not in names:
            continue
        try:
            stats = read_shard_stats(filesystem, _join(root, name), job, index)
        except ValueError as exc:
            raise UserError(f"{out}: {exc}: rerun with the same arguments, or pass --overwrite") from None
        if stats is not None:
            done[index] = stats
    extra = [
        n for n in names if SHARD_PATTERN.match(n) and int(SHARD_PATTERN.match(n).group(1)) >= job.num_shards
    ]
    if extra:
        raise UserError(
            f"{out} holds {extra[0]}, beyond this config's {job.num_shards} shards: pass --overwrite"
        )
    return done


def run_job(out: str, endpoint: str | None, job: JobConfig, todo: list[int], on_shard) -> None:
    """Ray Data: one task per shard to do; ``on_shard(stats)`` is called as each finishes."""
    import ray.data

    def render_shards(batch: dict) -> dict:
        stats = [write_shard(out, endpoint, job, todo[int(k)]) for k in batch["id"]]
        return {"stats": [json.dumps(s) for s in stats]}

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    dataset = ray.data.range(len(todo), override_num_blocks=len(todo))
    dataset = dataset.map_batches(render_shards, batch_size=1, num_cpus=1)
    for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
        for item in batch["stats"]:
            on_shard(json.loads(item))


def write_manifest(out: str, endpoint: str | None, job: JobConfig, shard_stats: dict[int, dict]) -> str:
    """Write ``manifest.json`` atomically (temp object, then move); return its path/URI."""
    filesystem, root = open_filesystem(out, endpoint)
    total = empty_stats()
    for index in sorted(shard_stats):
        merge_stats(total, shard_stats[index])
    shards = [
        {
            "file": shard_name(i),
            "num_scenes": shard_stats[i]["num_scenes"],
            "first_scene_id": job.shard_range(i)[0],
            "end_scene_id": job.shard_range(i)[1],
        }
        for i in sorted(shard_stats)
    ]
    return publish_manifest(out, filesystem, root, Manifest.build(job.to_dict(), total, shards))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # our own progress lines replace Ray Data's
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    started = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
        job = job_from_args(args)
        endpoint = args.s3_endpoint
        done = prepare_output(args.out, endpoint, job, args.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    todo = [i for i in range(job.num_shards) if i not in done]
    print(
        f"[generate] {job.n} scenes at {job.render.size}x{job.render.size} in {job.num_shards} shards "
        f"-> {args.out} ({len(done)} shards already complete, {len(todo)} to render)",
        flush=True,
    )
    stats = dict(done)
    if todo:
        init_ray(num_cpus=os.cpu_count(), include_dashboard=False)  # all of this machine's cores
        job_start = time.perf_counter()
        rendered = 0

        def on_shard(shard: dict) -> None:
            nonlocal rendered
            index = int(shard["file"][len("shard-") : -len(".parquet")])
            stats[index] = shard
            rendered += shard["num_scenes"]
            elapsed = time.perf_counter() - job_start
            print(
                f"[generate] {len(stats)}/{job.num_shards} shards, {rendered} scenes rendered "
                f"({rendered / max(elapsed, 1e-9):.0f} scenes/s)",
                flush=True,
            )

        try:
            run_job(args.out, endpoint, job, todo, on_shard)
        except KeyboardInterrupt:
            print(
                "error: interrupted; finished shards are kept, rerun the same command to resume",
                file=sys.stderr,
                flush=True,
            )
            return 130
        except Exception as exc:
            print(
                f"error: generation failed ({one_line(exc)}); rerun the same command to resume",
                file=sys.stderr,
                flush=True,
            )
            return 1
    manifest_path = write_manifest(args.out, endpoint, job, stats)
    elapsed = time.perf_counter() - started
    rendered_now = sum(stats[i]["num_scenes"] for i in todo)
    print(
        f"[generate] done: {job.n} scenes, {rendered_now} rendered now in {elapsed:.1f} s "
        f"({rendered_now / elapsed:.0f} scenes/s incl. start-up); manifest: {manifest_path}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
