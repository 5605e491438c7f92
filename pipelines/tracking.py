"""Rank-0 progress lines and MLflow logging from inside Ray Train workers.

The driver creates (or, on resume, finds) the MLflow run and passes its id and tracking URI in the
loop config; rank 0 logs metrics and artifacts into that run with an ``MlflowClient``. Other ranks
get a disabled logger, so nothing is logged twice. An unreachable tracking server only costs a
warning: training goes on.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any


def say(message: str) -> None:
    """Write one line to stdout, bypassing Ray Train's print patch (which shows every print twice)."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def quiet_ray_train_reports() -> None:
    """Silence Ray Train's per-report INFO line (it dumps the whole metrics dict on every report)."""
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except Exception:  # internal module moved: keep the noise rather than fail
        pass


class RankZeroLogger:
    """Prints ``[train] step ...`` progress lines and mirrors metrics/artifacts to MLflow (rank 0 only)."""

    def __init__(self, loop_cfg: dict[str, Any], enabled: bool) -> None:
        self.enabled = enabled
        self.run_id: str | None = loop_cfg.get("mlflow_run_id")
        self.last_train_metrics: dict[str, float] = {}
        self._client = None
        self._warned = False
        self._start = time.time()
        if enabled and self.run_id:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=loop_cfg["mlflow_uri"])

    def _safe(self, what: str, fn, *args, **kwargs) -> None:
        if self._client is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking must never kill training
            if not self._warned:
                say(f"[train] warning: MLflow {what} failed ({type(exc).__name__}: {exc}); continuing")
                self._warned = True

    def progress(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        """One progress line: step, loss, lr, samples/s, data-wait fraction; also logged to MLflow."""
        self.last_train_metrics = dict(metrics)
        if not self.enabled:
            return
        elapsed = time.time() - self._start
        say(
            f"[train] step {step}/{total_steps} loss {metrics['train/loss']:.4f} "
            f"lr {metrics['train/lr']:.2e} {metrics['train/samples_per_s']:.1f} samples/s "
            f"data-wait {100 * metrics['train/data_wait_frac']:.1f}% "
            f"epoch {int(metrics['train/epoch'])} elapsed {elapsed:.0f}s"
        )
        self.metrics(step, metrics)

    def metrics(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled or self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(key=k, value=float(v), timestamp=now, step=step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self._safe("log_batch", self._client.log_batch, self.run_id, metrics=batch)

    def artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and self._client is not None:
            self._safe("log_artifact", self._client.log_artifact, self.run_id, str(local_path), artifact_path)

    def close(self) -> None:
        self._client = None
