"""Two Ray nodes as two hosts: network namespaces made by the test, joined by a veth pair.

Host ``h`` (10.x.y.1) runs the whole stack (``infra/stack.py up --host 10.x.y.1``: S3, MLflow, Ray
head with 3 logical CPUs and token auth); host ``w`` (10.x.y.2) runs a Ray worker node
(``ray start --address``, 2 logical CPUs). Nothing is reachable from outside the two namespaces.

- The generator, run against the cluster and killed mid-run, then rerun, leaves on S3 exactly the
  shards an uninterrupted run writes.
- A 2-worker training (``--placement spread``: one worker per node; data and checkpoints on S3,
  metrics on the MLflow server) loses its worker node mid-training: its network goes down and every
  process in its namespace is killed, whatever session Ray started it in (a host that dies takes all
  of its processes). Ray Train restarts the worker group from the last checkpoint on the surviving
  node within ``RECOVERY_LIMIT_S`` and the job succeeds, with no more than one checkpoint interval of
  steps redone.

Needs root for ``ip netns``; without it the module is skipped with that reason. Every process in the
two namespaces is killed and the namespaces are deleted on the way out, also when a test fails, times
out or pytest is stopped (``conftest.py`` turns SIGTERM into an interrupt, so fixtures tear down).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from infra_support import BIN, REPO, new_state_dir, stack, stack_down, stack_up

# a 2-node cluster on a busy 2-core box
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(900)]
CKPT_EVERY = 2
IFACE = "sas0"
STEPS = 8
NS_PREFIX = "sas"
RECOVERY_LIMIT_S = 120  # from the host's death to the first step of the restarted worker group
# job-log lines that mark the recovery (printed with their time after the host's death)
TIMELINE_EVENTS = (
    "rror",
    "died",
    "Deciding",
    "Restarting",
    "Started training worker group",
    "resumed from",
    "[train] step",
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _netns_problem() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces (ip netns add) needs root"
    if not shutil.which("ip"):
        return "iproute2 (the ip command) is not installed"
    probe = f"sasprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns add failed here: {getattr(exc, 'stderr', b'').decode().strip() or exc}"
    _ip("netns", "del", probe)
    return None


def namespace_pids(ns: str) -> list[int]:
    """Every process in network namespace ``ns`` (whatever its session or parent)."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
    return [int(pid) for pid in done.stdout.split()]


