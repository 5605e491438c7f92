"""Helpers for the infra tests: drive ``infra/stack.py``, write datasets to S3, submit Ray jobs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "infra"))

import stack  # noqa: E402


def run_stack(state_dir: Path, *args: str, timeout: float = 900, prefix: list[str] | None = None):
    """``python infra/stack.py --state-dir D ARGS`` (optionally behind ``prefix``, e.g. ``ip netns exec``)."""
    command = [*(prefix or []), sys.executable, "infra/stack.py", "--state-dir", str(state_dir), *args]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_", "MLFLOW_TRACKING"))
    }
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def stack_up(state_dir: Path, *extra: str, prefix: list[str] | None = None) -> dict:
    ports = ["--s3-port", "0", "--mlflow-port", "0", "--ray-port", "0", "--dashboard-port", "0"]
    done = run_stack(state_dir, "up", *ports, *extra, prefix=prefix)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    state = stack.load_state(state_dir)
    return {"state": state, "env": client_env(state_dir), "urls": stack.urls(state), "up_output": done.stdout}


def client_env(state_dir: Path) -> dict[str, str]:
    """The test process' environment plus the stack's client variables (no secret values)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_", "MLFLOW_TRACKING"))
    }
    env.update(stack.client_env(state_dir, stack.load_state(state_dir)))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def new_state_dir() -> Path:
    """A state dir outside pytest's tmp tree (other pytest sessions of the same user prune that tree)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="sas-stack-state-")) / "state"


def stack_down(state_dir: Path, prefix: list[str] | None = None, keep: bool = False) -> None:
    """Stop the stack; delete its state and temp dirs unless ``keep`` (then say where the logs are)."""
    import shutil

    tmp = stack.load_state(state_dir).get("tmp")
    run_stack(state_dir, "down", timeout=180, prefix=prefix)
    if keep:
        print(f"stack logs kept: {state_dir}/logs and Ray's in {tmp}/ray")
        return
    shutil.rmtree(state_dir.parent, ignore_errors=True)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def write_s3_dataset(uri: str, endpoint: str, n: int = 48, shard_size: int = 24, seed: int = 0) -> None:
    """Render ``n`` 64x64 scenes straight into ``uri`` with synth's shard writer (no Ray)."""
    from synth.generate import build_parser, job_from_args, write_manifest
    from synth.shards import write_shard

    args = build_parser().parse_args(
        ["--n", str(n), "--out", uri, "--shard-size", str(shard_size), "--seed", str(seed)]
    )
    job = job_from_args(args)
    stats = {index: write_shard(uri, endpoint, job, index) for index in range(job.num_shards)}
    write_manifest(uri, endpoint, job, stats)


def submit(env: dict, *entrypoint: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``ray job submit --working-dir . -- ENTRYPOINT`` (address and token from ``env``); waits."""
    command = [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--", *entrypoint]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def leaked(secrets: list[str], texts: dict[str, bytes | str]) -> list[str]:
    """Names of the texts that contain any secret value."""
    found = []
    for name, text in texts.items():
        data = text.encode() if isinstance(text, str) else text
        if any(secret.encode() in data for secret in secrets if len(secret) >= 8):
            found.append(name)
    return found
