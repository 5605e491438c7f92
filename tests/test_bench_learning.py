"""The learning probe runs, reports the baselines and pair order, and resumes from its saved state."""

import json

import pytest

from pipelines.bench import learning as bench_learning
from pipelines.training.scenes import SampleStream, SceneMix


def test_minimal_mode_reports_baselines_and_resumes(tmp_path, capsys):
    args = ["--minimal", "--steps", "2", "--eval-steps", "1", "--val-scenes", "6", "--batch", "4"]
    args += [
        "--threads",
        "1",
        "--set",
        "image_size=32",
        "--save",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "c"),
    ]
    bench_learning.main(args)
    rows = [json.loads(line) for line in (tmp_path / "c").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    first = rows[0]
    assert {"tf_layer0", "trivial_layer0", "margin_tf_layer0", "probe_pair_order"} <= set(first)
    assert "tf_layer1" not in first  # --minimal trains and scores layer 0 only
    assert abs(first["margin_tf_layer0"] - (first["tf_layer0"] - first["trivial_layer0"])) < 1e-3
    last = set(rows[-1])  # the full evaluation at the end
    assert {
        "pair_order",
        "pair_order_decidable",
        "object_layer_acc",
        "layer_count_acc",
        "free_layer0",
    } <= last
    assert (tmp_path / "s" / "checkpoint" / "config.json").exists()
    bench_learning.main([*args[:2], "3", *args[3:]])  # one more step: resumes at step 2
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 2" in out
    rows = [json.loads(line) for line in (tmp_path / "c").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_render_workers_give_the_same_samples_in_the_same_order():
    import torch

    from synth.families import family_config

    render = family_config("flat", 32)
    inline = SampleStream(0, render, buffer=300)
    parallel = SampleStream(0, render, buffer=300, workers=2)
    try:
        for _ in range(4):
            a, b = inline.batch(64), parallel.batch(64)
            assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        parallel.close()


def test_a_scene_mix_picks_one_family_per_chunk_from_the_seed_and_can_hold_out_a_shape_kind():
    mix = SceneMix.parse("flat=3,textured=1", size=32, without=("star",))
    assert mix.names == ("flat", "textured") and mix.weights == (0.75, 0.25)
    star = 4  # synth.shapes.SHAPE_KINDS.index("star")
    assert all(c.shape_weights[star] == 0.0 and sum(c.shape_weights) > 0 for c in mix.configs)
    picks = [mix.config_of_chunk(0, start) for start in range(0, 256 * 200, 256)]
    assert picks == [mix.config_of_chunk(0, start) for start in range(0, 256 * 200, 256)]
    share = sum(p is mix.configs[0] for p in picks) / len(picks)
    assert 0.6 < share < 0.9
    with pytest.raises(ValueError, match="unknown scene family"):
        SceneMix.parse("flat=1,nope=2")
    with pytest.raises(ValueError, match="unknown shape kind"):
        SceneMix.parse("flat", without=("hexagon",))
