"""The end of a schedule search: trial table (CSV + markdown), schedule ranking, mIoU-vs-steps plot.

Rows come from Ray Tune's ``ResultGrid`` (one per trial): the trial's effective config (after the
zero-SNR rule), its last reported metrics and its metric history. Trials are ranked by the search
metric (higher is better), then ``val/miou_tf``, then fewer UNet passes per image.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from pipelines.cli.files import figure_png, write_bytes_atomic, write_text_atomic
from pipelines.tracking import registry
from pipelines.tracking.store import flatten_dict
from pipelines.training import data, trainer
from pipelines.tuning import space as tune_space
from pipelines.tuning.request import Search, TrialSetup, TuneRequest
from synth.cli import fail

STATUS_TAG = "sas.tune_status"  # on each trial's MLflow run: completed, stopped_early, error, not_run

TRIAL_COLUMNS = [
    ("rank", "rank"),
    ("trial", "trial"),
    ("status", "status"),
    ("diffusion.beta_schedule", "schedule"),
    ("diffusion.zero_terminal_snr", "zero_snr"),
    ("diffusion.prediction_type", "pred"),
    ("diffusion.num_timesteps", "T"),
    ("sampler.name", "sampler"),
    ("sampler.steps", "sampler_steps"),
    ("train.lr", "lr"),
    ("step", "trained_steps"),
    ("val/miou_free", "miou_free"),
    ("val/miou_tf", "miou_tf"),
    ("val/loss", "val_loss"),
    ("val/unet_passes", "unet_passes_per_image"),
    ("minutes", "minutes"),
]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def rank_rows(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Sort rows best first and number them; rows without the metric (errors, not run) go last."""

    def key(row: dict[str, Any]) -> tuple:
        value = _number(row.get(metric))
        tf = _number(row.get("val/miou_tf"))
        passes = _number(row.get("val/unet_passes"))
        return (
            value is None,
            -(value if value is not None else 0.0),
            -(tf if tf is not None else 0.0),
            passes if passes is not None else math.inf,
            str(row.get("trial")),
        )

    ranked = sorted(rows, key=key)
    for index, row in enumerate(ranked, start=1):
        row["rank"] = index if _number(row.get(metric)) is not None else ""
    return ranked


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([title for _, title in TRIAL_COLUMNS])
    for row in rows:
        writer.writerow(["" if row.get(key) is None else row.get(key) for key, _ in TRIAL_COLUMNS])
    return buffer.getvalue()


def to_markdown(rows: list[dict[str, Any]], columns: list[tuple[str, str]] | None = None) -> str:
    columns = columns or TRIAL_COLUMNS
    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def schedule_ranking(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per beta schedule: trials, best and mean metric, best trial; best schedule first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get("diffusion.beta_schedule")), []).append(row)
    out = []
    for schedule, members in groups.items():
        values = [v for v in (_number(m.get(metric)) for m in members) if v is not None]
        best = max(
            members, key=lambda m: _number(m.get(metric)) if _number(m.get(metric)) is not None else -1
        )
        out.append(
            {
                "schedule": schedule,
                "trials": len(members),
                "scored": len(values),
                "best": max(values) if values else None,
                "mean": sum(values) / len(values) if values else None,
                "best_trial": best.get("trial") if values else "",
            }
        )
    out.sort(key=lambda r: (r["best"] is None, -(r["best"] or 0.0), -(r["mean"] or 0.0)))
    for index, row in enumerate(out, start=1):
        row["rank"] = index
    return out


SCHEDULE_COLUMNS = [
    ("rank", "rank"),
    ("schedule", "schedule"),
    ("trials", "trials"),
    ("scored", "scored"),
    ("best", "best"),
    ("mean", "mean"),
    ("best_trial", "best trial"),
]


