"""Report files and MLflow logging for ``pipelines/evaluate.py``: tables, CSVs, overlay sheet, sweep plot.

Every file is written atomically (``pipelines.cli.files``). Metric tables put models in columns
(``sas_model.metrics_report.summary_markdown``); the printed table holds the headline metrics, the
files hold all of them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.cli.files import figure_png, write_bytes_atomic, write_text_atomic
from pipelines.inference.models import model_summary
from pipelines.tracking import lineage
from pipelines.tracking.store import setup_mlflow
from sas_model.codec import decode_png, encode_png
from sas_model.metrics import UNCERTAINTY_BIN_EDGES
from sas_model.metrics_report import summary_markdown
from sas_model.overlay import overlay_sheet

if TYPE_CHECKING:
    from pipelines.inference.request import EvalRequest, EvalResult
    from synth.schema import Manifest

HEADLINE = (
    "images",
    "miou_free",
    "miou_tf",
    "iou_free/layer0",
    "trivial/layer0",
    "margin_free/layer0",
    "iou_free/layer1",
    "iou_free/layer2",
    "iou_tf/layer0",
    "iou_tf/layer1",
    "iou_tf/layer2",
    "stop_acc",
    "continue_acc",
    "layer_count_acc",
    "ap",
    "ap50",
    "ap75",
    "coco_ap",
    "coco_ap50",
    "coco_ap75",
    "invisible_iou",
    "pair_order",
    "pair_order_decidable",
    "decidable_fraction",
    "object_layer_acc",
    "unc/err_rate_agree",
    "unc/err_rate_disagree",
    "unet_passes_mean",
    "images_per_s",
)


AP_LEGEND = (
    "AP columns: `ap` / `ap50` / `ap75` are ours (Hungarian matching on amodal IoU, 101-point "
    "interpolation); `coco_ap` / `coco_ap50` / `coco_ap75` are pycocotools COCOeval (segm, greedy by "
    "score, maxDets 100) on the same predictions, the numbers to compare with published amodal AP."
)


def comparison_markdown(summaries: dict[str, dict[str, float]], request: EvalRequest) -> str:
    """Headline metrics, one column per model, titled with the data, split and sampler flags."""
    picked = {label: {k: s[k] for k in HEADLINE if k in s} for label, s in summaries.items()}
    table = summary_markdown(picked, title=request.title())
    if any("coco_ap" in s for s in summaries.values()):
        table += "\n" + AP_LEGEND + "\n"
    return table


def write_coco(out_dir: Path, evaluated: dict[str, Any]) -> list[Path]:
    """``ground_truth.json`` (COCO dataset: amodal masks as RLE) and ``detections_<label>.json`` (COCO
    results, score = the object's score) per model; any COCO tool reads them."""
    files: list[Path] = []
    for label, acc in evaluated["records"].items():
        coco = acc.coco_dicts()
        if coco is None:
            continue
        gt, dt = coco
        if not files:  # the same scenes for every model
            files.append(write_text_atomic(out_dir / "ground_truth.json", json.dumps(gt)))
        files.append(write_text_atomic(out_dir / f"detections_{safe_name(label)}.json", json.dumps(dt)))
    return files


def metrics_csv(summaries: dict[str, dict[str, float]]) -> str:
    names: list[str] = []
    for summary in summaries.values():
        names.extend(k for k in summary if k not in names)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["metric", *summaries])
    for name in names:
        writer.writerow([name, *(_cell(s.get(name)) for s in summaries.values())])
    return buffer.getvalue()


