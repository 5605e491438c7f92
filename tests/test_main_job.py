"""The main job's glue: which model the training stage produced, and its stage commands."""

from __future__ import annotations

import json

import pytest

from pipelines import main_job
from pipelines.cli.flags import mismatched_defaults
from pipelines.inference import stages
from pipelines.inference.stages import MainJobOptions


def test_model_uri_is_the_version_this_run_registered(tmp_path) -> None:
    result = tmp_path / "train.json"
    done = {"model_uri": "models:/m-1", "name": "sas", "version": "3", "checkpoint": "/runs/x/ckpt"}
    result.write_text(json.dumps({"status": "trained", **done}))
    assert stages.trained_model_uri(result, "sas") == "models:/sas/3"


def test_unregistered_run_falls_back_to_its_checkpoint_then_to_the_champion(tmp_path) -> None:
    result = tmp_path / "train.json"
    result.write_text(
        json.dumps({"status": "trained", "model_uri": "runs:/abc/model", "checkpoint": "/runs/x"})
    )
    assert stages.trained_model_uri(result, "sas") == "/runs/x"
    # a rerun of a finished run trains nothing: its result says so
    result.write_text(json.dumps({"status": "already_complete", "step": 20}))
    assert stages.trained_model_uri(result, "sas") == "models:/sas@champion"
    assert stages.trained_model_uri(tmp_path / "missing.json", "sas") == "models:/sas@champion"


def test_a_failing_stage_exits_with_its_code_and_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    times: dict[str, float] = {}
    with pytest.raises(SystemExit) as exc:
        stages.run_stage("boom", ["-c", "import sys; print('partial output'); sys.exit(3)"], times)
    assert exc.value.code == 3
    out, err = capsys.readouterr()
    assert "partial output" in out
    assert err.strip().startswith("error: stage 'boom' failed (exit 3)") and err.count("\n") == 1
    assert "boom" in times


def test_defaults_match_the_readme_and_have_one_home() -> None:
    options = MainJobOptions()
    assert (options.preset, options.scenes, options.family) == ("tiny", 20_000, stages.DEFAULT_FAMILY)
    assert (options.steps, options.minutes, options.data) == (None, stages.DEFAULT_MINUTES, None)
    assert options.init == "pretrained"  # the main job fine-tunes the shipped model
    assert mismatched_defaults(main_job.build_parser(), MainJobOptions) == []
    argv = stages.train_command(options, stages.Path("r.json"))
    assert argv[argv.index("--steps") + 1] == str(stages.FINE_TUNE_STEPS) and "train.lr=0.0005" in argv
    scratch = stages.train_command(MainJobOptions(init="scratch", overrides=["a.b=1"]), stages.Path("r.json"))
    assert (
        scratch[scratch.index("--steps") + 1] == str(stages.DEFAULT_STEPS)
        and "train.lr=0.0005" not in scratch
    )


RAY_LINES = [
    "\x1b[36m(TrainController pid=16885)\x1b[0m Failed to send resource request for train-c4f2. If this only "
    "happens transiently during network partition or CPU being overloaded, it's safe to ignore this error.",
    "\x1b[36m(TrainController pid=16885)\x1b[0m Traceback (most recent call last):",
    '\x1b[36m(TrainController pid=16885)\x1b[0m   File "x.py", line 1, in f',
    "\x1b[36m(TrainController pid=16885)\x1b[0m ray.exceptions.GetTimeoutError: Get timed out",
    "\x1b[36m(TrainController pid=16885)\x1b[0m [2026-12-06 12:02:50,525 E 16885 16931] core_worker.cc:2465: "
    "Actor with class name: 'PreemptionWatcher' and ID: '2be1' has constructor arguments in the object "
    "store and max_restarts > 0.",
    "\x1b[36m(RayTrainWorker pid=1)\x1b[0m [train] step 10/600 loss 0.1",
    "[2026-12-06 12:14:57,823 E 19844 19844] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(SceneScorer))' and ID: '4368' has constructor arguments in the object store",
    "Traceback (most recent call last):",
    "\x1b[36m(pid=gcs_server)\x1b[0m [2026-12-06 14:08:27,313 E 15777 15777] (gcs_server) "
    "gcs_actor_scheduler.cc:538: "
    "Failed to kill actor NIL_ID, return status: Invalid: KillActor RPC failed for actor NIL_ID: RpcError",
    "\x1b[36m(TrainController pid=16885)\x1b[0m Traceback (most recent call last):\x1b[32m "
    "[repeated 6x across "
    "cluster]\x1b[0m",
    "\x1b[36m(RayTrainWorker pid=1)\x1b[0m Traceback (most recent call last):\x1b[32m [repeated 2x across "
    "cluster]\x1b[0m",
]


def test_the_console_leaves_out_rays_known_notices_and_only_them() -> None:
    shown = stages.NoticeFilter()
    kept = [line for line in RAY_LINES if shown.shows(line)]
    # the project's line and a traceback that follows no notice stay; the notices and theirs go
    assert kept == [RAY_LINES[5], RAY_LINES[7], RAY_LINES[10]]
    assert shown.hidden == 8


def test_a_later_traceback_of_a_process_that_printed_a_notice_is_shown() -> None:
    shown = stages.NoticeFilter()
    prefix = "\x1b[36m(TrainController pid=16885)\x1b[0m "
    own = [
        "Traceback (most recent call last):",
        '  File "pipelines/training/worker.py", line 3, in loop',
        "RuntimeError: worker group failed",
    ]
    lines = [*RAY_LINES[:4], *(prefix + line for line in own)]
    assert [line for line in lines if shown.shows(line)] == [prefix + line for line in own]


def test_metrics_table_reads_the_evaluation_summary(tmp_path) -> None:
    summary = {"summaries": {"model": {"images": 200, "iou_free/layer0": 0.7, "trivial/layer0": 0.5}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table = stages.metrics_table(tmp_path / "summary.json")
    assert "200 held-out test scenes" in table and "| layer-0 IoU (free-running) | 0.700 |" in table
    assert str(tmp_path / "overlays.png") in table
    assert "no evaluation summary" in stages.metrics_table(tmp_path / "missing.json")


def test_metrics_table_shows_the_shipped_and_the_trained_model_side_by_side(tmp_path) -> None:
    summaries = {
        "shipped": {"images": 200, "pair_order": 0.8, "object_layer_acc": 0.85},
        "trained": {"images": 200, "pair_order": 0.82},
    }
    (tmp_path / "summary.json").write_text(json.dumps({"summaries": summaries}))
    table = stages.metrics_table(tmp_path / "summary.json")
    assert "| metric | shipped | trained |" in table
    assert "| pair order, every edge (front object in an earlier layer) | 0.800 | 0.820 |" in table
    assert "| object-layer accuracy (each object's layer right) | 0.850 | – |" in table
