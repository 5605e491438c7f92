"""The main job behind ``pipelines/main_job.py``: its options, its recipe, and its stages (generate,
preview, train, evaluate, predict), each the project's own command run as a subprocess.

A stage's whole output goes to ``<out>/stages/<stage>.log``; the console gets the same lines except
Ray's own notices that a user cannot act on (``RAY_NOTICES``: each names the Ray issue behind it),
and one line saying how many were left out and where the full log is.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.cli.files import write_bytes_atomic
from pipelines.cli.flags import option
from pipelines.training.resume import resolve_init
from synth.cli import UserError, fail, parse_number, parse_positive_float
from synth.ray_runtime import REPO_ROOT
from synth.reader import iter_scenes
from synth.schema import encode_png

# The main job's recipe (docs/RESULTS.md, "Round 4"): the family where the model learns order within
# a 2-core CPU budget, a step budget so a faster CPU learns the same model, and a time cap.
DEFAULT_FAMILY = "flat"
DEFAULT_STEPS = 1500  # from scratch (--init scratch)
FINE_TUNE_STEPS = 600  # from the shipped model (the default): it starts where 1,500 scratch steps never get
FINE_TUNE_LR = 5e-4  # a quarter of tiny's peak: adapt the shipped weights, do not overwrite them
DEFAULT_MINUTES = 180.0  # a safety cap: the step budget decides on both kinds of CPU
REGISTER_NAME = "sas"
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

# Ray's own log lines that read as errors on a run that went well, and that no flag of ours changes.
# A notice's traceback (the lines after it from the same Ray process) is left out with it.
RAY_NOTICES = (
    # ray#53727: Ray's core worker logs an E line whenever an actor with max_restarts != 0 is created
    # with arguments in the object store. Here: Ray Train's PreemptionWatcher (max_restarts=-1; the
    # preemption notices of pipelines/training/worker.py need it) and Ray Data's MapWorker actors of
    # evaluate/predict (the map transformer they are built from is held by the running operator, so
    # a restart still finds it). Turning restarts off would trade fault tolerance for a quiet log.
    re.compile(
        r"core_worker\.cc:\d+: Actor with class name: '[^']*' and ID: '\w+' has constructor arguments"
    ),
    # Ray Train's controller retries its autoscaler resource request when the CPU is overloaded
    # (Ray: "safe to ignore" when transient); it prints the retry's GetTimeoutError traceback.
    re.compile(r"Failed to send resource request for train-\w+\. If this only happens transiently"),
    # ray#58544: when a Ray Data dataset finishes before one of its actors was placed, the GCS cancels
    # the lease and logs the failed kill of the not-yet-actor (NIL_ID) at level E; Ray later
    # lowered this log to debug level.
    re.compile(
        r"gcs_actor_scheduler\.cc:\d+: Failed to kill actor NIL_ID, return status: Invalid: KillActor RPC"
    ),
)
EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception)\b")
RAY_REPEATED = re.compile(r"\s*(?:\x1b\[\d+m)?\s*\[repeated \d+x across cluster\](?:\x1b\[0m)?\s*$")
RAY_PREFIX = re.compile(r"^(?:\x1b\[\d+m)?\(([^)]*pid=\d+[^)]*)\)(?:\x1b\[0m)?\s?")


@dataclass(frozen=True, kw_only=True)
class MainJobOptions:
    """What ``pipelines/main_job.py`` runs: the data, the training recipe, what is evaluated and
    predicted, and where everything goes."""

    scenes: int = option(20_000, "scenes to generate", parse=parse_number)
    family: str = option(DEFAULT_FAMILY, "scene family to train on")
    size: int = option(64, "image side in pixels", parse=parse_number)
    preset: str = option("tiny", "model preset: tiny|small|paper or a JSON file")
    minutes: float = option(DEFAULT_MINUTES, "training time cap", parse=parse_positive_float)
    steps: int | None = option(
        None,
        f"training steps (default {FINE_TUNE_STEPS} fine-tuning the shipped model, {DEFAULT_STEPS} from "
        "scratch: a step budget, so what a faster CPU learns does not change; --minutes still caps the time)",
        parse=parse_number,
    )
    init: str = option(
        "pretrained",
        "start from: pretrained (the shipped model, models/pretrained), scratch, a checkpoint",
    )
    overrides: list[str] = option([], "config override (repeatable)", flag="set", metavar="KEY=VALUE")
    data: str | None = option(None, "dataset folder (default data/main-<family>)")
    out: str = option("outputs/main", "folder for sheets, metrics, predictions and stage logs")
    name: str | None = option(None, "training run name (default main-<preset>-<family>)")
    storage: str = option("runs", "Ray Train storage of the training run, local or s3://")
    val_scenes: int = option(64, "validation scenes of the training run", parse=parse_number)
    val_every: int | None = option(
        None,
        "steps between the training run's validations (default: the preset's cadence)",
        parse=parse_number,
    )
    eval_scenes: int = option(200, "test scenes to evaluate", parse=parse_number)
    predict_images: int = option(8, "images to predict", parse=parse_number)
    mlflow_uri: str | None = option(None, "tracking URI (default ./mlruns/mlflow.db)")

    def validate(self) -> MainJobOptions:
        for flag, value in (("--scenes", self.scenes), ("--eval-scenes", self.eval_scenes)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise UserError("--steps must be at least 1")
        return self

    @property
    def run_name(self) -> str:
        return self.name or f"main-{Path(self.preset).stem}-{self.family}"

    @property
    def dataset(self) -> str:
        return self.data or f"data/main-{self.family}"


# ---- one stage --------------------------------------------------------------------------------
class NoticeFilter:
    """Decides, line by line, whether a stage's output line goes to the console: not a ``RAY_NOTICES``
    line, nor the one traceback that follows it from the same Ray process (up to its exception line),
    nor a line Ray's log deduplication repeats later (``[repeated Nx across cluster]``) whose text was
    left out before. Anything else, a later traceback of the same process included, is shown."""

    def __init__(self) -> None:
        self.hidden = 0
        self._process: str | None = None  # the Ray process whose notice's traceback is being skipped
        self._texts: set[tuple[str | None, str]] = set()  # (process, text) of every line left out

    def shows(self, line: str) -> bool:
        prefix = RAY_PREFIX.match(line)
        process = prefix.group(1) if prefix else None
        text = line[prefix.end() :] if prefix else line
        repeated = RAY_REPEATED.search(text)
        text = (text[: repeated.start()] if repeated else text).rstrip("\n")
        if any(notice.search(text) for notice in RAY_NOTICES):
            self._process = process
        elif repeated and (process, text) in self._texts:
            pass
        elif self._process is not None and process == self._process and _continues_traceback(text):
            if EXCEPTION_LINE.match(text):  # the notice's traceback ends here
                self._process = None
        else:
            self._process = None
            return True
        self._texts.add((process, text))
        self.hidden += 1
        return False


def _continues_traceback(text: str) -> bool:
    return text.startswith(("Traceback ", " ", "\t")) or bool(EXCEPTION_LINE.match(text))


def run_stage(title: str, argv: list[str], times: dict[str, float], log_dir: Path | None = None) -> list[str]:
    """Run one project command with this interpreter from the repo root, echoing its output (less Ray's
    notices) and returning its lines; the whole output goes to ``log_dir/<title>.log``. Exit like it
    on failure."""
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    started = time.time()
    lines: list[str] = []
    shown = NoticeFilter()
    with subprocess.Popen(
        [sys.executable, *argv], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if shown.shows(line):
                print(line, end="", flush=True)
    times[title] = time.time() - started
    log = None
    if log_dir is not None:
        log = log_dir / f"{title}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(log, ("\n".join(lines) + "\n").encode())
    if shown.hidden:
        print(f"[main] {shown.hidden} line(s) of Ray notices not shown (RAY_NOTICES); all of it: {log}")
    if proc.returncode != 0:
        fail(
            f"stage '{title}' failed (exit {proc.returncode}); fix the cause above and rerun to resume",
            proc.returncode,
        )
    return lines


# ---- what the stages leave ----------------------------------------------------------------------
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
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(iter_scenes(data, split="test")):
        if i >= count:
            break
        target = out_dir / f"scene-{scene.scene_id:08d}.png"
        if not target.exists():
            write_bytes_atomic(target, encode_png(scene.image))
    return out_dir


# ---- the job ------------------------------------------------------------------------------------
def train_command(options: MainJobOptions, result: Path) -> list[str]:
    """``pipelines/train.py``'s command line for the recipe."""
    fine_tune = options.init != "scratch"
    steps = options.steps or (FINE_TUNE_STEPS if fine_tune else DEFAULT_STEPS)
    argv = ["pipelines/train.py", "--data", options.dataset, "--preset", options.preset]
    argv += ["--minutes", str(options.minutes), "--name", options.run_name, "--storage", options.storage]
    argv += ["--alias-policy", "better"]
    argv += ["--init", options.init, "--steps", str(steps), "--val-scenes", str(options.val_scenes)]
    argv += ["--val-free-scenes", str(options.val_scenes), *_mlflow(options)]
    if options.val_every is not None:
        argv += ["--val-every", str(options.val_every)]
    for item in ([f"train.lr={FINE_TUNE_LR}"] if fine_tune else []) + list(options.overrides):
        argv += ["--set", item]
    return argv + ["--result", str(result)]


