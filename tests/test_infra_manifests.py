"""The scale-out configs (cluster launcher, KubeRay) and the stack CLI: parsed and checked, no cloud.

These pin the fields that make a deployment work or leak: the training entrypoint and its s3:// and
MLflow arguments, one image (Ray 2.60) everywhere, GPUs on the workers, no training on the head,
token auth, secrets only by reference, and nothing exposed to the outside.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
RAY_VERSION = "2.60.0"


def load(path: str) -> dict:
    return yaml.safe_load((INFRA / path).read_text())


def train_args(entrypoint: str) -> dict[str, str]:
    words = shlex.split(entrypoint)
    assert words[:2] == ["python", "pipelines/train.py"], words[:2]
    pairs = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            pairs[word] = "" if nxt.startswith("--") else nxt
    return pairs


def check_train_entrypoint(entrypoint: str) -> dict[str, str]:
    from pipelines.train import build_parser

    args = train_args(entrypoint)
    assert args["--data"].startswith("s3://") and args["--storage"].startswith("s3://")
    assert re.match(r"https?://", args["--mlflow-uri"])
    assert args["--gpu"] == "on" and int(args["--workers"]) >= 2
    build_parser().parse_args(shlex.split(entrypoint)[2:])  # every flag exists in train.py
    return args


def walk_env(node) -> list[dict]:
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            found.extend(node["env"])
        for value in node.values():
            found.extend(walk_env(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(walk_env(value))
    return found


def test_kuberay_rayjob_runs_train_on_s3_with_mlflow_and_no_secrets():
    job = load("k8s/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    check_train_entrypoint(job["spec"]["entrypoint"])
    cluster_name = load("k8s/raycluster.yaml")["metadata"]["name"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster_name}
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/sas"
    assert not any(re.search("KEY|SECRET|TOKEN|PASSWORD", k) for k in runtime_env.get("env_vars", {}))
    for var in walk_env(job):
        if re.search("KEY|SECRET|TOKEN", var["name"]):
            assert "value" not in var and "secretKeyRef" in var["valueFrom"], var


def test_kuberay_raycluster_gpu_workers_cpu_free_head_one_image_token_auth():
    cluster = load("k8s/raycluster.yaml")
    spec = cluster["spec"]
    assert cluster["kind"] == "RayCluster" and spec["rayVersion"] == RAY_VERSION
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # not exposed outside the cluster
    head_container = head["template"]["spec"]["containers"][0]
    images = {head_container["image"]}
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    images.add(worker["image"])
    assert len(images) == 1
    for kind in ("requests", "limits"):
        assert int(worker["resources"][kind]["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    for container in (head_container, worker):
        env = {v["name"]: v for v in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
        for name in ("RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
            assert "secretKeyRef" in env[name]["valueFrom"] and "value" not in env[name]


def test_dockerfile_image_matches_the_ray_version():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-gpu$", text, re.M)
    import ray

    assert ray.__version__ == RAY_VERSION, "bump the image tags with the pinned Ray"


def test_aws_launcher_gpu_workers_loopback_dashboard_token_and_instance_profile():
    config = load("cluster/aws.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    (worker_name,) = [n for n in types if n != config["head_node_type"]]
    worker = types[worker_name]
    assert worker["resources"]["GPU"] >= 1 and re.match(r"(g|p)\d", worker["node_config"]["InstanceType"])
    assert worker["max_workers"] <= config["max_workers"]
    assert (
        config["docker"]["image"]
        == load("k8s/raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    )
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    for node in types.values():
        assert "IamInstanceProfile" in node["node_config"]
    text = (INFRA / "cluster" / "aws.yaml").read_text()
    assert not re.search(r"aws_secret_access_key|AWS_SECRET_ACCESS_KEY\s*=", text, re.I)
    usage = [line for line in text.splitlines() if "pipelines/train.py" in line]
    assert usage, "the header shows the job submission"


def test_spot_workers_turn_a_reclaim_notice_into_rays_preemption_drain():
    """EC2 spot (cluster launcher) and evicted pods (KubeRay) both end in ``ray drain-node --reason
    DRAIN_NODE_REASON_PREEMPTION``, the signal the training loop checkpoints on."""
    from ray.core.generated import autoscaler_pb2

    autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")  # a reason Ray's CLI accepts
    config = load("cluster/aws.yaml")
    (worker_name,) = [n for n in config["available_node_types"] if n != config["head_node_type"]]
    assert (
        config["available_node_types"][worker_name]["node_config"]["InstanceMarketOptions"]["MarketType"]
        == "spot"
    )
    watcher = [c for c in config["worker_start_ray_commands"] if "infra/spot_drain.py" in c]
    assert watcher and watcher[0].rstrip().endswith("&") and "RAY_AUTH_TOKEN_PATH" in watcher[0]
    assert "COPY --chown=ray:users infra/spot_drain.py" in (INFRA / "docker" / "Dockerfile").read_text()

    (group,) = load("k8s/raycluster.yaml")["spec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    hook = " ".join(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"])
    assert "ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION" in hook
    deadline_s = int(re.search(r"--deadline-remaining-seconds (\d+)", hook).group(1))
    assert deadline_s < pod["terminationGracePeriodSeconds"]  # the pod lives until the deadline


@pytest.mark.parametrize("command", [["--help"], ["up", "--help"], ["down", "--help"]])
def test_stack_cli_help(command):
    done = subprocess.run(
        [sys.executable, "infra/stack.py", *command], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "usage: infra/stack.py" in done.stdout


@pytest.mark.parametrize("state_dir_first", [True, False], ids=["before-subcommand", "after-subcommand"])
def test_stack_env_without_a_stack_is_one_line_error(tmp_path, state_dir_first):
    state = ["--state-dir", str(tmp_path / "none")]
    argv = [*state, "env"] if state_dir_first else ["env", *state]
    done = subprocess.run(
        [sys.executable, "infra/stack.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: no stack in") and done.stderr.count("\n") == 1
