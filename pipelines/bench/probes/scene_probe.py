"""What the scene probes (``order_errors``, ``layer0_decisions``) share: their flags (a model and a
dataset split), and the segmenter and scenes with instances those flags name."""

from __future__ import annotations

import argparse
from itertools import islice
from typing import Any

import torch

from pipelines.inference.models import resolve_model
from sas_model.checkpoint import load_model
from sas_model.segmenter import SequentialSegmenter
from synth.reader import iter_scenes


def parser(doc: str, scenes: int) -> argparse.ArgumentParser:
    """``--model``, ``--data``, ``--split``, ``--scenes`` (default ``scenes``), ``--threads``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", required=True, help="a checkpoint or run folder, or models:/NAME@ALIAS")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--scenes", type=int, default=scenes)
    ap.add_argument("--threads", type=int, default=2)
    return ap


def load(
    model: str, data: str, *, split: str, scenes: int, threads: int
) -> tuple[SequentialSegmenter, list[Any]]:
    """The segmenter of ``model`` (a checkpoint, run folder or registry URI; EMA weights, CPU, ``threads``
    torch threads) and the first ``scenes`` scenes of ``data``'s ``split`` that have instances."""
    torch.set_num_threads(threads)
    segmenter = SequentialSegmenter(load_model(resolve_model(model).checkpoint_dir), device="cpu")
    found = iter_scenes(data, split=split)
    return segmenter, [s for s in islice(found, scenes) if s.has_instances]
