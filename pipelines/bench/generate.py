"""Benchmark: renderer scenes/s (one process), whole Ray job scenes/s, bytes per scene on disk.

    python pipelines/bench/generate.py [--n64 100000] [--n256 2000] [--render-n 2000] [--skip-ray]

The Ray job numbers are wall-clock for ``synth/generate.py`` as a subprocess (Python and Ray
start-up included). Also prints the per-column encoded size that chose the schema encodings.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from synth.reader import load_manifest
from synth.render import RenderConfig, render_scenes
from synth.schema import scenes_to_table

REPO = Path(__file__).resolve().parents[2]


def bench_renderer(size: int, count: int) -> dict:
    """Scenes/s in this process: render + layering, and render + layering + row encoding."""
    cfg = RenderConfig(size=size)
    render_scenes(0, 10**9, 4, cfg)  # warm caches (photos, noise texture)
    start = time.perf_counter()
    scenes = render_scenes(0, 0, count, cfg)
    rendered = time.perf_counter()
    table = scenes_to_table(scenes)
    encoded = time.perf_counter()
    return {
        "size": size,
        "scenes": count,
        "render_per_s": count / (rendered - start),
        "render_encode_per_s": count / (encoded - start),
        "table": table,
        "scenes_list": scenes,
    }


def raw_image_zstd(scenes) -> float:
    """Bytes/scene of the images stored as raw uint8 RGB in a zstd Parquet column (the PNG alternative)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array([np.ascontiguousarray(s.image).tobytes() for s in scenes], type=pa.binary())
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image_raw": column}), buffer, compression="zstd")
    return len(buffer.getvalue()) / len(scenes)


def column_sizes(table) -> list[tuple[str, float, float, float]]:
    """(column, raw bytes/scene, snappy, zstd) from single-column Parquet files."""
    import pyarrow.parquet as pq

    rows = []
    for name in table.column_names:
        sizes = []
        for compression in ("none", "snappy", "zstd"):
            buffer = io.BytesIO()
            pq.write_table(table.select([name]), buffer, compression=compression)
            sizes.append(len(buffer.getvalue()) / table.num_rows)
        rows.append((name, *sizes))
    return rows


def bench_job(size: int, n: int, workdir: str) -> dict:
    out = Path(workdir) / f"bench{size}"
    cmd = [
        sys.executable,
        "synth/generate.py",
        "--n",
        str(n),
        "--size",
        str(size),
        "--out",
        str(out),
        "--overwrite",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"generate failed: {proc.stderr[-500:]}")
    disk = sum(p.stat().st_size for p in out.glob("shard-*.parquet"))
    manifest = load_manifest(str(out))
    return {
        "size": size,
        "n": n,
        "wall_s": wall,
        "per_s": n / wall,
        "bytes_per_scene": disk / n,
        "layer_histogram": manifest.layer_histogram,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n64", type=int, default=100_000)
    parser.add_argument("--n256", type=int, default=2000)
    parser.add_argument("--render-n", type=int, default=2000)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()

    for size, count in ((64, args.render_n), (256, max(16, args.render_n // 16))):
        r = bench_renderer(size, count)
        print(
            f"renderer {size}x{size}: {r['render_per_s']:.0f} scenes/s (render + layers), "
            f"{r['render_encode_per_s']:.0f} scenes/s incl. PNG/packbits row encoding [one process]"
        )
        if size == 64:
            print("  column bytes/scene (none / snappy / zstd):")
            for name, raw, snappy, zstd in column_sizes(r["table"]):
                if raw > 20:
                    print(f"    {name:18s} {raw:8.0f} {snappy:8.0f} {zstd:8.0f}")
            raw = raw_image_zstd(r["scenes_list"])
            print(f"    image as raw RGB bytes + zstd instead of PNG: {raw:.0f} B/scene")
    if args.skip_ray:
        return 0
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as workdir:
        for size, n in ((64, args.n64), (256, args.n256)):
            job = bench_job(size, n, workdir)
            print(
                f"Ray job {size}x{size}: {n} scenes in {job['wall_s']:.1f} s wall = "
                f"{job['per_s']:.0f} scenes/s "
                f"(incl. start-up), {job['bytes_per_scene']:.0f} B/scene on disk; "
                f"object layers {job['layer_histogram']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
