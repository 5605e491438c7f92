"""The search report: ranking order, schedule ranking, CSV/markdown tables and the plot (no Ray)."""

from __future__ import annotations

import csv
import io

from pipelines.cli.files import write_text_atomic
from pipelines.tuning import report as tune_report


def _row(trial, schedule, miou, tf=0.5, passes=30.0, status="completed"):
    return {
        "trial": trial,
        "status": status,
        "diffusion.beta_schedule": schedule,
        "val/miou_free": miou,
        "val/miou_tf": tf,
        "val/unet_passes": passes,
    }


def test_trials_rank_by_metric_then_teacher_forced_then_fewer_passes():
    rows = [
        _row("a", "linear", 0.40),
        _row("b", "cosine", 0.50, tf=0.2),
        _row("c", "cosine", 0.50, tf=0.2, passes=10.0),
        _row("d", "sigmoid", None, status="error"),
        _row("e", "sigmoid", 0.50, tf=0.6),
    ]
    ranked = tune_report.rank_rows(rows, "val/miou_free")
    assert [r["trial"] for r in ranked] == ["e", "c", "b", "a", "d"]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, ""]


def test_schedule_ranking_uses_each_schedules_best_trial():
    rows = [_row("a", "linear", 0.4), _row("b", "cosine", 0.3), _row("c", "cosine", 0.6)]
    rows.append(_row("d", "x", None))
    ranking = tune_report.schedule_ranking(rows, "val/miou_free")
    assert [(r["schedule"], r["best_trial"], r["trials"], r["scored"]) for r in ranking] == [
        ("cosine", "c", 2, 2),
        ("linear", "a", 1, 1),
        ("x", "", 1, 0),
    ]
    assert abs(ranking[0]["mean"] - 0.45) < 1e-9


def test_tables_and_plot_are_written(tmp_path):
    rows = tune_report.rank_rows([_row("a", "linear", 0.4), _row("b", "cosine", 0.6)], "val/miou_free")
    parsed = list(csv.DictReader(io.StringIO(tune_report.to_csv(rows))))
    assert [(r["rank"], r["trial"], r["schedule"]) for r in parsed] == [
        ("1", "b", "cosine"),
        ("2", "a", "linear"),
    ]
    markdown = tune_report.to_markdown(rows).splitlines()
    assert markdown[0].startswith("| rank | trial | status | schedule") and len(markdown) == 4
    histories = [
        {"trial": "a", "schedule": "linear", "status": "completed", "steps": [2, 4], "values": [0.1, 0.4]},
        {"trial": "b", "schedule": "cosine", "status": "stopped early", "steps": [2], "values": [0.2]},
    ]
    path = tmp_path / "curves.png"
    tune_report.plot_curves(histories, "val/miou_free", path, "test")
    assert path.read_bytes()[:4] == b"\x89PNG"
    write_text_atomic(tmp_path / "t.md", "x\n")
    assert (tmp_path / "t.md").read_text() == "x\n" and not list(tmp_path.glob(".t.md*"))
    plain = tmp_path / "plain.md"
    plain.write_text("x\n")
    assert (tmp_path / "t.md").stat().st_mode == plain.stat().st_mode  # not mkstemp's 0600
