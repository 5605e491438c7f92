"""Checkpoint directories round-trip exactly; the pyfunc wrapper serves the segmenter."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from sas_model.checkpoint import load_meta, load_model, load_segmenter, save_checkpoint
from sas_model.codec import b64png_to_mask
from sas_model.config import ModelConfig
from sas_model.model import SASModel
from sas_model.segmenter import SequentialSegmenter


def _model(seed: int = 0, preset: str = "tiny", **overrides: object) -> SASModel:
    torch.manual_seed(seed)
    cfg = ModelConfig.preset(preset).replace(
        **{"image_size": 32, "sampler.steps": 3, "sampler.max_layers": 2, **overrides}
    )
    model = SASModel(cfg).eval()
    with torch.no_grad():  # leave the zero-initialised state so outputs differ between weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("preset", ["tiny", "tiny-sequential"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, preset: str) -> None:
    model = _model(0, preset, **{"unet.self_condition": True})
    ema = _model(1, preset, **{"unet.self_condition": True})
    save_checkpoint(tmp_path, model, ema_state=ema.state_dict(), extra={"step": 42})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "ema.safetensors",
        "meta.json",
        "model.safetensors",
    ]
    assert load_meta(tmp_path)["step"] == 42
    raw, averaged = load_model(tmp_path, use_ema=False), load_model(tmp_path)
    assert raw.cfg == model.cfg
    empty = torch.zeros(2, 32, 32)
    cond = model.condition(torch.as_tensor(_images()), empty, empty if model.order is not None else None)
    x_t, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 990])
    with torch.no_grad():
        assert torch.equal(raw.predict_x0(cond, x_t, t), model.predict_x0(cond, x_t, t))
        assert torch.equal(averaged.predict_x0(cond, x_t, t), ema.predict_x0(cond, x_t, t))
    a = SequentialSegmenter(model).segment(_images(), seed=3)
    b = load_segmenter(tmp_path, use_ema=False).segment(_images(), seed=3)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.layer_masks, y.layer_masks) and np.array_equal(x.uncertainty, y.uncertainty)


def test_load_segmenter_applies_sampler_overrides(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _model())
    segmenter = load_segmenter(tmp_path, name="dpmpp2m", steps=2)
    assert (segmenter.sampler_cfg.name, segmenter.sampler_cfg.steps) == ("dpmpp2m", 2)
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_model(tmp_path / "missing")


def test_deterministic_mode_segments_with_one_pass_per_layer(tmp_path: Path) -> None:
    model = _model(0, "tiny-sequential", **{"diffusion.mode": "deterministic"})
    (result,) = SequentialSegmenter(model).segment(_images(1), seed=0)
    assert result.unet_passes == max(1, result.num_layers + (result.stop_reason != "max_layers"))


def test_pyfunc_predict_returns_json_layers_and_objects(tmp_path: Path) -> None:
    from sas_model.pyfunc import SASPyfuncModel, encode_image

    save_checkpoint(tmp_path, _model())
    wrapper = SASPyfuncModel()
    wrapper.load_context(SimpleNamespace(artifacts={"checkpoint": str(tmp_path)}))
    frame = pd.DataFrame({"image": [encode_image(im) for im in _images(3)], "seed": [1, 1, 2]})
    out = wrapper.predict(None, frame, params={"steps": 2})
    assert list(out.columns) == ["result", "num_layers"] and len(out) == 3
    for row, result in enumerate(out["result"]):
        parsed = json.loads(result)
        assert parsed["num_layers"] == out["num_layers"][row] == len(parsed["layers"])
        assert all(b64png_to_mask(m).shape == (32, 32) for m in parsed["layers"])
        assert parsed["unet_passes"] > 0
    again = wrapper.predict(None, frame.iloc[[2, 0]], params={"steps": 2})
    assert again["result"].tolist() == [out["result"][2], out["result"][0]]  # order- and batch-free
    with pytest.raises(ValueError, match="column 'image'"):
        wrapper.predict(None, pd.DataFrame({"img": ["x"]}))


def test_pyfunc_logs_as_models_from_code_and_loads_back(tmp_path: Path) -> None:
    import mlflow

    from sas_model.pyfunc import encode_image, log_model

    save_checkpoint(tmp_path / "ckpt", _model())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            info = log_model(str(tmp_path / "ckpt"), name="model", input_image=_images(1)[0])
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        out = loaded.predict(pd.DataFrame({"image": [encode_image(_images(1)[0])]}), params={"steps": 1})
    finally:
        mlflow.set_tracking_uri(previous)
    assert json.loads(out["result"][0])["unet_passes"] >= 3
    assert [s.name for s in loaded.metadata.signature.inputs.inputs] == ["image", "seed"]
