"""Search noise schedules and samplers with Ray Tune: each trial is a Ray Train run of the segmenter.

Embedded (local Ray, MLflow in ./mlruns/mlflow.db, search state in ./tune_runs/<name>)::

    python pipelines/tune.py --data data/shapes --preset tiny --trials 8 --max-steps 300 --minutes 5

The default space (``pipelines/tuning/space.py``) is a grid over the four beta schedules with
zero-terminal-SNR, prediction type, validation sampler and steps, and learning rate drawn per trial;
``--space FILE`` (JSON/YAML) and ``--search KEY=SPEC`` change it, e.g.
``--search sampler.steps=5,10 --search train.lr=loguniform:1e-4,1e-2 --search sampler.name=``.
An invalid space (unknown schedule, zero-SNR with only ε, T below the sampler steps, ...) is
rejected with one ``error:`` line before Ray starts.

- Each trial is a function trainable that builds and fits the project's ``TorchTrainer`` (the same
  ``train_loop_per_worker`` as ``pipelines/train.py``), forwarding its reports to Tune with
  ``TuneReportCallback``. Trials validate and checkpoint every ``--val-every`` steps.
- ASHA (``--reduction``, grace period = one validation interval) stops weak trials early on the
  validation metric (``--metric``, default ``val/miou_free``); trials run as many at a time as the
  CPUs (one kept free for Ray Data) or GPUs allow, or ``--concurrency``.
- Budgets: ``--trials`` (a multiple of the grid size), ``--max-steps`` and ``--minutes`` per trial,
  ``--time-budget`` minutes for the whole search.
- MLflow: a parent run for the search, one child run per trial (its config, searched params and
  training/val metrics). At the end the trial table (printed; ``trials.csv``/``trials.md``), the
  schedule ranking, ``miou_vs_steps.png`` and ``best_preset.json`` go to ``--out`` and to the
  parent run's artifacts. ``python pipelines/train.py --preset <out>/best_preset.json`` trains the
  winner; ``--register`` also registers the best trial's model (champion policy as in train.py).
- Rerunning the same command (same ``--storage`` and ``--name``) resumes an interrupted search
  (``Tuner.restore``): finished trials are kept, unfinished ones continue from their last Train
  checkpoint. A different space or preset under the same name is refused.

Exit status: 0 done, 1 no trial produced a result, 2 bad input, 3 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.args import training_parser
from pipelines.cli.env import apply_env_defaults
from pipelines.cli.flags import add_flags, from_flags
from pipelines.tuning.request import TuneRequest
from pipelines.tuning.space import SpaceError
from synth.cli import UserError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = training_parser(
        __doc__,
        preset_help="base config: tiny|small|paper or a preset JSON file",
        set_help="fixed override of the base config, e.g. sampler.ensemble_size=2 (repeatable)",
    )
    add_flags(parser, TuneRequest)
    return parser


def request_from_args(args: argparse.Namespace) -> TuneRequest:
    """The typed request the flags describe (validated: one-line ``UserError`` on a bad value)."""
    return from_flags(
        TuneRequest,
        vars(args),
        data=args.data,
        preset=args.preset,
        overrides=dict(args.overrides),
        result=args.result,
    )


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        request = request_from_args(args)
        from pipelines.tuning import search  # Ray, MLflow and torch: after --help and bad flags

        return search.run(request)
    except (UserError, SpaceError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
