"""MLflow pyfunc wrapper around the sequential segmenter (the only module that imports mlflow).

Input: a DataFrame with a column ``image`` (base64-encoded PNG strings, any size the model was trained
at, RGB/RGBA/greyscale) and an optional integer column ``seed`` (default 0, so the served model is
reproducible). Optional params: ``sampler``, ``steps``, ``ensemble_size`` (override the checkpoint's
sampler config). Output: a DataFrame with one JSON string per image in column ``result``
(``SegmentationResult.to_dict()``: layers and per-object masks as base64 PNGs, objects, edges) and
``num_layers``.

    log_model(checkpoint_dir="runs/x/checkpoint", name="model", input_image=image_uint8)
    mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [b64png]}))
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from PIL import Image

from sas_model.codec import encode_png, from_base64, to_base64

ARTIFACT_KEY = "checkpoint"
PARAM_NAMES = {"sampler": "name", "steps": "steps", "ensemble_size": "ensemble_size"}


def decode_image(text: str) -> np.ndarray:
    """base64 PNG → ``uint8 [H,W,3]`` RGB."""
    try:
        return np.asarray(Image.open(io.BytesIO(from_base64(text))).convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the caller's bad input
        raise ValueError(
            f"column 'image' must hold base64-encoded PNG strings ({type(exc).__name__})"
        ) from None


def encode_image(image: np.ndarray) -> str:
    """``uint8 [H,W,3]`` → base64 PNG string (the input format)."""
    return to_base64(encode_png(np.asarray(image, dtype=np.uint8)))


class SASPyfuncModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint directory from the model's artifacts; ``predict`` runs ``segment``."""

    def load_context(self, context: Any) -> None:
        import torch

        from sas_model.checkpoint import load_segmenter

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.segmenter = load_segmenter(context.artifacts[ARTIFACT_KEY], device=device)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise ValueError("input must be a DataFrame with a column 'image' of base64 PNG strings")
        overrides = {
            PARAM_NAMES[k]: v for k, v in (params or {}).items() if k in PARAM_NAMES and v is not None
        }
        images = [decode_image(text) for text in model_input["image"]]
        seeds = (
            model_input["seed"].fillna(0).astype(int).tolist()
            if "seed" in model_input.columns
            else [0] * len(images)
        )
        results: list[Any] = [None] * len(images)
        for seed in sorted(set(seeds)):  # one batched call per seed; per-image noise makes this order-free
            rows = [i for i, s in enumerate(seeds) if s == seed]
            if len({images[i].shape for i in rows}) > 1:
                raise ValueError("all images must have the same size")
            batch = np.stack([images[i] for i in rows])
            for i, result in zip(rows, self.segmenter.segment(batch, seed=seed, **overrides), strict=True):
                results[i] = result
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

    from sas_model.checkpoint import load_model

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
