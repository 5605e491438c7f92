"""Starting or joining Ray, the same way for every entry point (``synth``'s and ``pipelines``').

Two runtime modes, chosen from the environment and never from code edits:

- **embedded** (no cluster configured): a private Ray on this machine (``address="local"``; token
  authentication off unless ``RAY_AUTH_MODE`` says otherwise). Its workers import the project from
  this checkout (the repository root is put on ``PYTHONPATH``).
- **cluster**: ``RAY_ADDRESS`` is set, or the process runs as a ``ray job submit`` entrypoint (Ray
  then sets ``RAY_JOB_CONFIG_JSON_ENV_VAR`` and ``RAY_ADDRESS`` for the driver). The driver connects
  to the running cluster. Under ``ray job submit --working-dir .`` the job's runtime env already
  ships the repository to every worker; when a plain ``python`` driver connects through
  ``RAY_ADDRESS`` instead, ``init_ray`` ships ``synth``, ``sas_model`` and ``pipelines`` as
  ``py_modules`` so that workers on other nodes can import them.

Ray itself is imported only inside ``init_ray``, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("synth", "sas_model", "pipelines")


def in_ray_job() -> bool:
    """True when this process is the entrypoint of a ``ray job submit`` job."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def cluster_mode() -> bool:
    """True when a Ray cluster is configured (``RAY_ADDRESS`` or a job entrypoint)."""
    return bool(os.environ.get("RAY_ADDRESS")) or in_ray_job()


def project_runtime_env() -> dict[str, Any]:
    """Runtime env that lets remote workers import the project's packages (``py_modules``)."""
    return {"py_modules": [str(REPO_ROOT / name) for name in PROJECT_PACKAGES]}


def init_ray(num_cpus: int | None = None, quiet: bool = True, include_dashboard: bool | None = None) -> str:
    """Start or connect to Ray; returns ``"embedded"`` or ``"cluster"``.

    ``num_cpus`` and ``include_dashboard`` apply to an embedded Ray only (``None``: Ray's defaults).
    Already-initialised Ray (tests call ``ray.init(address="local", ...)`` themselves) is reused.
    """
    import ray

    if ray.is_initialized():
        return "cluster" if cluster_mode() else "embedded"
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:  # workers on this machine import the checkout, installed or not
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *paths])
    log_level = "WARNING" if quiet else "INFO"
    if in_ray_job():
        ray.init(logging_level=log_level)  # the job's runtime env (working_dir) applies to workers
        return "cluster"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=project_runtime_env(), logging_level=log_level)
        return "cluster"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster: no token files
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, logging_level=log_level)
    return "embedded"