def plot_curves(histories: list[dict[str, Any]], metric: str, path: str | Path, title: str) -> None:
    """Val metric against training steps, one line per trial, one colour per beta schedule (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "linear": "tab:blue",
        "cosine": "tab:orange",
        "sigmoid": "tab:green",
        "scaled_linear": "tab:red",
    }
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    labelled: set[str] = set()
    for history in histories:
        steps, values = history["steps"], history["values"]
        if not steps:
            continue
        schedule = str(history["schedule"])
        ax.plot(
            steps,
            values,
            marker="o",
            markersize=3,
            linewidth=1.2,
            alpha=0.85,
            color=colours.get(schedule),
            label=schedule if schedule not in labelled else None,
            linestyle="-" if history.get("status") == "completed" else "--",
        )
        labelled.add(schedule)
    ax.set_xlabel("training steps")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(title="beta schedule (dashed: stopped early)", fontsize=8, title_fontsize=8)
    write_bytes_atomic(path, figure_png(fig))


# ---- the end of a search ----------------------------------------------------------------------
def _flat_config(cfg: Any) -> dict[str, Any]:
    return flatten_dict(cfg.to_dict())


def trial_rows(results: Any, setup: TrialSetup, metric: str) -> tuple[list[dict], list[dict]]:
    """``(rows, histories)`` from a Tune ``ResultGrid``: one table row and one metric curve per trial."""
    rows, histories = [], []
    max_steps = int(setup.base_config["train"]["max_steps"])
    for result in results:
        metrics = dict(result.metrics or {})
        params = dict(result.config or {})
        trial = metrics.get("trial_id") or Path(str(result.path)).name
        if result.error is not None:
            status = "error"
        elif "step" not in metrics:
            status = "not run"
        elif metrics.get("done") or int(metrics["step"]) >= max_steps:  # ran to its end (or deadline)
            status = "completed"
        else:
            status = "stopped early"
        flat = _flat_config(tune_space.trial_config(setup.base_config, params, setup.prediction_types))
        row = {key: flat[key] for key, _ in TRIAL_COLUMNS if key in flat}
        row.update(
            trial=trial,
            status=status,
            params=params,
            step=metrics.get("step"),
            minutes=round(float(metrics.get("time_total_s") or 0.0) / 60, 2),
            checkpoint_path=metrics.get("checkpoint_path"),
            error=str(result.error).strip().splitlines()[-1][:300] if result.error is not None else "",
        )
        for key in ("val/miou_free", "val/miou_tf", "val/loss", "val/unet_passes", "val/layer_count_acc"):
            row[key] = _number(metrics.get(key))
        rows.append(row)
        steps, values = [], []
        frame = result.metrics_dataframe
        if frame is not None and metric in frame and "step" in frame:
            for step, value in zip(frame["step"], frame[metric], strict=True):
                if _number(step) is not None and _number(value) is not None:
                    steps.append(int(step))
                    values.append(float(value))
        histories.append(
            {"trial": trial, "schedule": row.get("diffusion.beta_schedule"), "status": status, "steps": steps,
             "values": values}
        )  # fmt: skip
    return rank_rows(rows, metric), histories


def finish(results: Any, search: Search, setup: TrialSetup) -> int:
    """Write the report (table, ranking, plot, best preset), close the MLflow runs, optionally register."""
    from mlflow.tracking import MlflowClient

    request, name, out_dir, parent_id = search.request, search.name, search.out_dir, setup.parent_run_id
    metric = request.metric
    rows, histories = trial_rows(results, setup, metric)
    client = MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    for row in rows:
        run_dir = f"{search.base_run.storage}/trial-{row['trial']}"
        child_id, _ = registry.find_or_create_run(experiment_id, run_dir, f"trial-{row['trial']}")
        row["mlflow_run_id"] = child_id
        child = client.get_run(child_id)
        tag = {"completed": "completed", "stopped early": "stopped_early"}.get(row["status"], row["status"])
        client.set_tag(child_id, STATUS_TAG, tag.replace(" ", "_"))
        client.set_tag(child_id, "mlflow.parentRunId", parent_id)
        if row["rank"] != "":
            client.log_metric(child_id, "tune/rank", float(row["rank"]))
        if child.info.status == "RUNNING":
            client.set_terminated(child_id, "FAILED" if row["status"] == "error" else "FINISHED")

    ranking = schedule_ranking(rows, metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_md = to_markdown(rows)
    ranking_md = to_markdown(ranking, SCHEDULE_COLUMNS)
    write_text_atomic(out_dir / "trials.csv", to_csv(rows))
    write_text_atomic(out_dir / "trials.md", f"# Search {name}: trials ({metric}, best first)\n\n{table_md}")
    write_text_atomic(
        out_dir / "schedules.md", f"# Search {name}: beta schedules by best {metric}\n\n{ranking_md}"
    )
    plot_curves(histories, metric, out_dir / "miou_vs_steps.png", f"{name}: {metric} vs training steps")
    print(f"\n[tune] trials ({metric}, best first):\n{table_md}", flush=True)
    print(f"[tune] beta schedules by best {metric}:\n{ranking_md}", flush=True)

    scored = [row for row in rows if row["rank"] != ""]
    if not scored:
        client.log_artifacts(parent_id, str(out_dir), "report")
        client.set_terminated(parent_id, "FAILED")
        errors = [row["error"] for row in rows if row["error"]]
        fail(f"no trial produced a validation result{': ' + errors[0] if errors else ''}", code=1)
    best = scored[0]
    best_cfg = tune_space.trial_config(search.preset_base.to_dict(), best["params"], setup.prediction_types)
    best_cfg = best_cfg.replace(name=f"tuned-{name}")
    best_cfg.validate()
    preset_path = out_dir / "best_preset.json"
    write_text_atomic(preset_path, best_cfg.to_json() + "\n")
    summary = {
        "search": name,
        "storage": search.exp_dir,
        "metric": metric,
        "best_trial": best["trial"],
        "best_params": tune_space.effective_params(best["params"], setup.prediction_types),
        "best_metrics": {k: best[k] for k in ("val/miou_free", "val/miou_tf", "val/loss", "val/unet_passes")},
        "trained_steps": best["step"],
        "checkpoint_path": best["checkpoint_path"],
        "mlflow_run_id": best["mlflow_run_id"],
        "preset": str(preset_path),
        "train_command": f"python pipelines/train.py --data {request.data} --preset {preset_path}",
    }
    if request.register and best["checkpoint_path"]:
        summary["registered"] = _register(best, request, setup.data_path)
    write_text_atomic(out_dir / "best_trial.json", json.dumps(summary, indent=2, default=str) + "\n")

    client.log_artifacts(parent_id, str(out_dir), "report")
    for key in ("val/miou_free", "val/miou_tf", "val/loss", "val/unet_passes"):
        if best[key] is not None:
            client.log_metric(parent_id, f"best/{key}", float(best[key]))
    client.log_metric(parent_id, "trials/completed", float(sum(r["status"] == "completed" for r in rows)))
    client.log_metric(
        parent_id, "trials/stopped_early", float(sum(r["status"] == "stopped early" for r in rows))
    )
    client.log_metric(parent_id, "trials/errors", float(sum(r["status"] == "error" for r in rows)))
    client.set_tag(parent_id, "sas.best_trial", best["trial"])
    client.set_tag(parent_id, "sas.best_schedule", str(best.get("diffusion.beta_schedule")))
    client.set_terminated(parent_id, "FINISHED")
    print(f"[tune] best trial {best['trial']}: {metric} {best[metric]:.4f}; preset {preset_path}", flush=True)
    print("[tune] done: " + json.dumps(summary, default=str), flush=True)
    return 0


def _register(best: dict[str, Any], request: TuneRequest, data_path: str) -> dict[str, Any]:
    """Log the best trial's last checkpoint as a pyfunc in its child run and register it."""
    import ray.train

    path, filesystem = (
        trainer.storage_location(best["checkpoint_path"])
        if "://" in best["checkpoint_path"]
        else (best["checkpoint_path"], None)
    )
    checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
    with checkpoint.as_directory() as checkpoint_dir:
        return registry.log_and_register(
            best["mlflow_run_id"],
            checkpoint_dir,
            data.example_image(data_path),
            request.register_name,
            "val/miou_free",
            best.get("val/miou_free"),
            request.alias_policy,
        )
