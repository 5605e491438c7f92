"""Pretrain the model that ships with the project: one Ray-free command, scenes rendered on the fly.

    python pipelines/pretrain.py --out runs/pretrain --samples 1e6            # CPU, resumable
    python pipelines/pretrain.py --out runs/pretrain --minutes 60              # one hour more of it
    python pipelines/pretrain.py --out runs/pretrain --device cuda --batch 256 --render-workers 12
    python pipelines/pretrain.py --out runs/pretrain --no-train --ship models/pretrained   # ship it now

Trains a preset (default ``tiny``) on a mixture of scene families (``--mix``) with one shape kind held
out (``--hold-out``), every scene fresh (rendered by ``--render-workers`` processes, or inline), with
the optimiser step of ``pipelines/train.py``; the LR follows a cosine over ``--samples``. Every
``--eval-every`` samples the EMA weights are scored free-running on fresh test-split scenes
(a seed training never uses) of ``flat``, ``textured`` and ``flat`` made only of the held-out kind,
with the metrics of ``evaluate.py`` (layer 0 against the trivial answer, pair order over every edge and
the decidable ones, object-layer accuracy, layer count, AP50), one JSON line each in
``<out>/curve.jsonl``; then ``<out>/checkpoint`` (an ordinary checkpoint directory) and the resumable
state ``<out>/state.pt`` are rewritten (the state also every ``--save-every`` minutes). Rerun the
same command to go on; ``--minutes`` bounds one
invocation, ``--samples`` the run. ``--ship DIR`` writes the last evaluated checkpoint with its model
card (``MODEL_CARD.md``, from the run's own numbers) to ``DIR``, at most 20 MB.

Needs PyTorch, numpy, Pillow, pyarrow and scikit-image only (no Ray, no MLflow): it runs as is on a
bare GPU machine (``PYTHONPATH=.`` from the repository root when the project is not installed).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.flags import add_flags, field_defaults, from_flags
from pipelines.training.pretraining import PretrainRequest, run
from synth.cli import UserError, fail


def build_parser() -> argparse.ArgumentParser:
    """The flags: ``PretrainRequest``'s fields (``--set`` takes any number of ``KEY=VALUE``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(ap, PretrainRequest)
    ap.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=field_defaults(PretrainRequest)["overrides"],
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.lr=1e-3",
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(given)
    command = " ".join(["python", "pipelines/pretrain.py", *given])  # recorded in the state and the card
    try:
        request = from_flags(PretrainRequest, vars(args), overrides=tuple(args.overrides))
        run(request, command)  # prints its progress, evaluations and where it stopped
    except UserError as exc:
        fail(exc)


if __name__ == "__main__":
    main()