def kill_namespace(ns: str) -> int:
    """SIGKILL every process in ``ns`` until none is left; returns how many there were."""
    seen = set()
    for _ in range(20):
        pids = namespace_pids(ns)
        if not pids:
            break
        seen.update(pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return len(seen)


def kill_host(ns: str) -> int:
    """The host dies: its network goes down, then every process on it is killed."""
    subprocess.run(["ip", "-n", ns, "link", "set", IFACE, "down"], capture_output=True, timeout=30)
    return kill_namespace(ns)


def remove_namespace(ns: str) -> None:
    kill_namespace(ns)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def remove_stale_namespaces(current_tag: int) -> None:
    """Namespaces of an earlier run of this module that could not clean up (pytest killed hard). One
    run at a time is assumed: any other ``sas<N>h``/``sas<N>w`` is stale."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    for ns, tag in re.findall(rf"^({NS_PREFIX}(\d+)[hw])\b", listed, flags=re.M):
        if int(tag) != current_tag:
            remove_namespace(ns)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    problem = _netns_problem()
    if problem:
        pytest.skip(f"{problem}; the two-host scenario cannot run in this sandbox")
    tag = os.getpid() % 10000
    remove_stale_namespaces(tag)
    h, w = f"{NS_PREFIX}{tag}h", f"{NS_PREFIX}{tag}w"
    net = f"10.{200 + tag % 50}.{tag % 250}"
    _ip("netns", "add", h)
    _ip("netns", "add", w)
    try:
        _ip("link", "add", f"sas{tag}a", "type", "veth", "peer", "name", f"sas{tag}b")
        for ns, dev, addr in ((h, f"sas{tag}a", f"{net}.1"), (w, f"sas{tag}b", f"{net}.2")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "link", "set", dev, "name", IFACE)  # the same name on both hosts
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", IFACE)
            _ip("-n", ns, "link", "set", IFACE, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield {"h": h, "w": w, "head_ip": f"{net}.1", "worker_ip": f"{net}.2", "tmp": tmp_path_factory}
    finally:
        for ns in (w, h):
            remove_namespace(ns)


def _in(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


@pytest.fixture(scope="module")
def cluster(hosts, request):
    state_dir = new_state_dir()
    failed_before = request.session.testsfailed
    # gloo (torch.distributed on CPU) finds its own address from the hostname, which resolves to
    # 127.0.x.1 here; as on any multi-NIC host, name the interface (NCCL_SOCKET_IFNAME for GPUs).
    saved_ifname = os.environ.get("GLOO_SOCKET_IFNAME")
    os.environ["GLOO_SOCKET_IFNAME"] = IFACE
    worker = None
    worker_tmp = tempfile.mkdtemp(prefix="sas-w-")
    try:
        info = stack_up(state_dir, "--host", hosts["head_ip"], "--num-cpus", "3", prefix=_in(hosts["h"]))
        env = info["env"]
        for key in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_TMPDIR"):
            env.pop(key, None)  # real multi-node: each node uses its own address
        env["RAY_worker_register_timeout_seconds"] = "300"  # as the stack's head: slow starts on a busy box
        command = [
            *_in(hosts["w"]),
            str(BIN / "ray"),
            "start",
            "--block",
            f"--address={info['urls']['ray_gcs']}",
            "--num-cpus=2",  # one for a training worker, one for Ray Data
            "--disable-usage-stats",
            f"--temp-dir={worker_tmp}",
        ]
        log = open(state_dir / "logs" / "worker-node.log", "wb")
        worker = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        _wait_for_nodes(hosts, env, info["urls"]["ray_gcs"], 2)
        yield {**info, "env": env, "state_dir": state_dir, "worker": worker, "hosts": hosts}
    finally:
        if worker is not None:
            kill_namespace(hosts["w"])  # the worker node's processes, whatever their session
            worker.wait(timeout=30)
        stack_down(state_dir, prefix=_in(hosts["h"]), keep=request.session.testsfailed > failed_before)
        shutil.rmtree(worker_tmp, ignore_errors=True)
        if saved_ifname is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = saved_ifname


def _kill_session(sid: int) -> int:
    members = stack._session_members(sid)
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(members)


def _py_in(ns: str, env: dict, code: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [*_in(ns), sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _wait_for_nodes(hosts: dict, env: dict, gcs: str, count: int, timeout_s: float = 300) -> None:
    code = f"""
import json, time, ray
ray.init(address={gcs!r}, logging_level="ERROR")
deadline = time.time() + {timeout_s}
while True:
    alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    if len(alive) >= {count}:
        print(json.dumps(alive))
        break
    assert time.time() < deadline, "worker node did not join: " + str(alive)
    time.sleep(1)
"""
    ips = json.loads(_py_in(hosts["h"], env, code, timeout=timeout_s + 60).strip().splitlines()[-1])
    assert hosts["worker_ip"] in ips and hosts["head_ip"] in ips, ips


def test_generator_killed_mid_run_then_rerun_equals_an_uninterrupted_run(cluster, tmp_path):
    from synth.generate import build_parser, job_from_args
    from synth.shards import write_shard

    hosts, env = cluster["hosts"], {**cluster["env"], "RAY_ADDRESS": cluster["urls"]["ray_gcs"]}
    args = ["--n", "240", "--size", "64", "--shard-size", "20", "--seed", "5"]
    reference = tmp_path / "reference"  # the uninterrupted run, rendered here without Ray
    job = job_from_args(build_parser().parse_args([*args, "--out", str(reference)]))
    for index in range(job.num_shards):
        write_shard(str(reference), None, job, index)

    uri = "s3://sas-data/generated"
    command = [*_in(hosts["h"]), sys.executable, "synth/generate.py", *args, "--out", uri]
    first = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for line in first.stdout:
            if re.search(r"\[generate\] [1-9]\d*/\d+ shards", line):
                break  # at least one shard published
    finally:
        _kill_session(first.pid)
        first.wait(timeout=60)
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    done_before = int(re.search(r"\((\d+) shards already complete", rerun.stdout).group(1))
    assert 1 <= done_before < job.num_shards, rerun.stdout
    compare = f"""
import pyarrow.parquet as pq
from synth.reader import open_filesystem
fs, root = open_filesystem({uri!r})
names = sorted(i.base_name for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(root)))
assert "_tmp" not in names, names
for i in range({job.num_shards}):
    name = f"shard-{{i:05d}}.parquet"
    ours = pq.read_table(f"{{root}}/{{name}}", filesystem=fs)
    assert ours.equals(pq.read_table("{reference}/" + name)), name