def _mlflow(options: MainJobOptions) -> list[str]:
    return ["--mlflow-uri", options.mlflow_uri] if options.mlflow_uri else []


def run(options: MainJobOptions) -> int:
    """Generate, preview, train, evaluate (beside the starting model) and predict; print a summary."""
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    data, logs, times = options.dataset, out / "stages", {}
    generate = ["synth/generate.py", "--n", str(options.scenes), "--size", str(options.size)]
    run_stage("generate", [*generate, "--family", options.family, "--out", data], times, logs)
    run_stage(
        "preview", ["synth/preview.py", data, "--n", "12", "--out", str(out / "preview.png")], times, logs
    )
    train_result = logs / "train.json"
    train_result.unlink(missing_ok=True)  # a stale file must not name an old model
    run_stage("train", train_command(options, train_result), times, logs)
    model_uri = trained_model_uri(train_result, REGISTER_NAME)

    start = resolve_init(options.init)
    models = ["--model", f"trained={model_uri}"]
    if start is not None:  # the model it started from, on the same scenes
        models = ["--model", f"{'shipped' if options.init == 'pretrained' else 'init'}={start}", *models]
    evaluate = ["pipelines/evaluate.py", *models, "--data", data, "--split", "test"]
    evaluate += ["--limit", str(options.eval_scenes), "--out", str(out / "eval"), *_mlflow(options)]
    run_stage("evaluate", evaluate, times, logs)
    inputs = export_test_images(data, out / "inputs", options.predict_images)
    predict = [
        "pipelines/predict.py",
        "--model",
        model_uri,
        "--input",
        str(inputs),
        "--out",
        str(out / "predict"),
    ]
    run_stage("predict", predict + _mlflow(options), times, logs)

    summary = {
        "dataset": data,
        "family": options.family,
        "model": model_uri,
        "registered": f"models:/{REGISTER_NAME}@champion (when this run's val mIoU was the best so far)",
        "preview": str(out / "preview.png"),
        "metrics": str(out / "eval"),
        "predictions": str(out / "predict"),
        "stage_logs": str(logs),
        "stage_seconds": {k: round(v) for k, v in times.items()},
    }
    print("\n=== main job done\n" + json.dumps(summary, indent=2), flush=True)
    print(metrics_table(out / "eval" / "summary.json"), flush=True)
    uri = options.mlflow_uri or "sqlite:///mlruns/mlflow.db"
    print(
        f"Browse runs and registered models: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
    )
    return 0
