"""The learning probe runs, reports the baselines and pair order, and resumes from its saved state."""

import json

from pipelines.bench import learning as bench_learning


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
    assert {"pair_order", "layer_count_acc", "free_layer0"} <= set(rows[-1])  # the full evaluation at the end
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
    inline = bench_learning.SampleStream(0, render, buffer=300)
    parallel = bench_learning.SampleStream(0, render, buffer=300, workers=2)
    try:
        for _ in range(4):
            a, b = inline.batch(64), parallel.batch(64)
            assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        parallel.close()
