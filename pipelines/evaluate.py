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
from functools import partial

from pipelines.cli.env import apply_env_defaults
from pipelines.inference.options import add_model_args, add_resource_args, add_sampler_args, sampler_overrides
from pipelines.inference.request import EvalRequest, field_default, request_from_flags
from synth.cli import UserError, fail, parse_number

D = partial(field_default, EvalRequest)  # a flag's default is the request field's


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate sequential amodal segmentation models on a dataset split (Ray Data).",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser, repeatable=True)
    parser.add_argument("--data", required=True, help="dataset directory or s3:// URI written by synth")
    parser.add_argument("--split", default=D("split"), help="train, val or test (default test)")
    parser.add_argument("--limit", type=parse_number, help="evaluate only the first N scenes of the split")
    parser.add_argument("--out", default=D("out"), help="report folder (default outputs/eval)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)")
    parser.add_argument(
        "--coco-out",
        metavar="DIR",
        help="write ground truth and each model's detections as COCO JSON (amodal masks, RLE) to DIR",
    )
    add_sampler_args(parser)
    add_resource_args(parser)
    parser.add_argument(
        "--no-teacher-forced", action="store_true", help="skip teacher-forced IoU and stop accuracy (faster)"
    )
    parser.add_argument(
        "--sweep-passes",
        action="store_true",
        help="mIoU against UNet passes per image (DDPM-1000, DDIM 100/50/20/10, DPM++2M 20/10) for one model",
    )
    parser.add_argument(
        "--sweep", metavar="SAMPLER:STEPS,...", help="custom sweep settings, e.g. ddim:10,dpmpp2m:10"
    )
    parser.add_argument("--sweep-limit", type=parse_number, help="scenes for the sweep (default --limit)")
    parser.add_argument(
        "--workers", type=int, default=D("workers"), help="Ray Data actors holding a model (default 1)"
    )
    parser.add_argument("--batch", type=int, default=D("batch"), help="scenes per actor batch (default 16)")
    parser.add_argument(
        "--sheet-rows", type=int, default=D("sheet_rows"), help="scenes in the overlay sheet (default 8)"
    )
    parser.add_argument(
        "--experiment", default=D("experiment"), help=f"MLflow experiment (default {D('experiment')})"
    )
    parser.add_argument("--run-name", help="MLflow run name")
    parser.add_argument("--no-mlflow", action="store_true", help="write the report files only")
    return parser


def request_from_args(args: argparse.Namespace) -> EvalRequest:
    """The typed request the flags describe (validated: one-line ``UserError`` on a bad value)."""
    flags = vars(args)
    return request_from_flags(
        EvalRequest,
        flags,
        models=tuple(args.model),
        sampler=sampler_overrides(flags),
        teacher_forced=not args.no_teacher_forced,
        mlflow=not args.no_mlflow,
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
