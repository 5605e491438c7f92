"""`pipelines/evaluate.py` end to end on local Ray: model comparison, MLflow run, passes sweep, errors.

Models are untrained `tiny` checkpoints whose answer is known (``eval_support.make_checkpoint``):
``empty`` predicts nothing (so it always stops, never continues, and scores mIoU 0 on scenes with
objects); ``full`` predicts the whole frame for every layer up to ``max_layers = 3``. One of them is
also logged and registered in MLflow to exercise ``models:/NAME@ALIAS``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from eval_support import FAST_SAMPLER, make_checkpoint
from train_support import make_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_dataset(root / "data", n=24, shard_size=12)
    empty = make_checkpoint(root / "empty", head_bias=0.0)
    full = make_checkpoint(root / "full", head_bias=1.0)
    (root / "mlruns").mkdir()
    mlflow_uri = f"sqlite:///{root}/mlruns/mlflow.db"
    yield {"root": root, "data": str(data), "empty": str(empty), "full": str(full), "mlflow_uri": mlflow_uri}
    import mlflow

    mlflow.set_tracking_uri(None)


def _evaluate(env, *extra: str) -> int:
    from pipelines.evaluate import main

    return main(["--data", env["data"], "--split", "train", "--mlflow-uri", env["mlflow_uri"], *extra])


def _register(env, checkpoint: str, name: str) -> None:
    """Log ``checkpoint`` as the pyfunc model and point ``name@champion`` at it, as train.py does."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.registry import log_and_register
    from pipelines.tracking.store import setup_mlflow

    experiment_id = setup_mlflow(env["mlflow_uri"], "sas")
    run_id = MlflowClient().create_run(experiment_id).info.run_id
    image = np.zeros((64, 64, 3), np.uint8)
    log_and_register(run_id, checkpoint, image, name, "val/miou_free", 0.0, "always")


