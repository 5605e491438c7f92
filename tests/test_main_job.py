"""The main job's glue: which model the training stage produced, and its stage commands."""

from __future__ import annotations

import json

import pytest

from pipelines import main_job


def test_model_uri_is_the_version_this_run_registered(tmp_path) -> None:
    result = tmp_path / "train.json"
    done = {"model_uri": "models:/m-1", "name": "sas", "version": "3", "checkpoint": "/runs/x/ckpt"}
    result.write_text(json.dumps({"status": "trained", **done}))
    assert main_job.trained_model_uri(result, "sas") == "models:/sas/3"


def test_unregistered_run_falls_back_to_its_checkpoint_then_to_the_champion(tmp_path) -> None:
    result = tmp_path / "train.json"
    result.write_text(
        json.dumps({"status": "trained", "model_uri": "runs:/abc/model", "checkpoint": "/runs/x"})
    )
    assert main_job.trained_model_uri(result, "sas") == "/runs/x"
    # a rerun of a finished run trains nothing: its result says so
    result.write_text(json.dumps({"status": "already_complete", "step": 20}))
    assert main_job.trained_model_uri(result, "sas") == "models:/sas@champion"
    assert main_job.trained_model_uri(tmp_path / "missing.json", "sas") == "models:/sas@champion"


def test_a_failing_stage_exits_with_its_code_and_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    times: dict[str, float] = {}
    with pytest.raises(SystemExit) as exc:
        main_job.run_stage("boom", ["-c", "import sys; print('partial output'); sys.exit(3)"], times)
    assert exc.value.code == 3
    out, err = capsys.readouterr()
    assert "partial output" in out
    assert err.strip().startswith("error: stage 'boom' failed (exit 3)") and err.count("\n") == 1
    assert "boom" in times


def test_defaults_match_the_readme() -> None:
    args = main_job.parse_args([])
    assert (args.preset, args.scenes, args.family) == ("tiny", 20_000, main_job.DEFAULT_FAMILY)
    assert (args.steps, args.minutes, args.data) == (None, main_job.DEFAULT_MINUTES, None)
    assert args.init == "pretrained"  # the main job fine-tunes the shipped model


def test_metrics_table_reads_the_evaluation_summary(tmp_path) -> None:
    summary = {"summaries": {"model": {"images": 200, "iou_free/layer0": 0.7, "trivial/layer0": 0.5}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table = main_job.metrics_table(tmp_path / "summary.json")
    assert "200 held-out test scenes" in table and "| layer-0 IoU (free-running) | 0.700 |" in table
    assert str(tmp_path / "overlays.png") in table
    assert "no evaluation summary" in main_job.metrics_table(tmp_path / "missing.json")


def test_metrics_table_shows_the_shipped_and_the_trained_model_side_by_side(tmp_path) -> None:
    summaries = {
        "shipped": {"images": 200, "pair_order": 0.8, "object_layer_acc": 0.85},
        "trained": {"images": 200, "pair_order": 0.82},
    }
    (tmp_path / "summary.json").write_text(json.dumps({"summaries": summaries}))
    table = main_job.metrics_table(tmp_path / "summary.json")
    assert "| metric | shipped | trained |" in table
    assert "| pair order, every edge (front object in an earlier layer) | 0.800 | 0.820 |" in table
    assert "| object-layer accuracy (each object's layer right) | 0.850 | – |" in table
