"""MLflow pyfunc wrapper around the sequential segmenter (the only module that imports mlflow).

Input: a DataFrame with a column ``image`` (base64-encoded image files: PNG, JPEG, ...; any size,
mixed sizes in one request; RGB, RGBA, greyscale, palette, 16-bit) and an optional integer column
``seed`` (default 0, so the served model is reproducible). Decoding and resizing in and out are
``sas_model.predictor``'s, the same as ``pipelines/predict.py``: each image is resized to the model's
S×S, segmented, and every mask is resized back to the image's own H×W. Images over
``$SAS_MAX_PIXELS`` pixels (default 4096²; read when the model loads) are refused. Optional params:
``sampler``, ``steps``, ``ensemble_size`` (override the checkpoint's sampler config). Output: a
DataFrame with one JSON string per image in column ``result`` (``Prediction.to_dict()``: ``height``,
``width``, ``model_size``, ``resized``, ``num_layers``, ``layers`` and per-object masks as base64 PNGs
at the image's size, ``layer_uncertainty``, ``objects`` with ``bbox``/``area``/``visible_fraction``,
``occlusion_edges``) and ``num_layers``. Bad input (not an image, empty, too large) raises a
``MlflowException`` naming the row, which the scoring server answers with HTTP 400 and that message.

    log_model(checkpoint_dir="runs/x/checkpoint", name="model", input_image=image_uint8)
    mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [b64png]}))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from sas_model.checkpoint import load_model, load_segmenter
from sas_model.codec import encode_png, from_base64, to_base64
from sas_model.predictor import Predictor, decode_image, max_pixels_from_env

ARTIFACT_KEY = "checkpoint"
PARAM_NAMES = {"sampler": "name", "steps": "steps", "ensemble_size": "ensemble_size"}


def decode_base64_image(text: str, max_pixels: int | None = None) -> np.ndarray:
    """base64 image file → ``uint8 [H,W,3]`` RGB, decoded by ``sas_model.predictor.decode_image``."""
    if not isinstance(text, str | bytes) or not text:
        raise ValueError("column 'image' must hold base64-encoded image files (got an empty value)")
    try:
        data = from_base64(text)
    except Exception as exc:
        raise ValueError(
            f"column 'image' must hold base64-encoded image files ({type(exc).__name__})"
        ) from None
    return decode_image(data, max_pixels)


def _bad_input(message: str) -> Exception:
    """A ``ValueError`` the scoring server answers with HTTP 400 (``MlflowException``, bad parameter)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class BadInput(MlflowException, ValueError):
        pass

    return BadInput(message, error_code=INVALID_PARAMETER_VALUE)


def encode_image(image: np.ndarray) -> str:
    """``uint8 [H,W,3]`` → base64 PNG string (the input format)."""
    return to_base64(encode_png(np.asarray(image, dtype=np.uint8)))


class SASPyfuncModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint directory from the model's artifacts; ``predict`` runs ``segment``."""

    def load_context(self, context: Any) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.segmenter = load_segmenter(context.artifacts[ARTIFACT_KEY], device=device)
        self.predictor = Predictor(self.segmenter, max_pixels=max_pixels_from_env())

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise _bad_input("input must be a DataFrame with a column 'image' of base64-encoded image files")
        overrides = {
            PARAM_NAMES[k]: v for k, v in (params or {}).items() if k in PARAM_NAMES and v is not None
        }
        images = []
        for row, text in enumerate(model_input["image"]):
            try:
                images.append(decode_base64_image(text, self.predictor.max_pixels))
            except ValueError as exc:
                raise _bad_input(f"image {row}: {exc}") from None
        try:
            seeds = (
                model_input["seed"].fillna(0).astype(int).tolist()
                if "seed" in model_input.columns
                else [0] * len(images)
            )
        except (TypeError, ValueError):
            raise _bad_input("column 'seed' must hold integers") from None
        results: list[Any] = [None] * len(images)
        for seed in sorted(set(seeds)):  # one batched call per seed; per-image noise makes this order-free
            rows = [i for i, s in enumerate(seeds) if s == seed]
            predictions = self.predictor.predict([images[i] for i in rows], seed=seed, **overrides)
            for i, prediction in zip(rows, predictions, strict=True):
                results[i] = prediction
        return pd.DataFrame(
            {
                "result": [json.dumps(r.to_dict()) for r in results],
                "num_layers": [r.num_layers for r in results],
            }
        )


def log_model(
    checkpoint_dir: str, name: str = "model", input_image: np.ndarray | None = None, **log_kwargs: Any
) -> Any:
    """``mlflow.pyfunc.log_model`` with the checkpoint as an artifact, a signature and an input example
    (built from ``input_image uint8 [H,W,3]`` when given). Returns MLflow's ``ModelInfo``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    cfg = load_model(checkpoint_dir, device="cpu").cfg
    if input_image is None:
        input_image = np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8)
    example = pd.DataFrame({"image": [encode_image(input_image)], "seed": [0]})
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string", "result"), ColSpec("long", "num_layers")]),
        params=ParamSchema(
            [
                ParamSpec("sampler", "string", cfg.sampler.name),
                ParamSpec("steps", "long", cfg.sampler.steps),
                ParamSpec("ensemble_size", "long", cfg.sampler.ensemble_size),
            ]
        ),
    )
    return mlflow.pyfunc.log_model(  # models-from-code: the entry file is logged, nothing is pickled
        name=name,
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={ARTIFACT_KEY: str(checkpoint_dir)},
        signature=signature,
        input_example=example,
        **log_kwargs,
    )
