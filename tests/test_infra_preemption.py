"""A spot node told it will be reclaimed: the step of the notice is checkpointed, the restart resumes there.

A local two-node Ray (``ray.cluster_utils.Cluster``: a head with no CPUs and a "spot" node with the
training worker) runs ``pipelines/train.py``. Mid-run the test sends the reclaim notice the way
the autoscaler, KubeRay or an operator does: ``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION``
with a deadline, and adds a replacement node. Ray Train tells the worker
(``ray.train.get_preemption_info``); the worker checkpoints at that step and trains on; at the
deadline Ray Train restarts the worker group on the replacement node, charged to the preemption
budget, and it resumes from the checkpoint of the notice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_support import make_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DRAIN_DEADLINE_S = 8  # room for one step and a checkpoint on a busy 2-core machine


def _wait_for(log: Path, pattern: str, process: subprocess.Popen, timeout_s: float) -> re.Match:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        assert process.poll() is None, log.read_text()[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} in {timeout_s} s:\n{log.read_text()[-4000:]}")


def _drain_for_preemption(address: str, node_id: str, env: dict) -> None:
    """What a spot interruption handler runs on the node: Ray's drain with reason preemption."""
    subprocess.run(
        [
            str(BIN / "ray"),
            "drain-node",
            "--address",
            address,
            "--node-id",
            node_id,
            "--reason",
            "DRAIN_NODE_REASON_PREEMPTION",
            "--reason-message",
            "spot instance reclaimed (test)",
            "--deadline-remaining-seconds",
            str(DRAIN_DEADLINE_S),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_preemption_notice_checkpoints_that_step_and_the_restart_resumes_from_it(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "0.5")  # Ray's default polls every 5 s
    data = make_dataset(tmp_path / "data", n=24, shard_size=12)
    storage = tmp_path / "runs"
    log = tmp_path / "train.log"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        spot = cluster.add_node(num_cpus=2)
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, str(REPO / "pipelines" / "train.py")),
                    *("--data", str(data), "--storage", str(storage), "--name", "spot"),
                    *("--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--no-register"),
                    # more steps than any machine runs before the reclaim deadline; stopped once resumed
                    *("--steps", "100000", "--batch", "8", "--ckpt-every", "100000", "--val-every", "0"),
                    # a restart charged to --max-failures would end the run: preemptions have their own budget
                    *("--log-every", "1", "--max-failures", "0"),
                ],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for(log, r"\[train\] step 2/", process, timeout_s=240)
            cluster.add_node(num_cpus=2)  # the replacement the autoscaler would bring
            _drain_for_preemption(cluster.address, spot.node_id, env)
            notice = _wait_for(log, r"\[train\] preemption notice at step (\d+)", process, timeout_s=60)
            step = int(notice.group(1))
            resumed = rf"\[train\] resumed from step {step} "
            _wait_for(log, resumed, process, timeout_s=240)
            trains_on = rf"{resumed}(.|\n)*\[train\] step {step + 1}/"
            _wait_for(log, trains_on, process, timeout_s=120)
        finally:
            process.terminate()  # the driver we started; the cluster's processes go with cluster.shutdown()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
    finally:
        cluster.shutdown()

    checkpoints = sorted(p.name for p in (storage / "spot").glob("checkpoint_*") if p.is_dir())
    assert checkpoints == [f"checkpoint_step{step:08d}"]  # saved at the step of the notice, and only there
