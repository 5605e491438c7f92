"""A training run's MLflow record, written by the driver: params and dataset at the start, the final
checkpoint, the status at the end, the learning-curve plot, and the one-line error text of a failure.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.cli.files import figure_png
from pipelines.tracking.store import flatten_dict

if TYPE_CHECKING:
    from synth.schema import Manifest


def log_run_start(run_id: str, run: Any, created: bool, manifest: Manifest, preset: str) -> None:
    """Params on a new run: the full flattened model config (``config.*``), the run's choices
    (``run.*``, ``RunConfig.params``: no credentials) and the dataset schema; the config JSON
    artifact on every (re)start."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    cfg = run.model
    config = cfg.to_dict()
    if created:
        params = {f"config.{k}": v for k, v in flatten_dict(config).items()}
        params.update(run.params())
        params.update({"run.preset": preset, "data.schema_version": manifest.schema_version})
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            client.log_batch(run_id, params=items[start : start + 100])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("config.json" if created else f"config_resume_{stamp}.json")
        path.write_text(json.dumps(config, indent=2))
        client.log_artifact(run_id, str(path))
        (Path(tmp) / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2, default=str))
        client.log_artifact(run_id, str(Path(tmp) / "manifest.json"), "data")
    client.set_tag(run_id, "sas.status", "running")
    client.update_run(run_id, status="RUNNING")


def log_final_checkpoint(run_id: str, checkpoint_dir: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient().log_artifacts(run_id, checkpoint_dir, "checkpoint")


def end_run(run_id: str, status: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, "sas.status", status.lower())
    client.set_terminated(run_id, status)


def learning_curve_png(history: dict[str, list[tuple[int, float]]]) -> bytes | None:
    """Validation IoU per layer against step (``val/iou_free/layer{k}``, ``val/iou_tf/layer{k}``, the
    means); ``history`` maps metric key → ``[(step, value)]``. ``None`` when there is nothing to draw."""

    keys = sorted(
        k for k in history if k.startswith(("val/iou_free/", "val/iou_tf/", "val/miou")) and history[k]
    )
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
    for ax, kind, title in ((axes[0], "free", "free-running"), (axes[1], "tf", "teacher-forced")):
        for key in keys:
            if f"iou_{kind}" not in key:
                continue
            points = sorted(history[key])
            style = {"linewidth": 2.5, "color": "black"} if key.startswith("val/miou") else {}
            ax.plot(
                [s for s, _ in points],
                [v for _, v in points],
                marker="o",
                markersize=3,
                label=key.split("/")[-1] if "/layer" in key or "terminal" in key else "mean",
                **style,
            )
        ax.set_title(f"validation IoU per layer, {title}")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("IoU")
    axes[0].set_ylim(0, 1)
    return figure_png(fig)


def log_learning_curve(run_id: str) -> None:
    """``learning_curve.png`` from the run's validation metrics, as an artifact (best effort)."""
    try:
        import mlflow

        client = mlflow.MlflowClient()
        run = client.get_run(run_id)
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in run.data.metrics
            if key.startswith(("val/iou_free/", "val/iou_tf/", "val/miou"))
        }
        png = learning_curve_png(history)
        if png is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "learning_curve.png"
                path.write_bytes(png)
                client.log_artifact(run_id, str(path))
    except Exception as exc:
        print(f"[train] warning: learning curve not logged ({short_error(exc)})", flush=True)


def short_error(error: BaseException) -> str:
    """One line naming the root cause of a Ray Train failure."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, root = sorted(failures.items())[0]
        text = f"rank {rank}: {type(root).__name__}: {root}"
    else:
        root = getattr(error, "controller_failure", None) or error
        text = f"{type(root).__name__}: {root}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
