"""The stack with ``--backend postgres``: MLflow's runs in a local PostgreSQL, artifacts in S3.

Uses Debian's PostgreSQL server binaries (``apt-get install postgresql``) and ``psycopg2``; skipped
with the reason when either is missing. The database password lives in 0600 files only: it is on
no process' command line and in no log.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from infra_support import leaked, new_state_dir, stack, stack_down, stack_up

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _missing() -> str | None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    if not any(Path(d, "postgres").exists() for d in stack.PG_BIN_DIRS) and not shutil.which("postgres"):
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running PostgreSQL as root needs runuser to drop to the postgres user"
    return None


def test_mlflow_on_postgres_with_s3_artifacts(tmp_path):
    if _missing():
        pytest.skip(_missing())
    import boto3
    import psycopg2
    from mlflow.tracking import MlflowClient

    state_dir = new_state_dir()
    ok = False
    try:
        info = stack_up(state_dir, "--backend", "postgres", "--no-ray")
        assert set(info["state"]["services"]) == {"s3", "postgres", "mlflow"}
        client = MlflowClient(info["urls"]["mlflow"])
        experiment_id = client.create_experiment("pg")
        run_id = client.create_run(experiment_id, run_name="on-postgres").info.run_id
        client.log_param(run_id, "backend", "postgres")
        client.log_metric(run_id, "loss", 0.25, step=3)
        note = tmp_path / "note.txt"
        note.write_text("artifact through the server")
        client.log_artifact(run_id, str(note))

        password = (state_dir / "pgpass_password").read_text().strip()
        state = info["state"]
        with (
            psycopg2.connect(
                host=state["host"],
                port=state["ports"]["postgres"],
                user="mlflow",
                dbname="postgres",
                password=password,
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute("select name from runs where run_uuid = %s", (run_id,))
            assert cursor.fetchone() == ("on-postgres",)
        key, secret = stack.s3_credentials(state_dir)
        s3 = boto3.client(
            "s3", endpoint_url=info["urls"]["s3"], aws_access_key_id=key, aws_secret_access_key=secret
        )
        objects = [o["Key"] for o in s3.list_objects_v2(Bucket="sas-mlflow").get("Contents", [])]
        assert any(k.endswith(f"{run_id}/artifacts/note.txt") for k in objects), objects

        texts = {p.name: p.read_bytes() for p in (state_dir / "logs").iterdir()}
        for record in state["services"].values():
            for pid in stack._ours(record):
                texts[f"cmdline {pid}"] = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert not leaked(stack.secret_values(state_dir), texts)
        ok = True
    finally:
        stack_down(state_dir, keep=not ok)
