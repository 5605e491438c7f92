"""The demo page behind ``pipelines/demo.py``: its options (``DemoOptions``, also its flags), finding
and loading the model (``find_model``, ``load``), one request (``DemoModel.segment``), the Gradio page
(``build_demo``) and serving it (``serve``).

Gradio (the optional ``demo`` extra) and torch are imported only when the page is built or the model
loaded, so ``pipelines/demo.py --help`` stays fast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli.env import PRETRAINED_ENV
from pipelines.cli.flags import option
from pipelines.inference import models
from pipelines.tracking.store import resolve_mlflow_uri
from sas_model.overlay import LAYER_COLOURS, heat_map
from sas_model.predictor import Predictor, max_pixels_from_env
from synth.cli import UserError
from synth.ray_runtime import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "docs" / "demo" / "examples"
DISPLAY_MIN = 256  # small images are shown enlarged (nearest neighbour) to at least this many pixels
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
OBJECT_HEADERS = ["object", "layer", "score", "visible fraction", "area (px)", "bbox [x0,y0,x1,y1]"]
EDGE_HEADERS = ["front object", "its layer", "hidden object", "its layer"]


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """What ``pipelines/demo.py`` serves and where; each field is also its flag."""

    model: str | None = option(
        None, "run id, runs:/ID/model, models:/NAME@ALIAS or a checkpoint path", metavar="URI"
    )
    mlflow_uri: str | None = option(None, "tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    pretrained: str | None = option(
        None, f"checkpoint used when there is no champion (default ${PRETRAINED_ENV}, models/pretrained)"
    )
    host: str = option("127.0.0.1", "address to bind")
    port: int = option(7860, "port to serve on", parse=int)
    max_pixels: int | None = option(
        None, "largest image accepted, H×W (default $SAS_MAX_PIXELS or 4096²)", parse=int
    )
    device: str | None = option(None, "cpu or cuda (default: cuda when present)")

    def validate(self) -> DemoOptions:
        """``self``, or a one-line ``UserError`` naming the bad flag."""
        if not 1 <= self.port <= 65535:
            raise UserError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_pixels is not None and self.max_pixels < 0:
            raise UserError(f"--max-pixels must be >= 0 (0: no limit), got {self.max_pixels}")
        if not self.host.strip():
            raise UserError("--host must not be empty")
        return self


# ---- model ------------------------------------------------------------------------------------------
def find_model(uri: str | None, tracking_uri: str, pretrained: str | None = None) -> models.ModelSource:
    """``ModelSource`` for ``--model`` (a run id, ``runs:/``, ``models:/`` or a checkpoint path); with
    none, the registered champion, else the shipped pretrained checkpoint, else ``UserError``."""
    if uri:
        return models.resolve_model(f"runs:/{uri}/model" if RUN_ID.match(uri) else uri, tracking_uri)
    return models.default_model(tracking_uri, pretrained)


# ---- one request ------------------------------------------------------------------------------------
def _enlarge(picture: np.ndarray, height: int) -> np.ndarray:
    factor = max(1, -(-DISPLAY_MIN // max(1, height)))
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1) if factor > 1 else picture


def _mask_picture(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    grey = image.astype(np.float32).mean(-1, keepdims=True) * 0.35
    out = np.where(mask[..., None], 0.25 * image + 0.75 * colour, grey)
    return out.clip(0, 255).astype(np.uint8)


class DemoModel:
    """Holds a ``Predictor``; ``segment(path, steps, ensemble, seed)`` gives everything the page shows."""

    def __init__(self, predictor: Any, label: str = "") -> None:
        self.predictor = predictor
        self.label = label
        sampler = predictor.segmenter.sampler_cfg
        self.default_steps, self.default_ensemble = int(sampler.steps), int(sampler.ensemble_size)

    def segment(self, data: bytes, steps: int, ensemble: int, seed: int) -> dict[str, Any]:
        image = self.predictor.decode(data)  # ValueError with one line on bad input
        overrides = {"steps": int(steps), "ensemble_size": int(ensemble)}
        (prediction,) = self.predictor.predict([image], seed=int(seed), **overrides)
        h = prediction.height
        overlay = _enlarge(prediction.overlay(), h)
        layers = [
            (
                _enlarge(_mask_picture(image, m, LAYER_COLOURS[k % len(LAYER_COLOURS)]), h),
                f"layer {k}: {int(m.sum())} px",
            )
            for k, m in enumerate(prediction.layers)
        ]
        uncertainty = _enlarge(heat_map(prediction.peak_uncertainty()), h)
        doc = prediction.document()
        objects = [
            [o["id"], o["layer"], o["score"], o["visible_fraction"], o["area"], str(o["bbox"])]
            for o in doc["objects"]
        ]
        layer_of = {o["id"]: o["layer"] for o in doc["objects"]}
        edges = [[a, layer_of.get(a, -1), b, layer_of.get(b, -1)] for a, b in doc["occlusion_edges"]]
        summary = (
            f"{prediction.width}×{prediction.height} image"
            + (
                f" (segmented at {prediction.model_size}×{prediction.model_size})"
                if prediction.resized
                else ""
            )
            + f": {prediction.num_layers} layer(s), {len(objects)} object(s), "
            f"{len(edges)} occlusion edge(s); {doc['unet_passes']} UNet passes, stop: {doc['stop_reason']}"
        )
        return {
            "overlay": overlay,
            "layers": layers,
            "objects": objects,
            "edges": edges,
            "uncertainty": uncertainty,
            "summary": summary,
        }


def load(options: DemoOptions) -> DemoModel:
    """The model ``options`` name, loaded on its device, behind a ``Predictor``; ``UserError`` (one
    line) when there is none or ``$SAS_MAX_PIXELS`` is not a number."""
    from sas_model.checkpoint import load_segmenter  # torch: only once the page is served

    source = find_model(options.model, resolve_mlflow_uri(options.mlflow_uri), options.pretrained)
    try:
        max_pixels = options.max_pixels if options.max_pixels is not None else max_pixels_from_env()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    segmenter = load_segmenter(source.checkpoint_dir, device=options.device or models.inference_device())
    print(f"[demo] model {source.uri} on {segmenter.device}", flush=True)
    return DemoModel(Predictor(segmenter, max_pixels=max_pixels or None), label=source.uri)


# ---- the page ---------------------------------------------------------------------------------------
def examples() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []


def build_demo(model: DemoModel) -> Any:
    """The Gradio ``Blocks`` page; its API endpoint is ``/segment`` (file, steps, ensemble, seed)."""
    import gradio as gr

    def run(path: str | None, steps: float, ensemble: float, seed: float):
        if not path:
            raise gr.Error("upload an image or pick an example first")
        try:
            data = Path(path).read_bytes()
            out = model.segment(data, int(steps), int(ensemble), int(seed))
        except (OSError, ValueError) as exc:
            raise gr.Error(" ".join(str(exc).split())[:300]) from None
        return out["overlay"], out["layers"], out["objects"], out["edges"], out["uncertainty"], out["summary"]

    with gr.Blocks(title="Sequential amodal segmentation") as demo:
        gr.Markdown(
            "# Sequential amodal segmentation\n"
            f"Model: `{model.label}`. Upload an image (any size; it is segmented at the model's "
            f"{model.predictor.size}×{model.predictor.size} and the masks are resized back) or pick an "
            "example. Layer 0 is the front: objects nothing hides."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image", file_types=["image"], type="filepath", elem_id="upload")
                steps = gr.Slider(1, 50, value=model.default_steps, step=1, label="sampler steps per layer")
                ensemble = gr.Slider(1, 8, value=model.default_ensemble, step=1, label="ensemble size")
                seed = gr.Number(value=0, precision=0, label="seed")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                if examples():
                    gr.Examples(examples=examples(), inputs=upload, label="examples (rendered scenes)")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="summary")
                overlay = gr.Image(
                    label="layers over the image (white: object outlines) | uncertainty",
                    elem_id="overlay",
                    format="png",
                )
                layers = gr.Gallery(
                    label="layer masks (front first)", columns=4, height=230, elem_id="layers"
                )
        with gr.Row():
            objects = gr.Dataframe(headers=OBJECT_HEADERS, label="objects", elem_id="objects")
            edges = gr.Dataframe(headers=EDGE_HEADERS, label="occlusion edges", elem_id="edges")
            uncertainty = gr.Image(label="uncertainty (ensemble variance, white = 0.25)", format="png")
        button.click(
            run,
            inputs=[upload, steps, ensemble, seed],
            outputs=[overlay, layers, objects, edges, uncertainty, summary],
            api_name="segment",
        )
    return demo


def serve(options: DemoOptions) -> None:
    """Load the model, build the page and serve it on ``options.host:options.port`` until stopped;
    ``UserError`` (one line) when Gradio is missing or there is no model."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demo needs Gradio: pip install -e '.[demo]'") from None
    demo = build_demo(load(options))
    print(f"[demo] http://{options.host}:{options.port}", flush=True)
    demo.queue(default_concurrency_limit=1).launch(server_name=options.host, server_port=options.port)
