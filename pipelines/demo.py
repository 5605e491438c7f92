"""A demo page: drop an image, see its layers (Gradio; optional extra ``pip install -e '.[demo]'``).

    python pipelines/demo.py                       # the registered champion, else the shipped model
    python pipelines/demo.py --model models:/sas@champion --port 7860
    python pipelines/demo.py --model runs/main-tiny-flat      # a Ray Train run folder or checkpoint
    python pipelines/demo.py --model 0123456789abcdef0123456789abcdef   # an MLflow run id

The page shows the overlay of the layers (object outlines in white) next to the uncertainty map,
each layer's mask, the per-object list (layer, score, visible fraction, area) and the occlusion
edges; the sampler's steps, the ensemble size and the seed are adjustable. Images of any size and
mode are decoded and resized in and out by ``sas_model.predictor``, as ``predict.py`` and the served
model do; a non-image, an empty image or an image over ``--max-pixels`` is answered with an error
message on the page.

``--model`` default: ``models:/sas@champion`` from the tracking store (``--mlflow-uri``), else the
pretrained checkpoint at ``--pretrained`` (default ``$SAS_PRETRAINED_MODEL`` or
``models/pretrained``), else a one-line error. The server binds to 127.0.0.1 unless ``--host``.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.env import apply_env_defaults
from pipelines.cli.flags import add_flags, from_flags
from pipelines.inference.demo_app import DemoOptions, serve
from synth.cli import UserError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A demo page (Gradio) for the segmenter.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(parser, DemoOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        serve(from_flags(DemoOptions, vars(args)))
    except UserError as exc:
        fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
