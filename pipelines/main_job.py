"""The main job, end to end on the embedded default (local Ray, local MLflow, local disk).

    python pipelines/main_job.py                 # ~20 min on 2 CPU cores (AVX512-BF16)
    python pipelines/main_job.py --minutes 3 --scenes 4000   # a quick smoke run

Stages, each one the project's own command run as a subprocess (so each gets a fresh Ray):

1. ``synth/generate.py``: synthetic occlusion scenes into Parquet (``--data``, resumable);
2. ``synth/preview.py``: a contact sheet of the dataset;
3. ``pipelines/train.py``: Ray Train training of the ``--preset``, by default fine-tuning the shipped
   model (``--init pretrained``, ``models/pretrained``; ``--init scratch`` trains from nothing), for
   ``--steps`` (MLflow run, model registered as ``sas`` with alias ``champion`` when its validation
   mIoU is the best so far);
4. ``pipelines/evaluate.py``: metrics of the trained model on held-out test scenes, beside the shipped
   model's on the same scenes;
5. ``pipelines/predict.py``: layer masks, objects and overlays for a folder of held-out images.

A stage that fails stops the job with its exit code; rerunning the same command resumes: the
dataset is not regenerated and a finished training run is not retrained (``--name`` names it).

Each stage's whole output is kept in ``<out>/stages/<stage>.log``; the console leaves out Ray's own
notices that a user cannot act on (``pipelines/inference/stages.py``, ``RAY_NOTICES``).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.env import apply_env_defaults
from pipelines.cli.flags import add_flags, from_flags
from pipelines.inference.stages import MainJobOptions, run
from synth.cli import UserError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(parser, MainJobOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_env_defaults()
    try:
        return run(from_flags(MainJobOptions, vars(args)))
    except UserError as exc:
        fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