def rows_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def safe_name(label: str) -> str:
    """A label usable in file names and MLflow keys: ``sas@champion`` → ``sas_champion``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def overlay_sheet_png(strips: dict[str, dict[int, bytes]], rows: int) -> bytes | None:
    """One row per scene: image | truth, then per model: prediction | uncertainty (first ``rows`` scenes
    that every model scored)."""
    common = sorted(set.intersection(*(set(s) for s in strips.values())))[:rows] if strips else []
    if not common:
        return None
    sheet_rows = []
    for scene_id in common:
        row: list[np.ndarray] = []
        for i, per_scene in enumerate(strips.values()):
            strip = decode_png(per_scene[scene_id])
            w = strip.shape[1] // 4
            panels = [strip[:, j * w : (j + 1) * w] for j in range(4)]
            row.extend(panels if i == 0 else panels[2:])
        sheet_rows.append(row)
    scale = max(1, 128 // sheet_rows[0][0].shape[0])
    return encode_png(overlay_sheet(sheet_rows, scale=scale))


def write_report(
    out_dir: Path, evaluated: dict[str, Any], sources: list[Any], request: EvalRequest
) -> list[Path]:
    """metrics.md/csv, per_image_<label>.csv, overlays.png and summary.json in ``out_dir``."""
    summaries = evaluated["summaries"]
    files = [
        write_text_atomic(out_dir / "metrics.md", _full_markdown(summaries, sources, request)),
        write_text_atomic(out_dir / "metrics.csv", metrics_csv(summaries)),
    ]
    for label, acc in evaluated["records"].items():
        files.append(
            write_text_atomic(out_dir / f"per_image_{safe_name(label)}.csv", rows_csv(acc.image_rows()))
        )
    sheet = overlay_sheet_png(evaluated["strips"], request.sheet_rows)
    if sheet is not None:
        files.append(write_bytes_atomic(out_dir / "overlays.png", sheet))
    calibration = calibration_png(summaries)
    if calibration is not None:
        files.append(write_bytes_atomic(out_dir / "calibration.png", calibration))
    summary = {
        "data": request.data,
        "split": request.split,
        "limit": request.limit,
        "models": {s.label: s.uri for s in sources},
        "summaries": summaries,
    }
    files.append(write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, default=str)))
    return files


def _full_markdown(summaries: dict[str, dict[str, float]], sources: list[Any], request: EvalRequest) -> str:
    lines = ["Models:", ""] + [f"- `{s.label}`: `{s.uri}`" for s in sources] + [""]
    lines.append(AP_LEGEND)
    lines.append("")
    lines.append(
        "Overlay sheet columns: image | ground-truth layers | then per model: predicted layers "
        "(object outlines white) | ensemble-variance heat map. Layer colours front to back: red, green, "
        "blue, orange, purple."
    )
    return "\n".join(lines) + "\n\n" + summary_markdown(summaries, title=request.title())


def sweep_markdown(rows: list[dict[str, Any]], label: str) -> str:
    keys = ("setting", "unet_passes_per_image", "miou_free", "layer_count_acc", "ap50", "images", "seconds")
    lines = [f"### mIoU against UNet passes per image ({label})", ""]
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|---|" + "---:|" * (len(keys) - 1))
    for row in rows:
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def calibration_png(summaries: dict[str, dict[str, float]]) -> bytes | None:
    """Pixel error rate by ensemble-variance bin (``unc/err_rate/bin{i}``), one bar group per model,
    with each bin's share of the pixels; ``None`` when no summary has calibration numbers."""
    edges = UNCERTAINTY_BIN_EDGES
    bins = len(edges) - 1
    if not any(f"unc/frac/bin{i}" in s for s in summaries.values() for i in range(bins)):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["0"] + [f"{edges[i]:.2g}-{edges[i + 1]:.2g}" for i in range(1, bins)]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    width = 0.8 / max(1, len(summaries))
    for j, (label, summary) in enumerate(summaries.items()):
        xs = [i + j * width for i in range(bins)]
        rates = [summary.get(f"unc/err_rate/bin{i}", float("nan")) for i in range(bins)]
        bars = ax.bar(xs, rates, width=width, label=label)
        for bar, i in zip(bars, range(bins), strict=True):
            share = summary.get(f"unc/frac/bin{i}", 0.0)
            ax.annotate(
                f"{100 * share:.0f}%",
                (bar.get_x() + bar.get_width() / 2, bar.get_height() or 0),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(bins)], names)
    ax.set_xlabel("ensemble variance of the pixel (bin; label above a bar: share of pixels)")
    ax.set_ylabel("pixel error rate")
    ax.set_title("calibration: error rate by ensemble-variance bin")
    ax.set_ylim(0, 1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return figure_png(fig)


def sweep_plot_png(rows: list[dict[str, Any]], label: str) -> bytes:
    """mIoU (free-running) against UNet passes per image, log x; one point per sweep setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for family, marker in (("ddpm", "s"), ("ddim", "o"), ("dpmpp2m", "^")):
        points = sorted(
            (r["unet_passes_per_image"], r["miou_free"], r["setting"]) for r in rows if r["sampler"] == family
        )
        if not points:
            continue
        xs, ys, names = zip(*points, strict=True)
        ax.plot(xs, ys, marker=marker, label=family)
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("UNet passes per image (mean)")
    ax.set_ylabel("mIoU (free-running)")
    ax.set_title(f"mIoU vs passes: {label}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return figure_png(fig)


def write_sweep(out_dir: Path, rows: list[dict[str, Any]], label: str) -> list[Path]:
    return [
        write_text_atomic(out_dir / "sweep.md", sweep_markdown(rows, label)),
        write_text_atomic(out_dir / "sweep.csv", rows_csv(rows)),
        write_bytes_atomic(out_dir / "sweep.png", sweep_plot_png(rows, label)),
    ]


def log_to_mlflow(
    tracking_uri: str,
    request: EvalRequest,
    sources: list[Any],
    result: EvalResult,
    manifest: Manifest | None = None,
) -> str:
    """One run in ``request.experiment``: params (data, models, sampler), metrics, the report files
    (``result.files``); the dataset as an input and, for registered models, the results linked to
    them (:func:`link_to_models`).

    With one model the metric keys are plain (``miou_free``), so runs compare across evaluations; with
    several they are prefixed by the model label (``deterministic/miou_free``). Sweep rows become
    ``sweep/<setting>/miou_free`` and ``.../unet_passes``.
    """
    import mlflow

    experiment_id = setup_mlflow(tracking_uri, request.experiment)
    params: dict[str, Any] = {
        "data": request.data,
        "split": request.split,
        "limit": request.limit or "all",
        "seed": request.seed,
        "teacher_forced": request.teacher_forced,
        "mode": "sweep_passes" if request.sweep_passes else "evaluate",
        **{f"sampler.{k}": v for k, v in request.sampler.items()},
    }
    for source in sources:
        prefix = f"model.{safe_name(source.label)}"
        params[f"{prefix}.uri"] = source.uri
        for key, value in model_summary(source).items():
            params[f"{prefix}.{key}"] = value
    metrics: dict[str, float] = {}
    for label, summary in result.summaries.items():
        prefix = "" if len(sources) == 1 else f"{safe_name(label)}/"
        metrics.update({f"{prefix}{k}": float(v) for k, v in summary.items() if np.isfinite(v)})
    for row in result.sweep:
        key = safe_name(row["setting"])
        metrics[f"sweep/{key}/miou_free"] = float(row["miou_free"])
        metrics[f"sweep/{key}/unet_passes"] = float(row["unet_passes_per_image"])
    with mlflow.start_run(experiment_id=experiment_id, run_name=request.run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        for path in result.files:
            mlflow.log_artifact(str(path), "report")
        if manifest is not None:
            link_to_models(run.info.run_id, request, sources, result, manifest)
        return run.info.run_id


def link_to_models(
    run_id: str, request: EvalRequest, sources: list[Any], result: EvalResult, manifest: Manifest
) -> None:
    """Inside the active evaluation run: log the dataset as input and, for each ``models:/`` source,
    its metrics linked to the registry version's logged model (``<split>/<metric>``, MLflow 3
    ``log_metrics(model_id=..., dataset=...)``) and the version tag ``eval.<split>.run_id``. A version
    without a logged model (registered from a run path) gets its headline metrics as version tags."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    dataset = lineage.dataset_for(request.data, manifest)
    tags = {**lineage.dataset_tags(manifest), "sas.split": request.split}
    mlflow.log_input(dataset, context="evaluation", tags=tags)
    client = MlflowClient()
    for source in sources:
        summary = result.summaries.get(source.label)
        try:
            version = lineage.registered_version(source.uri)
        except MlflowException:
            version = None
        if version is None or not summary:
            continue
        metrics = {f"{request.split}/{k}": float(v) for k, v in summary.items() if np.isfinite(v)}
        model_id = lineage.logged_model_id(version)
        if model_id:
            mlflow.log_metrics(metrics, model_id=model_id, dataset=dataset)
        else:
            for key in HEADLINE:
                if f"{request.split}/{key}" in metrics:
                    client.set_model_version_tag(
                        version.name,
                        version.version,
                        f"eval.{request.split}.{key}",
                        repr(metrics[f"{request.split}/{key}"]),
                    )
        client.set_model_version_tag(version.name, version.version, f"eval.{request.split}.run_id", run_id)
        client.set_model_version_tag(
            version.name,
            version.version,
            f"eval.{request.split}.dataset_digest",
            lineage.manifest_digest(manifest),
        )
