"""Helpers shared by the training tests: a small generated dataset and free local ports."""

from __future__ import annotations

import socket
from pathlib import Path


def make_dataset(out: Path, n: int = 48, shard_size: int = 24, seed: int = 0) -> Path:
    """Render ``n`` 64x64 scenes into ``out`` with synth's own shard writer (no Ray, under a second)."""
    from synth.generate import build_parser, job_from_args, write_manifest
    from synth.shards import write_shard

    args = build_parser().parse_args(
        ["--n", str(n), "--out", str(out), "--shard-size", str(shard_size), "--seed", str(seed)]
    )
    job = job_from_args(args)
    stats = {index: write_shard(str(out), None, job, index) for index in range(job.num_shards)}
    write_manifest(str(out), None, job, stats)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
