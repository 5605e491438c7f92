"""Batch prediction with Ray Data: images of any size in, layers / objects / uncertainty / JSON out.

    python pipelines/predict.py --model models:/sas@champion --input photos/ --out outputs/pred
    python pipelines/predict.py --model runs/sas-tiny --input data/shapes --out outputs/pred --limit 20
    python pipelines/predict.py --model models:/sas/3 --input s3://bucket/images --out outputs/pred

``--input`` is a folder (searched recursively) or a single file, local or ``s3://``, of image files
(anything Pillow reads: PNG, JPEG, BMP, TIFF, WebP, ...; RGBA/greyscale/palette become RGB), or
Parquet: a synth dataset folder (``manifest.json``, column ``image_png``) or Parquet files with a
binary ``image`` / ``image_png`` column (names from ``name`` / ``path`` / ``scene_id`` when present).

**Sizes.** The model works at its training size S×S (64 for the presets). Every image is resized
to S×S (bilinear; the aspect ratio is not kept), segmented there, and every mask is resized back to
the image's own H×W (bilinear on 0/1, thresholded at 0.5; the uncertainty map bilinear). Boxes,
areas and visible fractions are measured on the resized-back masks, in the original pixels, so
detail finer than about H/S pixels is not resolved.

Per image, in ``--out/<name>/`` (``<name>``: the path relative to ``--input`` without extension,
``/`` → ``__``; the extension is kept when two inputs would collide):

- ``layer_<k>.png`` (front layer 0), ``object_<id>.png`` (amodal mask per object), 0/255 greyscale;
- ``uncertainty.png``: heat map of the ensemble variance (max over layers; white = 0.25, the most);
- ``overlay.png``: layers tinted over the image with object outlines | the uncertainty heat map;
- ``result.json``: size, layers, objects (``id``, ``layer``, ``score``, ``bbox`` ``[x0, y0, x1, y1]``
  exclusive, ``area``, ``visible_area``, ``visible_fraction``, mask file) and ``occlusion_edges``
  (``[front_id, back_id]``).

Each image folder appears complete or not at all (built aside, then renamed); ``report.json`` lists
what was written and what was skipped. Files that cannot be read or decoded as images are
reported (``[predict] skipped ...``) and skipped; they never stop the batch.

Exit status: 0 done (even with skipped files), 1 failed, 2 bad input or no readable image.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.env import apply_env_defaults
from pipelines.cli.flags import add_flags, from_flags
from pipelines.inference.options import add_model_args, add_sampler_args, sampler_overrides
from pipelines.inference.request import PredictRequest
from synth.cli import UserError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Segment images layer by layer with Ray Data; write masks, overlays and JSON per image.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser)
    parser.add_argument("--input", required=True, help="image folder/file or Parquet, local or s3://")
    parser.add_argument("--out", required=True, help="output folder (local)")
    add_sampler_args(parser)
    add_flags(parser, PredictRequest, skip=("seed",))
    return parser


def request_from_args(args: argparse.Namespace) -> PredictRequest:
    """The typed request the flags describe (validated: one-line ``UserError`` on a bad value)."""
    flags = vars(args)
    return from_flags(
        PredictRequest,
        flags,
        input=args.input,
        out=args.out,
        model=args.model,
        sampler=sampler_overrides(flags),
    )


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        from pipelines.inference.prediction import run  # Ray and torch: after --help and bad flags

        run(request_from_args(args))
    except UserError as exc:
        fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
