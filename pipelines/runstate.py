"""Driver-side bookkeeping of a training run: resume compatibility, MLflow params/status, error text.

A run lives in ``<storage>/<name>/`` (Ray Train's run directory). Next to Ray's own files the driver
keeps ``sas_run.json`` with the model config the run was started with; a rerun whose model
architecture differs is refused with a one-line error before anything is touched, so saved
checkpoints are never overwritten by an incompatible model. Training-schedule fields (``train.*``,
``sampler.*``) and the config's ``name`` may change between reruns, e.g. more steps.

Which checkpoint a rerun resumes from is asked of Ray through its public ``Result.from_path``
(the same record Ray Train itself restores from), never by reading Ray's files; it works for runs
of every age, whatever their checkpoint folders are called.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.common import UserError, flatten_dict

if TYPE_CHECKING:
    from synth.schema import Manifest

RUN_CONFIG_FILE = "sas_run.json"
MUTABLE_SECTIONS = ("name", "train", "sampler")


def run_dir(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}" if "://" in storage else str(Path(storage) / name)


def _filesystem(path: str) -> tuple[Any, str]:
    from pyarrow import fs

    if "://" in path:
        from synth.reader import open_filesystem

        return open_filesystem(path)
    return fs.LocalFileSystem(), path


def _read_text(path: str) -> str | None:
    from pyarrow import fs

    filesystem, inner = _filesystem(path)
    if filesystem.get_file_info(inner).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(inner) as stream:
        return stream.read().decode()


def _write_text(path: str, text: str) -> None:
    filesystem, inner = _filesystem(path)
    filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(inner) as stream:
        stream.write(text.encode())


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields a checkpoint's tensors depend on (all but the training/sampling schedule)."""
    normalised = json.loads(json.dumps(config))  # tuples and lists compare equal
    return flatten_dict({k: v for k, v in normalised.items() if k not in MUTABLE_SECTIONS})


def resume_checkpoint(directory: str) -> Any | None:
    """The ``ray.train.Checkpoint`` Ray Train resumes the run in ``directory`` from (its newest
    reported one), or ``None`` when there is no run there to resume (or one without checkpoints)."""
    import ray.train

    filesystem, path = _filesystem(directory)
    ray_train_logger = logging.getLogger("ray.train")
    level = ray_train_logger.level
    ray_train_logger.setLevel(logging.WARNING)  # Ray says "a run snapshot was found" again in fit()
    try:
        return ray.train.Result.from_path(path, storage_filesystem=filesystem).checkpoint
    except RuntimeError:  # no such folder, or no Ray Train run in it
        return None
    finally:
        ray_train_logger.setLevel(level)


def check_compatible(directory: str, cfg: Any) -> Any | None:
    """Return the checkpoint the run in ``directory`` resumes from (``None``: a new run); raise
    ``UserError`` if the saved run's model architecture differs from ``cfg``'s."""
    saved = _read_text(f"{directory}/{RUN_CONFIG_FILE}")
    if saved is None:
        return resume_checkpoint(directory)
    before = architecture(json.loads(saved)["model_config"])
    after = architecture(cfg.to_dict())
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        first = changed[0]
        raise UserError(
            f"cannot resume run {directory}: its model config differs ({first}: {before.get(first)!r} -> "
            f"{after.get(first)!r}{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}); "
            "use another --name or --storage for a new run"
        )
    return resume_checkpoint(directory)


def checkpoint_candidates(checkpoint: Any) -> list[Any]:
    """``checkpoint`` (the one Ray Train resumes from), then the older ``checkpoint_*`` folders of the
    same run, newest first, so a worker can fall back when the newest one is unreadable.

    They are named ``checkpoint_step<NNNNNNNN>`` (``train_loop.checkpoint_dir_name``); runs written
    before that have Ray's ``checkpoint_<YYYY-MM-DD_HH-MM-SS.ffffff>``, which sort before every step
    name, so in both (and mixed) runs name order is time order.
    """
    from pyarrow import fs
    from ray.train import Checkpoint

    filesystem = checkpoint.filesystem
    parent, _, current = checkpoint.path.rstrip("/").rpartition("/")
    try:
        entries = filesystem.get_file_info(fs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return [checkpoint]
    names = [e.base_name for e in entries if e.type == fs.FileType.Directory]
    older = sorted((n for n in names if n.startswith("checkpoint_") and n < current), reverse=True)
    return [checkpoint] + [Checkpoint(f"{parent}/{name}", filesystem=filesystem) for name in older]


def save_run_config(directory: str, cfg: Any) -> None:
    if _read_text(f"{directory}/{RUN_CONFIG_FILE}") is None:
        _write_text(f"{directory}/{RUN_CONFIG_FILE}", json.dumps({"model_config": cfg.to_dict()}, indent=2))


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
    from pipelines.eval_report import figure_png

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
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished training run
        print(f"[train] warning: learning curve not logged ({short_error(exc)})", flush=True)
