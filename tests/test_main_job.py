"""The main job's glue: which model the training stage produced, and its stage commands."""

from __future__ import annotations

import json

import pytest

from pipelines import main_job


def test_model_uri_is_the_version_this_run_registered() -> None:
    done = {"model_uri": "models:/m-1", "name": "sas", "version": "3", "checkpoint": "/runs/x/ckpt"}
    lines = ["[train] step 10/20 ...", "[train] done: " + json.dumps(done)]
    assert main_job.trained_model_uri(lines, "sas") == "models:/sas/3"


def test_unregistered_run_falls_back_to_its_checkpoint_then_to_the_champion() -> None:
    done = {"model_uri": "runs:/abc/model", "checkpoint": "/runs/x/ckpt"}
    assert main_job.trained_model_uri(["[train] done: " + json.dumps(done)], "sas") == "/runs/x/ckpt"
    # a rerun of a finished run trains nothing and prints no summary
    assert (
        main_job.trained_model_uri(["[train] run 'x' had already finished"], "sas") == "models:/sas@champion"
    )


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
    assert (args.preset, args.minutes, args.scenes, args.data) == ("tiny", 15.0, 20_000, "data/main")
