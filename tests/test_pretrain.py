"""The pretraining command: trains on a family mix without the held-out shape kind, evaluates, resumes,
and ships a checkpoint with its model card that the project loads."""

from __future__ import annotations

import json

import pytest

from pipelines import pretrain
from pipelines.cli.flags import from_flags, mismatched_defaults
from pipelines.training.pretraining import PretrainRequest, due_after_step, first_eval_at
from sas_model.checkpoint import load_model
from synth.cli import UserError


def test_pretrain_evaluates_resumes_and_ships_a_loadable_model_with_its_card(tmp_path, capsys):
    out, shipped = tmp_path / "run", tmp_path / "shipped"
    args = [
        "--out", str(out), "--samples", "32", "--batch", "8", "--eval-every", "16",
        "--eval-scenes", "3", "--threads", "1", "--mix", "flat=1,textured=1",
    ]  # fmt: skip
    pretrain.main(args)
    rows = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows] == [16, 32]
    assert set(rows[-1]["metrics"]) == {"flat", "textured", "flat_star"}  # the held-out kind apart
    flat = rows[-1]["metrics"]["flat"]
    assert {"margin_free/layer0", "pair_order", "object_layer_acc", "layer_count_acc", "ap50"} <= set(flat)
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["samples_seen"] == 32 and meta["pretrain"]["held_out_shape_kinds"] == ["star"]

    pretrain.main([*args[:3], "48", *args[4:], "--ship", str(shipped)])  # 16 more samples, then ship
    assert "resumed from" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows] == [16, 32, 48]
    assert sorted(p.name for p in shipped.iterdir()) == [
        "MODEL_CARD.md", "config.json", "curve.jsonl", "examples.png", "meta.json", "model.safetensors",
    ]  # fmt: skip
    model = load_model(shipped)
    assert model.order is not None and model.cfg.name == "tiny"
    card = (shipped / "MODEL_CARD.md").read_text()
    assert "Samples seen: 48" in card and "`flat_star`" in card and "python pipelines/pretrain.py" in card


def test_the_card_reports_each_data_phase_and_the_held_out_kind_before_it_joined():
    from pipelines.training.card import _data_phases, held_out_summary

    phases = [
        {"from_samples": 0, "mix": "flat=1.00", "held_out": ["star"]},
        {"from_samples": 300, "mix": "flat=1.00", "held_out": []},
    ]
    row = lambda n, flat, star: {  # noqa: E731
        "samples": n,
        "metrics": {
            "flat": {"margin_free/layer0": flat, "pair_order": 0.8},
            "flat_star": {"margin_free/layer0": star, "pair_order": 0.6},
        },
    }
    curve = [row(100, 0.05, -0.1), row(200, 0.1, -0.05), row(400, 0.2, 0.15)]
    text = held_out_summary(phases, curve)
    assert "`star`, at 200 samples" in text and "-0.050 against `flat`'s 0.100" in text
    assert "held out: star; from 300 samples" in _data_phases({"phases": phases}, [])
    assert held_out_summary(phases[1:], curve) == ""


def test_each_flag_default_lives_on_the_request_and_the_flags_build_it():
    parser = pretrain.build_parser()
    assert mismatched_defaults(parser, PretrainRequest) == []
    args = parser.parse_args(["--set", "train.lr=1e-3", "image_size=32", "--no-train", "--hold-out", "none"])
    request = from_flags(PretrainRequest, vars(args), overrides=tuple(args.overrides))
    assert request.overrides == ("train.lr=1e-3", "image_size=32") and not request.train
    assert request.hold_out == "none" and request.samples == 1e6
    assert PretrainRequest() == from_flags(PretrainRequest, vars(parser.parse_args([])))


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"samples": 0}, "--samples"),
        ({"eval_every": 0.5}, "--eval-every"),
        ({"eval_scenes": 0}, "--eval-scenes"),
        ({"batch": -1}, "--batch"),
        ({"ema": 1.0}, "--ema"),
        ({"hold_out": "hexagon"}, "--hold-out"),
        ({"probe_kind": "hexagon"}, "--probe-kind"),
        ({"overrides": ("train.lr",)}, "--set"),
    ],
)
def test_a_bad_request_is_a_one_line_error_naming_the_flag(changes, flag):
    with pytest.raises(UserError, match=flag) as info:
        PretrainRequest(**changes).validate()
    assert "\n" not in str(info.value)


def test_after_each_step_the_run_reports_saves_and_evaluates_as_they_fall_due():
    assert first_eval_at(0, 16) == 16 and first_eval_at(32, 16) == 48 and first_eval_at(40, 16) == 48
    quiet = due_after_step(8, 16, 64, since_report_s=1.0, since_save_s=1.0, save_every=10.0)
    assert (quiet.report, quiet.save, quiet.evaluate) == (False, False, False)
    late = due_after_step(8, 16, 64, since_report_s=61.0, since_save_s=601.0, save_every=10.0)
    assert (late.report, late.save, late.evaluate) == (True, True, False)
    assert due_after_step(16, 16, 64, 0.0, 0.0, 10.0).evaluate  # at an evaluation
    assert due_after_step(40, 48, 40, 0.0, 0.0, 10.0).evaluate  # at the end of the run
