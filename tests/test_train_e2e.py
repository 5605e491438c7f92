"""End to end on local Ray: 2-worker training of `tiny`, checkpoints, MLflow, registry, resume,
failure recovery, NaN abort and `mlflow models serve` of the registered model.

The tests in this module share one local Ray (``ray.init(address="local", num_cpus=2)``) and one
MLflow SQLite store, and run in file order: later tests build on the first run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from train_support import free_port, make_dataset

pytestmark = pytest.mark.slow

# a cheap sampler and few val scenes keep validation to a couple of seconds on 2 CPUs
COMMON = [
    "--workers",
    "2",
    "--log-every",
    "2",
    "--keep",
    "2",
    "--val-scenes",
    "4",
    "--val-free-scenes",
    "2",
    "--set",
    "sampler.steps=2",
    "--set",
    "sampler.ensemble_size=2",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("train")
    data = make_dataset(root / "data", n=48, shard_size=24)
    mlflow_uri = f"sqlite:///{root}/mlruns/mlflow.db"
    (root / "mlruns").mkdir()
    ray.init(address="local", num_cpus=2, logging_level="WARNING")
    yield {"root": root, "data": str(data), "storage": str(root / "runs"), "mlflow_uri": mlflow_uri}
    ray.shutdown()
    import mlflow

    mlflow.set_tracking_uri(None)


def _train(env, *extra: str) -> int:
    from pipelines.train import main

    return main(
        [
            "--data",
            env["data"],
            "--storage",
            env["storage"],
            "--mlflow-uri",
            env["mlflow_uri"],
            *COMMON,
            *extra,
        ]
    )


def _latest_checkpoint(run_dir: Path) -> Path:
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert checkpoints, f"no checkpoints in {run_dir}"
    return checkpoints[-1]


def _trained_step(checkpoint: Path) -> int:
    from pipelines.training.optim import load_trainer_state

    return load_trainer_state(checkpoint).step


def _mlflow_run(env, run_dir: Path):
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.registry import RUN_DIR_TAG

    client = MlflowClient(env["mlflow_uri"])
    experiment = client.get_experiment_by_name("sas")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{RUN_DIR_TAG}` = '{run_dir}'")
    assert len(runs) == 1, "one MLflow run per training run (resume keeps writing into it)"
    return client, runs[0]


def _reported_steps(client, run) -> list[int]:
    return [int(m.value) for m in client.get_metric_history(run.info.run_id, "step")]


def test_two_worker_tiny_run_checkpoints_tracks_and_registers(env):
    result_file = Path(env["storage"]) / "train-result.json"
    assert (
        _train(env, "--steps", "6", "--ckpt-every", "3", "--val-every", "3", "--result", str(result_file))
        == 0
    )

    run_dir = Path(env["storage"]) / "sas-tiny"
    checkpoint = _latest_checkpoint(run_dir)
    assert {"config.json", "model.safetensors", "ema.safetensors", "trainer_state.pt"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert _trained_step(checkpoint) == 6
    assert (
        len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) == 2
    )  # CheckpointConfig(num_to_keep=2)
    assert sorted(p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()) == [
        "checkpoint_step00000003",
        "checkpoint_step00000006",
    ]  # named by step (checkpoint_dir_name)

    client, run = _mlflow_run(env, run_dir)
    assert run.data.params["config.unet.base_channels"] == "32"
    assert run.data.params["config.train.max_steps"] == "6"
    for key in (
        "train/loss",
        "train/lr",
        "train/samples_per_s",
        "train/data_wait_frac",
        "val/loss",
        "val/miou_tf",
        "val/miou_free",
        "val/iou_tf/layer0",
    ):
        assert key in run.data.metrics, key
    assert _reported_steps(client, run) == [3, 6]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "overlays", "checkpoint"} <= artifacts
    overlays = [a.path for a in client.list_artifacts(run.info.run_id, "overlays")]
    assert any(p.endswith(".png") for p in overlays)
    assert "learning_curve.png" in artifacts  # val IoU per layer against step, at the end of training
    assert "images" in artifacts  # the overlay sheet of each validation, logged with its step

    champion = client.get_model_version_by_alias("sas", "champion")
    assert str(champion.version) == "1" and champion.run_id == run.info.run_id
    result = json.loads(result_file.read_text())  # the stage result a pipeline reads
    assert result["status"] == "trained" and str(result["version"]) == "1" and result["step"] == 6
    assert result["run_id"] == run.info.run_id and Path(result["checkpoint"]) == checkpoint

    # lineage: the dataset is the run's input (mlflow.log_input) and the version carries its digest
    from pipelines.tracking.lineage import manifest_digest

    manifest = json.loads((Path(env["data"]) / "manifest.json").read_text())
    (dataset_input,) = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in dataset_input.tags}
    assert dataset_input.dataset.digest == manifest_digest(manifest) == champion.tags["dataset_digest"]
    assert dataset_input.dataset.name == Path(env["data"]).name
    assert tags["mlflow.data.context"] == "training" and tags["sas.schema_version"] == "1"
    assert int(tags["sas.count.train"]) == manifest["counts"]["train"]
    assert champion.tags["dataset_uri"] == str(Path(env["data"]).resolve())


def test_registered_pyfunc_loads_and_segments_an_image(env):
    import mlflow

    mlflow.set_tracking_uri(env["mlflow_uri"])
    model = mlflow.pyfunc.load_model("models:/sas@champion")
    assert model.metadata.signature is not None
    example = model.input_example
    assert example is not None
    output = model.predict(example)
    assert list(output.columns) == ["result", "num_layers"] and len(output) == 1
    result = json.loads(output["result"][0])
    assert output["num_layers"][0] == result["num_layers"] == len(result["layers"])


def test_rerun_resumes_from_the_saved_step(env, capsys):
    assert _train(env, "--steps", "9", "--ckpt-every", "3", "--val-every", "3") == 0
    assert "[train] resuming run 'sas-tiny' from checkpoint_step00000006 " in capsys.readouterr().out
    run_dir = Path(env["storage"]) / "sas-tiny"
    assert _trained_step(_latest_checkpoint(run_dir)) == 9
    client, run = _mlflow_run(env, run_dir)
    assert _reported_steps(client, run) == [3, 6, 9]  # continued at 7, did not start over at 1
    versions = client.search_model_versions("name = 'sas'")
    assert len(versions) == 2


def test_a_run_with_rays_timestamp_checkpoint_names_still_resumes(env, capsys):
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.training.resume import resume_checkpoint

    def old_style_loop(config):  # defined here so Ray ships it by value (the tests are no package)
        """The training loop's reports as they were before ``checkpoint_dir_name``: Ray names the
        checkpoint folders ``checkpoint_<timestamp>``. Steps 2 and 4 of an untrained ``tiny`` model."""
        import tempfile

        import ray.train
        import torch

        from pipelines.training.optim import EMA, TrainerState
        from pipelines.training.worker import _save
        from sas_model.config import ModelConfig
        from sas_model.model import SASModel

        model = SASModel(ModelConfig.preset("tiny"))
        ema, optimizer = EMA(model, 0.99), torch.optim.AdamW(model.parameters())
        for step in (2, 4):
            with tempfile.TemporaryDirectory() as tmp:
                _save(tmp, model, ema, optimizer, TrainerState(step=step, samples_seen=16 * step))
                ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    name = "before-step-names"
    TorchTrainer(
        old_style_loop,
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=name, storage_path=env["storage"]),
    ).fit()
    run_dir = Path(env["storage"]) / name
    old = sorted(p.name for p in run_dir.glob("checkpoint_2*") if p.is_dir())
    assert len(old) == 2, old  # checkpoint_<YYYY-MM-DD_HH-MM-SS.ffffff>
    assert Path(resume_checkpoint(str(run_dir)).path).name == old[-1]  # Ray's Result.from_path

    args = ["--name", name, "--workers", "1", "--steps", "5", "--val-every", "0", "--no-register"]
    assert _train(env, *args) == 0
    assert f"[train] resuming run '{name}' from {old[-1]} " in capsys.readouterr().out
    assert _trained_step(run_dir / "checkpoint_step00000005") == 5
    client, run = _mlflow_run(env, run_dir)
    assert _reported_steps(client, run) == [5]  # went on from step 4


def test_injected_worker_failure_is_recovered_through_failure_config(env):
    name = "with-failure"
    assert (
        _train(
            env,
            "--name",
            name,
            "--steps",
            "6",
            "--ckpt-every",
            "2",
            "--val-every",
            "0",
            "--fail-once-at-step",
            "3",
            "--max-failures",
            "1",
            "--no-register",
        )
        == 0
    )
    run_dir = Path(env["storage"]) / name
    assert (run_dir / ".injected_failure").exists(), "the failure hook did fire"
    assert _trained_step(_latest_checkpoint(run_dir)) == 6
    client, run = _mlflow_run(env, run_dir)
    # step 2 checkpointed, rank 0 died at step 3, the restarted group resumed from step 2
    assert _reported_steps(client, run) == [2, 4, 6]


def test_nan_loss_aborts_with_one_line_and_keeps_checkpoints(env, capsys):
    name = "diverges"
    with pytest.raises(SystemExit) as info:
        _train(
            env,
            "--name",
            name,
            "--workers",
            "1",
            "--steps",
            "8",
            "--ckpt-every",
            "2",
            "--val-every",
            "0",
            "--inject-nan-from-step",
            "4",
            "--max-bad-steps",
            "2",
            "--no-register",
        )
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: loss was NaN/inf for 2 steps") and "checkpoint is kept" in err
    run_dir = Path(env["storage"]) / name
    assert _trained_step(_latest_checkpoint(run_dir)) == 4


def test_mlflow_models_serve_answers_an_image_request(env, tmp_path):
    import mlflow
    from mlflow.models.utils import convert_input_example_to_serving_input

    mlflow.set_tracking_uri(env["mlflow_uri"])
    example = mlflow.pyfunc.load_model("models:/sas@champion").input_example
    payload = convert_input_example_to_serving_input(example).encode()

    port = free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    server_env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": env["mlflow_uri"],
        "TMPDIR": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [
            mlflow_cli,
            "models",
            "serve",
            "-m",
            "models:/sas@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow models serve did not come up in 120 s"
            time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=payload, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            body = json.loads(response.read())
        predictions = body["predictions"]
        assert len(predictions) == 1
        result = json.loads(predictions[0]["result"])
        assert predictions[0]["num_layers"] == result["num_layers"] == len(result["layers"])
        _two_sizes_and_bad_input(port)
    finally:
        _stop_group(server)
        log.close()


def _post(port: int, images: list[str], params: dict | None = None) -> tuple[int, dict]:
    """POST ``{"dataframe_split": ...}`` to /invocations; returns (HTTP status, JSON body)."""
    body = {"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}}
    if params:
        body["params"] = params
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _two_sizes_and_bad_input(port: int) -> None:
    """Two images of different sizes and modes in one request (masks come back at each image's size);
    a non-image, an empty image and an image over the pixel limit get HTTP 400 with the reason, and
    the server keeps answering."""
    import io

    import numpy as np
    from PIL import Image

    from sas_model.codec import b64png_to_mask, to_base64

    def png(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return to_base64(buffer.getvalue())

    rng = np.random.default_rng(0)
    wide = png(Image.fromarray(rng.integers(0, 256, (48, 100, 3), dtype=np.uint8)))
    grey16 = png(Image.fromarray(rng.integers(0, 65536, (30, 20)).astype(np.uint16)))
    status, body = _post(port, [wide, grey16], {"steps": 1})
    assert status == 200, body
    sizes = []
    for prediction in body["predictions"]:
        result = json.loads(prediction["result"])
        sizes.append((result["height"], result["width"]))
        assert all(b64png_to_mask(m).shape == sizes[-1] for m in result["layers"])
    assert sizes == [(48, 100), (30, 20)]
    huge = png(Image.new("RGB", (5000, 4000)))  # 20 M pixels > the default 4096² limit
    for images, reason in [
        ([wide, to_base64(b"not an image")], "image 1: not a readable image"),
        ([""], "image 0: column 'image' must hold base64-encoded image files (got an empty value)"),
        ([huge], "image 0: image too large: 5000×4000"),
    ]:
        status, body = _post(port, images)
        assert status == 400 and reason in body["message"], body
    status, _ = _post(port, [wide])
    assert status == 200


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started, SIGKILL after 10 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def test_wall_clock_budget_stops_both_ranks_and_ends_the_lr_decay(env):
    """`--minutes` with 2 workers: rank 0's clock (one broadcast per step) stops every rank at the
    same step, and the cosine LR reaches its floor with the time, not with the (unreachable) step count."""
    name = "timed"
    args = ["--name", name, "--minutes", "0.75", "--steps", "100000", "--ckpt-every", "100000"]
    args += ["--val-every", "0", "--set", "train.warmup_steps=0", "--no-register"]
    assert _train(env, *args) == 0

    run_dir = Path(env["storage"]) / name
    step = _trained_step(_latest_checkpoint(run_dir))
    assert 0 < step < 100000
    client, run = _mlflow_run(env, run_dir)
    lrs = sorted(client.get_metric_history(run.info.run_id, "train/lr"), key=lambda m: m.step)
    base = float(run.data.params["config.train.lr"])
    # a step-count schedule would still be at ~base_lr after a few dozen of 100,000 steps
    assert lrs[-1].value < 0.5 * base, [(m.step, m.value) for m in lrs]
