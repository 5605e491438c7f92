"""Evaluate one or more models on a synth dataset split with Ray Data batch inference.

    python pipelines/evaluate.py --model models:/sas@champion --data data/shapes --split test
    python pipelines/evaluate.py --model diffusion=models:/sas@champion \\
        --model deterministic=runs/sas-det --data data/shapes --limit 200 --out outputs/eval
    python pipelines/evaluate.py --model models:/sas@champion --data data/shapes --sweep-passes

For each model, every scene of the split (or the first ``--limit``) is segmented free-running
(``segment``) and, unless ``--no-teacher-forced``, every layer again teacher-forced (``predict_layer``
given the true ``C_k``, ``k = 0..L``; ``k = L`` checks the stop). Scoring happens inside the Ray Data
actors (``SceneScorer``); the driver only merges small per-image records
(``sas_model.metrics_report``). Instance metrics (AP, invisible IoU, order accuracy) use only scenes
with ``has_instances``.

Outputs in ``--out``: ``metrics.md`` / ``metrics.csv`` (one column per model), ``per_image_<label>.csv``,
``overlays.png`` (image | truth | per model: prediction, uncertainty), ``summary.json``; with
``--coco-out DIR``: ``ground_truth.json`` and ``detections_<label>.json`` in COCO format (amodal
masks as RLE; ``coco_ap`` / ``coco_ap50`` / ``coco_ap75`` in the metrics are ``pycocotools``'
``COCOeval`` on exactly these; ``ap`` / ``ap50`` / ``ap75`` are ours, by Hungarian matching); with
``--sweep-passes``: ``sweep.md`` / ``sweep.csv`` / ``sweep.png`` (mIoU against UNet passes per image).
The same files, the metrics and the parameters go to one MLflow run in experiment ``sas-eval``
(``--no-mlflow`` skips it), with the dataset as its input (``mlflow.log_input``, context
``evaluation``). A model given as ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` gets the results
too: the metrics, keyed ``<split>/<metric>``, are logged linked to its MLflow 3 logged model (they show
on the model's page, with the dataset), and the version gets the tag ``eval.<split>.run_id``.

Exit status: 0 done, 1 failed, 2 bad input (one-line ``error:``).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.env import apply_env_defaults
from pipelines.cli.flags import add_flags, from_flags
from pipelines.inference.options import add_model_args, add_sampler_args, sampler_overrides
from pipelines.inference.request import EvalRequest
from synth.cli import UserError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate sequential amodal segmentation models on a dataset split (Ray Data).",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser, repeatable=True)
    parser.add_argument("--data", required=True, help="dataset directory or s3:// URI written by synth")
    add_sampler_args(parser)
    add_flags(parser, EvalRequest, skip=("seed",))
    return parser


def request_from_args(args: argparse.Namespace) -> EvalRequest:
    """The typed request the flags describe (validated: one-line ``UserError`` on a bad value)."""
    flags = vars(args)
    return from_flags(
        EvalRequest, flags, models=tuple(args.model), data=args.data, sampler=sampler_overrides(flags)
    )


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        from pipelines.inference.evaluation import run  # Ray and torch: after --help and bad flags

        run(request_from_args(args))
    except UserError as exc:
        fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
