"""Train the sequential amodal segmenter with Ray Train, track it in MLflow, register the model.

Embedded (local Ray, MLflow in ./mlruns/mlflow.db, checkpoints in ./runs)::

    python pipelines/train.py --data data/shapes --preset tiny --workers 2 --minutes 15

Against a running cluster (the job's working dir ships synth/, sas_model/ and pipelines/ to every
worker; data and storage must be reachable from the cluster: absolute paths on a shared disk or
``s3://``, and a tracking server)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python pipelines/train.py --data s3://bucket/shapes --storage s3://bucket/runs \\
        --mlflow-uri http://mlflow:5000 --preset small --workers 2

(``.gitignore``d paths such as ``data/``, ``runs/``, ``mlruns/`` and ``.venv/`` are not uploaded.)
A plain driver started with ``RAY_ADDRESS=...`` ships the three packages as ``py_modules`` instead.

- Rerunning the same command (same ``--storage`` and ``--name``) resumes from the newest checkpoint
  (model, EMA, optimizer, step); a different model architecture is refused with a one-line error.
- ``--minutes`` is a wall-clock budget: training stops, checkpoints and registers when it runs out.
- The global batch (``train.batch_size``) stays the same for any ``--workers``.
- ``--cache auto`` decodes the training samples once into Ray's object store when they fit in a
  quarter of it (faster on few cores); bigger datasets are streamed and decoded every epoch.
- The final model is logged as an MLflow pyfunc, registered as ``--register-name`` (default
  ``sas``), and alias ``champion`` moves to it if its ``val/miou_free`` beats the current champion's.

Exit status: 0 done, 1 training failed, 2 bad input (one-line ``error:`` message).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.cli.args import training_parser
from pipelines.cli.env import apply_env_defaults
from pipelines.cli.flags import add_flags, from_flags
from pipelines.training.config import RunConfig, TrainRequest, model_config
from synth.cli import UserError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = training_parser(
        __doc__,
        preset_help="tiny|small|paper or a preset JSON file",
        set_help="dotted config override, e.g. train.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--name", help="run name (default sas-<preset>); same name + storage resumes")
    add_flags(parser, TrainRequest)
    add_flags(parser, RunConfig)
    return parser


def request_from_args(args: argparse.Namespace) -> TrainRequest:
    """The typed request the flags describe (validated: one-line ``UserError`` on a bad value)."""
    flags = vars(args)
    model = model_config(args.preset, dict(args.overrides), args.steps, args.batch)
    name = args.name or f"sas-{Path(args.preset).stem}"
    try:
        run = from_flags(RunConfig, flags, model=model, data_path=args.data, name=name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return from_flags(TrainRequest, flags, run=run, preset=args.preset, result=args.result)


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        request = request_from_args(args)
        from pipelines.training.launch import launch  # Ray, MLflow and torch: after --help and bad flags

        return launch(request)
    except UserError as exc:
        fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
