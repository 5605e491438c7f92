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
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pipelines.cli.env import apply_env_defaults
from pipelines.cli.files import write_bytes_atomic
from pipelines.training.resume import resolve_init
from synth.cli import fail, parse_number, parse_positive_float
from synth.ray_runtime import REPO_ROOT

# The main job's recipe (docs/RESULTS.md, "Round 4"): the family where the model learns order within
# a 2-core CPU budget, a step budget so a faster CPU learns the same model, and a time cap.
DEFAULT_FAMILY = "flat"
DEFAULT_STEPS = 1500  # from scratch (--init scratch)
FINE_TUNE_STEPS = 600  # from the shipped model (the default): it starts where 1,500 scratch steps never get
FINE_TUNE_LR = 5e-4  # a quarter of tiny's peak: adapt the shipped weights, do not overwrite them
DEFAULT_MINUTES = 180.0  # a safety cap: the step budget decides on both kinds of CPU
SUMMARY_KEYS = (
    ("iou_free/layer0", "layer-0 IoU (free-running)"),
    ("trivial/layer0", "  trivial: every object in front"),
    ("margin_free/layer0", "  margin over trivial"),
    ("miou_free", "mIoU (free-running)"),
    ("miou_tf", "mIoU (teacher-forced)"),
    ("pair_order", "pair order, every edge (front object in an earlier layer)"),
    ("pair_order_decidable", "  on decidable edges (>= 3 px of visible border)"),
    ("object_layer_acc", "object-layer accuracy (each object's layer right)"),
    ("layer_count_acc", "layer-count accuracy"),
    ("stop_acc", "stop accuracy"),
    ("ap50", "AP50"),
    ("unc/err_rate_agree", "error where the ensemble agrees"),
    ("unc/err_rate_disagree", "error where it disagrees"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=parse_number, default=20_000, help="scenes to generate")
    p.add_argument(
        "--family", default=DEFAULT_FAMILY, help=f"scene family to train on (default {DEFAULT_FAMILY})"
    )
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--preset", default="tiny", help="model preset: tiny|small|paper or a JSON file")
    p.add_argument(
        "--minutes",
        type=parse_positive_float,
        default=DEFAULT_MINUTES,
        help=f"training time cap (default {DEFAULT_MINUTES:g})",
    )
    p.add_argument(
        "--steps",
        type=parse_number,
        default=None,
        help=f"training steps (default {FINE_TUNE_STEPS} fine-tuning the shipped model, {DEFAULT_STEPS} from "
        "scratch: a step budget, so what a faster CPU learns does not change; "
        "--minutes still caps the time)",
    )
    p.add_argument(
        "--init",
        default="pretrained",
        help="start from: pretrained (default: the shipped model, models/pretrained), scratch, a checkpoint",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--data", default=None, help="dataset folder (default data/main-<family>)")
    p.add_argument("--out", default="outputs/main", help="folder for sheets, metrics and predictions")
    p.add_argument("--name", default=None, help="training run name (default main-<preset>)")
    p.add_argument("--eval-scenes", type=parse_number, default=200, help="test scenes to evaluate")
    p.add_argument("--predict-images", type=parse_number, default=8, help="images to predict")
    p.add_argument("--mlflow-uri", default=None, help="tracking URI (default ./mlruns/mlflow.db)")
    return p.parse_args(argv)


def run_stage(title: str, argv: list[str], times: dict[str, float]) -> list[str]:
    """Run one project command with this interpreter from the repo root, echoing and returning its
    output lines; exit like it on failure."""
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    started = time.time()
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, *argv], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    times[title] = time.time() - started
    if proc.returncode != 0:
        fail(
            f"stage '{title}' failed (exit {proc.returncode}); fix the cause above and rerun to resume",
            proc.returncode,
        )
    return lines


def trained_model_uri(result_path: Path, register_name: str) -> str:
    """The model this training run produced, from train.py's ``--result`` file: the registered
    version, else the checkpoint. A rerun of a finished run trains nothing: then the champion."""
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {}
    if result.get("status") == "trained":
        if result.get("version") is not None:
            return f"models:/{result.get('name', register_name)}/{result['version']}"
        if result.get("checkpoint"):
            return str(result["checkpoint"])
    return f"models:/{register_name}@champion"


def metrics_table(summary_path: Path) -> str:
    """A short table of the evaluation's headline metrics (one column per model) and where its
    overlay sheet is."""
    try:
        summaries = json.loads(summary_path.read_text())["summaries"]
    except (OSError, ValueError, KeyError):
        return f"(no evaluation summary at {summary_path})"
    if not summaries:
        return f"(no evaluation summary at {summary_path})"
    images = int(next(iter(summaries.values())).get("images", 0))
    lines = [
        f"\n=== metrics on {images} held-out test scenes",
        "| metric | " + " | ".join(summaries) + " |",
        "|---|" + "---:|" * len(summaries),
    ]
    for key, label in SUMMARY_KEYS:
        if any(key in m for m in summaries.values()):
            cells = [f"{m[key]:.3f}" if key in m else "–" for m in summaries.values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sheet = summary_path.parent / "overlays.png"
    lines.append(f"overlay sheet (image | truth | per model: prediction, uncertainty): {sheet}")
    return "\n".join(lines)


def export_test_images(data: str, out_dir: Path, count: int) -> Path:
    """Write the first ``count`` test-split images as PNGs (the input of the prediction stage)."""
    from synth.reader import iter_scenes
    from synth.schema import encode_png

    out_dir.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(iter_scenes(data, split="test")):
        if i >= count:
            break
        target = out_dir / f"scene-{scene.scene_id:08d}.png"
        if not target.exists():
            write_bytes_atomic(target, encode_png(scene.image))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_env_defaults()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"main-{Path(args.preset).stem}-{args.family}"
    data = args.data or f"data/main-{args.family}"
    mlflow = ["--mlflow-uri", args.mlflow_uri] if args.mlflow_uri else []
    times: dict[str, float] = {}

    run_stage(
        "generate",
        [
            "synth/generate.py",
            *("--n", str(args.scenes), "--size", str(args.size), "--family", args.family, "--out", data),
        ],
        times,
    )
    run_stage("preview", ["synth/preview.py", data, "--n", "12", "--out", str(out / "preview.png")], times)
    train = [
        "pipelines/train.py",
        "--data",
        data,
        "--preset",
        args.preset,
        "--minutes",
        str(args.minutes),
    ]
    train += ["--name", name, "--alias-policy", "better", "--init", args.init, *mlflow]
    fine_tune = args.init != "scratch"
    train += ["--steps", str(args.steps or (FINE_TUNE_STEPS if fine_tune else DEFAULT_STEPS))]
    if fine_tune:
        train += ["--set", f"train.lr={FINE_TUNE_LR}"]
    for item in args.set:
        train += ["--set", item]
    train_result = out / "stages" / "train.json"
    train_result.unlink(missing_ok=True)  # a stale file must not name an old model
    train += ["--result", str(train_result)]
    run_stage("train", train, times)
    model_uri = trained_model_uri(train_result, "sas")

    start = resolve_init(args.init)
    models = ["--model", f"trained={model_uri}"]
    if start is not None:  # the model it started from, on the same scenes
        models = ["--model", f"{'shipped' if args.init == 'pretrained' else 'init'}={start}", *models]
    evaluate = ["pipelines/evaluate.py", *models, "--data", data, "--split", "test"]
    run_stage(
        "evaluate", evaluate + ["--limit", str(args.eval_scenes), "--out", str(out / "eval"), *mlflow], times
    )
    inputs = export_test_images(data, out / "inputs", args.predict_images)
    predict = [
        "pipelines/predict.py",
        "--model",
        model_uri,
        "--input",
        str(inputs),
        "--out",
        str(out / "predict"),
    ]
    run_stage("predict", predict + mlflow, times)

    summary = {
        "dataset": data,
        "family": args.family,
        "model": model_uri,
        "registered": "models:/sas@champion (when this run's val mIoU was the best so far)",
        "preview": str(out / "preview.png"),
        "metrics": str(out / "eval"),
        "predictions": str(out / "predict"),
        "stage_seconds": {k: round(v) for k, v in times.items()},
    }
    print("\n=== main job done\n" + json.dumps(summary, indent=2), flush=True)
    print(metrics_table(out / "eval" / "summary.json"), flush=True)
    uri = args.mlflow_uri or "sqlite:///mlruns/mlflow.db"
    print(
        f"Browse runs and registered models: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