print("equal", len(names))
"""
    assert _py_in(hosts["h"], env, compare).startswith("equal")


def test_training_survives_losing_the_worker_node(cluster):
    hosts, env = cluster["hosts"], cluster["env"]
    write = f"""
import sys; sys.path.insert(0, "tests")
from infra_support import write_s3_dataset
write_s3_dataset("s3://sas-data/shapes", {cluster["urls"]["s3"]!r}, n=24, shard_size=12)
"""
    _py_in(hosts["h"], env, write)
    entrypoint = (
        "python pipelines/train.py --data s3://sas-data/shapes --storage s3://sas-runs/runs --name two-nodes "
        f"--workers 2 --placement spread --batch 4 --steps {STEPS} --ckpt-every {CKPT_EVERY} --val-every 0 "
        "--log-every 1 --cache off --max-failures 3 --no-register"
    )
    submitted = subprocess.run(
        [*_in(hosts["h"]), str(BIN / "ray"), "job", "submit", "--no-wait", "--working-dir", str(REPO), "--"]
        + entrypoint.split(),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
    follow = subprocess.Popen(
        [*_in(hosts["h"]), str(BIN / "ray"), "job", "logs", "--follow", job_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    last_step_before_kill = None
    killed_at = resumed_at = recovered_at = None
    node_ips: set[str] = set()
    timeline: list[str] = []  # what happened after the host's death, and when
    for line in follow.stdout:
        lines.append(line)
        if killed_at is not None and any(k in line for k in TIMELINE_EVENTS):
            timeline.append(f"+{time.monotonic() - killed_at:.0f} s {line.strip()[:140]}")
        node_ips.update(re.findall(r"\(ip=([\d.]+), pid=\d+\) world_rank", line))
        step = re.search(r"\[train\] step (\d+)/", line)
        if last_step_before_kill is None and step and int(step.group(1)) > CKPT_EVERY:
            assert node_ips == {hosts["head_ip"], hosts["worker_ip"]}, "workers should span both hosts"
            last_step_before_kill = int(step.group(1))
            killed_at = time.monotonic()
            assert kill_host(hosts["w"]) > 0  # the worker host dies
        elif killed_at is not None and resumed_at is None and "[train] resumed from step" in line:
            resumed_at = time.monotonic()
        elif resumed_at is not None and recovered_at is None and step:
            recovered_at = time.monotonic()  # the first step of the restarted worker group
    follow.wait(timeout=60)
    log = "".join(lines)
    status = subprocess.run(
        [*_in(hosts["h"]), str(BIN / "ray"), "job", "status", job_id], env=env, capture_output=True, text=True
    )
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, log[-5000:]
    assert last_step_before_kill is not None, log[-5000:]
    resumed = [int(s) for s in re.findall(r"\[train\] resumed from step (\d+)", log)]
    assert resumed, log[-5000:]
    assert last_step_before_kill - resumed[-1] <= CKPT_EVERY, (last_step_before_kill, resumed)
    assert f'"step": {STEPS}' in log
    assert recovered_at is not None, log[-5000:]
    recovery_s = recovered_at - killed_at
    print(f"recovery: {recovery_s:.0f} s from the worker host's death to the first resumed step")
    print("\n".join(timeline[:12]))
    assert recovery_s <= RECOVERY_LIMIT_S, recovery_s
    groups = log.split("Started training worker group")
    assert len(groups) >= 3, "the worker group should have been restarted"
    restarted_on = re.findall(r"\(ip=([\d.]+), pid=\d+\) world_rank", groups[-1])[:2]
    assert restarted_on == [hosts["head_ip"]] * 2, restarted_on
