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


def random_checkpoint(path, **overrides) -> str:
    """A ``tiny`` checkpoint with weights nudged off their zero init (so it predicts something),
    config ``overrides`` applied (dotted keys); returns its path."""
    import torch

    from sas_model.checkpoint import save_checkpoint
    from sas_model.config import ModelConfig
    from sas_model.model import SASModel

    torch.manual_seed(0)
    model = SASModel(ModelConfig.preset("tiny").replace(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(path, model)
    return str(path)
