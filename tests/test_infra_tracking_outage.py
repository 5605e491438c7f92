"""Rank 0's MLflow logger while the tracking server is unreachable (fast, no server process).

The slow stack test repeats this against a real ``mlflow server`` that is stopped and restarted.
"""

from __future__ import annotations

import time

from train_support import free_port


def test_unreachable_server_costs_no_time_and_metrics_arrive_later(tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.training.worker_log import RankZeroLogger

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    store = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = store.create_run(store.create_experiment("outage")).info.run_id
    down = f"http://127.0.0.1:{free_port()}"
    logger = RankZeroLogger(down, run_id, enabled=True)

    started = time.monotonic()
    for step in (1, 2, 3):
        logger.metrics(step, {"train/loss": float(step)})
    assert time.monotonic() - started < 10  # MLflow's default retries would block ~4 min per call
    assert len(logger._pending) == 3
    out = capsys.readouterr().out
    assert out.count("warning: MLflow log_batch failed") == 1 and "buffered" in out

    logger._client = store  # the server answers again
    logger.metrics(4, {"train/loss": 4.0})
    logger.close()
    assert sorted(m.step for m in store.get_metric_history(run_id, "train/loss")) == [1, 2, 3, 4]
    assert "MLflow answers again" in capsys.readouterr().out