@pytest.mark.slow
def test_compares_models_from_registry_and_checkpoints_in_one_table(env, local_ray, capsys):
    _register(env, env["full"], "sas-full")
    out = env["root"] / "report"
    code = _evaluate(
        env,
        "--model",
        f"empty={env['empty']}",
        "--model",
        "full=models:/sas-full@champion",
        "--limit",
        "6",
        "--batch",
        "4",
        "--out",
        str(out),
        "--run-name",
        "compare",
        "--coco-out",
        str(env["root"] / "coco"),
        *FAST_SAMPLER,
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| metric | empty | full |" in printed and "| miou_free |" in printed

    summary = json.loads((out / "summary.json").read_text())["summaries"]
    empty, full = summary["empty"], summary["full"]
    assert empty["images"] == full["images"] == 6
    # empty model: no layer ever, so it always stops and never continues; every scene has objects
    assert empty["miou_free"] == 0.0 and empty["layers_pred_mean"] == 0.0
    assert empty["stop_acc"] == 1.0 and empty["continue_acc"] == 0.0 and empty["miou_tf"] == 0.0
    assert empty["instances_pred"] == 0 and empty["ap50"] == 0.0
    # full-frame model: three layers (max_layers), never stops, each layer one full-frame object
    assert full["layers_pred_mean"] == 3.0 and full["stop_acc"] == 0.0 and full["continue_acc"] == 1.0
    assert full["instances_pred"] == 18 and 0.0 < full["miou_free"] < 1.0
    assert full["unet_passes_mean"] == 3 * 2 * 2  # layers x steps x members

    rows = {r["metric"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert float(rows["stop_acc"]["empty"]) == 1.0 and float(rows["stop_acc"]["full"]) == 0.0
    per_image = list(csv.DictReader((out / "per_image_full.csv").open()))
    assert len(per_image) == 6 and {r["num_pred_layers"] for r in per_image} == {"3"}
    from PIL import Image

    sheet = Image.open(out / "overlays.png")
    # 6 scenes x 6 panels (image, truth, 2 x (prediction, uncertainty)), each 128 px with 2 px gaps
    assert sheet.size == (2 + 6 * 130, 2 + 6 * 130)
    assert "| metric | empty | full |" in (out / "metrics.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["mlflow_uri"])
    experiment = client.get_experiment_by_name("sas-eval")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'compare'")
    assert run.data.metrics["empty/stop_acc"] == 1.0 and run.data.metrics["full/layers_pred_mean"] == 3.0
    assert run.data.params["model.full.uri"] == "models:/sas-full@champion"
    assert run.data.params["model.full.mode"] == "diffusion"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/metrics.md", "report/metrics.csv", "report/overlays.png"} <= artifacts
    assert "report/calibration.png" in artifacts

    # COCO JSON: any COCO tool reads it, and COCOeval on the files gives the reported coco_ap50
    from pycocotools.coco import COCO

    from sas_model import coco_eval

    gt = json.loads((env["root"] / "coco" / "ground_truth.json").read_text())
    dt = json.loads((env["root"] / "coco" / "detections_full.json").read_text())
    assert len(gt["images"]) == 6 and len(dt) == 18
    assert (env["root"] / "coco" / "detections_empty.json").read_text() == "[]"
    assert COCO(str(env["root"] / "coco" / "ground_truth.json")).getImgIds() == list(range(1, 7))
    assert coco_eval.coco_ap(gt, dt)["coco_ap50"] == full["coco_ap50"]
    assert empty["coco_ap"] == 0.0 and "| coco_ap50 |" in printed

    # lineage: the evaluation's dataset is its input; the registered model gets the results linked
    # to its logged model (MLflow 3) and the version a tag naming the evaluation run
    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert "evaluation" in contexts
    import mlflow

    from pipelines.tracking import lineage

    version = client.get_model_version_by_alias("sas-full", "champion")
    assert version.tags["eval.train.run_id"] == run.info.run_id
    logged = mlflow.get_logged_model(lineage.logged_model_id(version))
    linked = {m.key: m for m in logged.metrics}
    assert (
        linked["train/layers_pred_mean"].value == 3.0
        and linked["train/layers_pred_mean"].run_id == run.info.run_id
    )
    assert linked["train/coco_ap50"].dataset_digest == lineage.manifest_digest(
        json.loads((Path(env["data"]) / "manifest.json").read_text())
    )


@pytest.mark.slow
def test_sweep_passes_reports_miou_against_unet_passes(env, local_ray):
    out = env["root"] / "sweep"
    code = _evaluate(
        env,
        "--model",
        env["full"],
        "--sweep-passes",
        "--sweep",
        "ddim:1,dpmpp2m:2",
        "--ensemble",
        "2",
        "--sweep-limit",
        "3",
        "--out",
        str(out),
        "--no-mlflow",
    )
    assert code == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["setting"] for r in rows] == ["DDIM-1", "DPM++2M-2"]
    assert [float(r["unet_passes_per_image"]) for r in rows] == [3 * 1 * 2, 3 * 2 * 2]
    assert all(r["images"] == "3" for r in rows)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "DPM++2M-2" in (out / "sweep.md").read_text()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("models:/no-such-model@champion", "cannot load models:/no-such-model@champion from MLflow"),
        ("models:/sas-full/99", "cannot load models:/sas-full/99"),
        ("/no/such/dir", "does not exist"),
        ("http://example.com/model", "use models:/NAME@ALIAS"),
    ],
)
def test_bad_model_uri_is_one_line_error(env, capsys, model, message):
    with pytest.raises(SystemExit) as exit_info:
        _evaluate(env, "--model", model, "--no-mlflow")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # MLflow may log INFO lines before it
    assert err.startswith("error: ") and message in err


def test_bad_inputs_are_one_line_errors(env, capsys, tmp_path):
    cases = [
        (["--model", str(tmp_path)], "is not a checkpoint directory"),
        (["--model", env["full"], "--data", str(tmp_path / "none")], "error: "),
        (["--model", env["full"], "--split", "nosuch"], "has no scenes"),
        (["--model", env["full"], "--steps", "5000"], "sampler.steps must be in 1..1000"),
        (["--model", f"a={env['full']}", "--model", f"a={env['empty']}"], "model labels must differ"),
        (["--model", env["full"], "--sweep-passes", "--sweep", "euler:3"], "--sweep item 'euler:3'"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            _evaluate(env, *extra, "--no-mlflow", "--out", str(tmp_path / "out"))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2, (extra, err)
        assert err.startswith("error: ") and message in err and "\n" not in err, (extra, err)


def test_cli_entry_point_prints_one_line_error_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "pipelines/evaluate.py", "--model", str(tmp_path / "nope"), "--data", "x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
