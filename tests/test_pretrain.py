"""The pretraining command: trains on a family mix without the held-out shape kind, evaluates, resumes,
and ships a checkpoint with its model card that the project loads."""

from __future__ import annotations

import json

from pipelines import pretrain
from sas_model.checkpoint import load_model


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
