"""Serving pieces without servers: decoding of any image mode, resizing in and out shared by predict
and the pyfunc, mixed sizes in one request, bad input, progress lines and the GPU resource request."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from train_support import random_checkpoint

from sas_model.codec import b64png_to_mask, to_base64
from sas_model.predictor import Predictor, decode_image, max_pixels_from_env


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _checkpoint(path) -> str:
    return random_checkpoint(path, **{"image_size": 32, "sampler.steps": 2, "sampler.max_layers": 2})


def test_decode_image_takes_every_mode_to_rgb_uint8():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(_png(Image.fromarray(rgb))), rgb)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    assert np.array_equal(decode_image(_png(Image.fromarray(grey))), np.repeat(grey[..., None], 3, 2))
    # 16-bit greyscale: scaled to 8 bits, not clipped at 255
    deep = (rng.integers(0, 256, (5, 7)) * 257).astype(np.uint16)
    decoded = decode_image(_png(Image.fromarray(deep)))
    assert decoded.dtype == np.uint8 and decoded.shape == (5, 7, 3)
    assert np.array_equal(decoded[..., 0], (deep // 257).astype(np.uint8))
    # RGBA: transparent pixels become white
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[:2, :, 3] = 200, 255
    out = decode_image(_png(Image.fromarray(rgba, mode="RGBA")))
    assert out[0, 0].tolist() == [200, 0, 0] and out[3, 3].tolist() == [255, 255, 255]


def test_decode_image_refuses_bad_input_with_one_line():
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(b"certainly not a png")
    with pytest.raises(ValueError, match="empty input"):
        decode_image(b"")
    big = _png(Image.new("RGB", (300, 200)))
    with pytest.raises(ValueError, match=r"image too large: 300×200 = 60,000 pixels \(limit 50,000"):
        decode_image(big, max_pixels=50_000)
    assert decode_image(big, max_pixels=60_000).shape == (200, 300, 3)


def test_max_pixels_from_env(monkeypatch):
    monkeypatch.delenv("SAS_MAX_PIXELS", raising=False)
    assert max_pixels_from_env() == 4096 * 4096
    monkeypatch.setenv("SAS_MAX_PIXELS", "1e6")
    assert max_pixels_from_env() == 1_000_000
    monkeypatch.setenv("SAS_MAX_PIXELS", "0")
    assert max_pixels_from_env() is None


def test_predictor_resizes_in_and_out_and_matches_predict_files(tmp_path):
    from pipelines.inference.prediction import image_outputs
    from sas_model.checkpoint import load_segmenter

    predictor = Predictor(load_segmenter(_checkpoint(tmp_path / "ckpt"), device="cpu"))
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, (48, 80, 3), dtype=np.uint8),
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
    ]
    wide, square = predictor.predict(images, seed=3)
    assert wide.layers.shape[1:] == (48, 80) and wide.resized
    assert square.layers.shape[1:] == (32, 32) and not square.resized
    (alone,) = predictor.predict(images[:1], seed=3)  # batch-mates of another size change nothing
    assert np.array_equal(alone.layers, wide.layers)
    # predict.py's files are the same predictor's resizing: one implementation
    raw = predictor.segmenter.segment(
        np.stack([np.asarray(Image.fromarray(images[0]).resize((32, 32), Image.Resampling.BILINEAR))]), seed=3
    )[0]
    files = image_outputs(images[0], raw, {"model_size": 32})
    assert files == wide.files({"model_size": 32})
    doc = wide.to_dict()
    assert (doc["height"], doc["width"], doc["model_size"], doc["resized"]) == (48, 80, 32, True)
    assert all(b64png_to_mask(m).shape == (48, 80) for m in doc["layers"])


def test_pyfunc_accepts_mixed_sizes_and_modes_and_names_the_bad_row(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    from sas_model.pyfunc import SASPyfuncModel

    monkeypatch.setenv("SAS_MAX_PIXELS", "10000")
    wrapper = SASPyfuncModel()
    wrapper.load_context(SimpleNamespace(artifacts={"checkpoint": _checkpoint(tmp_path / "ckpt")}))
    rng = np.random.default_rng(2)
    images = [
        Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), mode="RGBA"),
        Image.fromarray((rng.integers(0, 65536, (20, 30))).astype(np.uint16)),
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)),
    ]
    frame = pd.DataFrame({"image": [to_base64(_png(im)) for im in images]})
    out = wrapper.predict(None, frame, params={"steps": 1})
    assert list(out.columns) == ["result", "num_layers"] and len(out) == 4
    for im, text, n in zip(images, out["result"], out["num_layers"], strict=True):
        doc = json.loads(text)
        assert (doc["width"], doc["height"]) == im.size and doc["num_layers"] == n
        assert all(b64png_to_mask(m).shape == (im.size[1], im.size[0]) for m in doc["layers"])
        for obj in doc["objects"]:
            assert 0 <= obj["visible_fraction"] <= 1 and len(obj["bbox"]) == 4
    bad = [to_base64(b"nope"), "", to_base64(_png(Image.new("RGB", (101, 100))))]
    for row, text in enumerate(bad):
        frame = pd.DataFrame({"image": [to_base64(_png(images[0])), text]})
        with pytest.raises(
            MlflowException, match=r"image 1: (not a readable|column 'image'|image too large)"
        ) as info:
            wrapper.predict(None, frame)
        assert info.value.get_http_status_code() == 400, row


def test_progress_lines_in_logs_and_on_a_terminal():
    from pipelines.cli.progress import Progress

    now = [0.0]
    log = io.StringIO()
    progress = Progress(100, "eval", unit="scenes", every=25, stream=log, tty=False, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 1.0
        progress.update(10)
    progress.close()
    lines = log.getvalue().splitlines()
    assert lines[0] == "[eval] 30/100 scenes (30 %), 10.00 scenes/s, ETA 7s"
    assert len(lines) == 4 and lines[-1].startswith("[eval] 100/100 scenes (100 %)")
    term = io.StringIO()
    progress = Progress(4, "predict", unit="images", stream=term, tty=True, clock=lambda: now[0])
    progress.update(1)
    progress.close()
    assert term.getvalue().startswith("\r[predict] 1/4 images") and term.getvalue().endswith("\n")


def test_progress_is_off_the_terminal_under_ci(monkeypatch):
    from pipelines.cli.progress import interactive

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    assert interactive(Tty()) and not interactive(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not interactive(Tty())


def test_gpu_request_of_the_inference_actors():
    from pipelines.evaluate import build_parser as eval_parser
    from pipelines.inference.options import actor_resources, resolve_gpus_per_worker
    from pipelines.predict import build_parser as predict_parser
    from synth.cli import UserError

    assert resolve_gpus_per_worker(None, 0) == 0 and resolve_gpus_per_worker(None, 8) == 1
    assert resolve_gpus_per_worker(0.5, 1) == 0.5 and resolve_gpus_per_worker(0, 4) == 0
    with pytest.raises(UserError, match="has no GPU"):
        resolve_gpus_per_worker(1, 0)
    with pytest.raises(UserError, match=">= 0"):
        resolve_gpus_per_worker(-1, 1)
    assert actor_resources(0) == {"num_cpus": 1}
    assert actor_resources(1) == {"num_cpus": 1, "num_gpus": 1}
    args = predict_parser().parse_args(
        ["--model", "m", "--input", "i", "--out", "o", "--gpus-per-worker", "2"]
    )
    assert args.gpus_per_worker == 2
    args = eval_parser().parse_args(["--model", "m", "--data", "d"])
    assert args.gpus_per_worker is None and args.progress_every == 0


def test_actors_pass_the_gpu_request_to_ray_data(monkeypatch, tmp_path):
    """prediction.run hands ``num_gpus`` to ``map_batches`` when the cluster has GPUs (faked here)."""
    from pipelines import predict
    from pipelines.inference import prediction

    seen = {}

    class FakeDataset:
        def map_batches(self, fn, **kwargs):
            seen.update(kwargs)
            return self

        def iter_batches(self, **kwargs):
            return iter(())

    source = SimpleNamespace(uri="m", label="m")
    monkeypatch.setattr(prediction, "resolve_model", lambda uri, tracking: source)
    monkeypatch.setattr(prediction, "check_sampler_overrides", lambda s, o: None)
    monkeypatch.setattr(prediction, "list_inputs", lambda *a: ("", [], []))
    monkeypatch.setattr(prediction, "init_ray", lambda: "embedded")
    monkeypatch.setattr(prediction, "cluster_gpus", lambda: 2.0)
    monkeypatch.setattr(prediction, "image_dataset", lambda *a: (FakeDataset(), 0))
    args = predict.build_parser().parse_args(["--model", "m", "--input", "x", "--out", str(tmp_path / "o")])
    # nothing to read in the fake dataset; the request to Ray Data was made before
    with pytest.raises(prediction.UserError, match="none of the 0 inputs"):
        prediction.run(predict.request_from_args(args))
    assert seen["num_gpus"] == 1 and seen["num_cpus"] == 1


def test_demo_model_defaults_to_the_champion_else_the_pretrained_checkpoint(tmp_path, monkeypatch):
    from pipelines.inference import models
    from pipelines.inference.demo_app import find_model
    from synth.cli import UserError

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"  # an empty store: no champion
    monkeypatch.delenv("SAS_PRETRAINED_MODEL", raising=False)
    with pytest.raises(UserError, match=r"no model: models:/sas@champion is not available .* no pretrained"):
        find_model(None, tracking, pretrained=str(tmp_path / "absent"))
    monkeypatch.setenv("SAS_PRETRAINED_MODEL", _checkpoint(tmp_path / "shipped"))
    assert find_model(None, tracking).checkpoint_dir == str((tmp_path / "shipped").resolve())
    asked = []
    monkeypatch.setattr(models, "resolve_model", lambda uri, tracking_uri: asked.append(uri))
    find_model("0123456789abcdef0123456789abcdef", tracking)
    find_model("models:/sas/3", tracking)
    assert asked == ["runs:/0123456789abcdef0123456789abcdef/model", "models:/sas/3"]
