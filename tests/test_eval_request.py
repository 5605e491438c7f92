"""``evaluate.py``'s and ``predict.py``'s typed requests: flags default to their fields, a request is
validated once, and below the entry script only the request travels (no ``argparse`` in inference)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli.flags import mismatched_defaults
from pipelines.evaluate import build_parser, request_from_args
from pipelines.inference.request import EvalRequest
from synth.cli import UserError

REPO = Path(__file__).resolve().parents[1]


def test_every_flag_defaults_to_its_request_field():
    assert mismatched_defaults(build_parser(), EvalRequest) == []
    request = request_from_args(build_parser().parse_args(["--model", "m", "--data", "d"]))
    assert request == EvalRequest(models=("m",), data="d")  # no flag given: every field's default
    assert request.teacher_forced and request.mlflow  # switched off by --no-... flags


def test_the_request_is_built_once_from_the_flags():
    args = build_parser().parse_args(
        [
            "--model",
            "a=runs/x",
            "--model",
            "b=runs/y",
            "--data",
            "d",
            "--limit",
            "1e2",
            "--steps",
            "3",
            "--ensemble",
            "2",
            "--no-teacher-forced",
            "--no-mlflow",
        ]
    )
    request = request_from_args(args)
    assert request.models == ("a=runs/x", "b=runs/y") and request.limit == 100
    assert request.sampler == {"steps": 3, "ensemble_size": 2}
    assert not request.teacher_forced and not request.mlflow
    assert request.title() == "d split test (steps=3, ensemble_size=2)"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workers": 0}, "--workers and --batch must be at least 1"),
        ({"limit": 0}, "--limit must be at least 1"),
        ({"sweep_passes": True, "models": ("a", "b")}, "--sweep-passes takes exactly one --model"),
        ({"sweep_passes": True, "coco_out": "c"}, "leave it out with --sweep-passes"),
    ],
)
def test_bad_requests_get_one_line(changes, message):
    with pytest.raises(UserError, match=message):
        EvalRequest(**{"models": ("m",), "data": "d", **changes}).validate()


def test_no_namespace_below_the_entry_script():
    for name in ("evaluation.py", "eval_report.py", "prediction.py", "request.py", "options.py"):
        text = (REPO / "pipelines" / "inference" / name).read_text()
        assert "argparse.Namespace" not in text and "args: " not in text, name


def test_every_predict_flag_defaults_to_its_request_field():
    from pipelines.inference.request import PredictRequest
    from pipelines.predict import build_parser as predict_parser
    from pipelines.predict import request_from_args as predict_request

    assert mismatched_defaults(predict_parser(), PredictRequest) == []
    args = predict_parser().parse_args(["--input", "i", "--out", "o"])
    assert predict_request(args) == PredictRequest(input="i", out="o")
    with pytest.raises(UserError, match="--limit must be at least 1"):
        predict_request(predict_parser().parse_args(["--input", "i", "--out", "o", "--limit", "0"]))
