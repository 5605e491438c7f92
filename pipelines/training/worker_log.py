"""Rank-0 progress lines and MLflow logging from inside Ray Train workers.

The driver creates (or, on resume, finds) the MLflow run and passes its id and tracking URI in the
loop config; rank 0 logs metrics and artifacts into that run with an ``MlflowClient``. Other ranks
get a disabled logger, so nothing is logged twice.

A tracking server that goes down never stops or stalls training: the worker's MLflow client gets a
short request budget (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` s
unless set; MLflow's defaults retry one call for about 4 minutes), metrics that cannot be sent are
kept in memory (up to ``MAX_BUFFERED_METRICS``, oldest dropped first) and sent, in order, with the
first call that succeeds after the outage. One warning line marks the outage and one line the
recovery. Artifacts (validation sheets) logged during the outage are skipped with that warning.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

MAX_BUFFERED_METRICS = 50_000
WORKER_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


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

    def __init__(self, tracking_uri: str | None, run_id: str | None, enabled: bool) -> None:
        self.enabled = enabled
        self.run_id = run_id
        self.last_train_metrics: dict[str, float] = {}
        self._client = None
        self._warned = False
        self._pending: list[Any] = []  # metrics not yet accepted by the server, oldest first
        self.dropped_metrics = 0
        self._start = time.time()
        if enabled and self.run_id:
            import os

            from mlflow.tracking import MlflowClient

            for key, value in WORKER_HTTP_DEFAULTS.items():  # this worker process only
                os.environ.setdefault(key, value)
            self._client = MlflowClient(tracking_uri=tracking_uri)

    def _safe(self, what: str, fn, *args, **kwargs) -> bool:
        if self._client is None:
            return False
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking must never kill training
            if not self._warned:
                first = " ".join(str(exc).split())[:200]
                say(
                    f"[train] warning: MLflow {what} failed ({type(exc).__name__}: {first}); training goes "
                    "on, metrics are buffered until the server answers"
                )
                self._warned = True
            return False
        if self._warned:
            say("[train] MLflow answers again; buffered metrics sent")
            self._warned = False
        return True

    def _send_metrics(self, batch: list[Any]) -> None:
        """Send buffered + new metrics in order (1000 per request); keep what fails for later."""
        self._pending.extend(batch)
        if len(self._pending) > MAX_BUFFERED_METRICS:
            self.dropped_metrics += len(self._pending) - MAX_BUFFERED_METRICS
            del self._pending[: len(self._pending) - MAX_BUFFERED_METRICS]
        while self._pending:
            chunk = self._pending[:1000]
            if not self._safe("log_batch", self._client.log_batch, self.run_id, metrics=chunk):
                return
            del self._pending[: len(chunk)]

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
        self._send_metrics(batch)

    def artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and self._client is not None:
            self._safe("log_artifact", self._client.log_artifact, self.run_id, str(local_path), artifact_path)

    def image(self, local_path: str | Path, key: str, step: int) -> None:
        """An image with its step (MLflow's image grid in the run page, one per validation)."""
        if self.enabled and self._client is not None:
            from PIL import Image

            with Image.open(local_path) as picture:
                picture.load()
                self._safe("log_image", self._client.log_image, self.run_id, picture, key=key, step=step)

    def close(self) -> None:
        """Last attempt to send buffered metrics, then drop the client."""
        if self._client is not None and self._pending:
            self._send_metrics([])
            if self._pending:
                say(f"[train] warning: {len(self._pending)} metrics could not be sent to MLflow")
        self._client = None
