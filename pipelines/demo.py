"""A demo page: drop an image, see its layers (Gradio; optional extra ``pip install -e '.[demo]'``).

    python pipelines/demo.py                       # the registered champion, else the shipped model
    python pipelines/demo.py --model models:/sas@champion --port 7860
    python pipelines/demo.py --model runs/main-tiny-flat      # a Ray Train run folder or checkpoint
    python pipelines/demo.py --model 0123456789abcdef0123456789abcdef   # an MLflow run id

The page shows the overlay of the layers (object outlines in white) next to the uncertainty map,
each layer's mask, the per-object list (layer, score, visible fraction, area) and the occlusion
edges; the sampler's steps, the ensemble size and the seed are adjustable. Images of any size and
mode are decoded and resized in and out by ``sas_model.predictor``, as ``predict.py`` and the served
model do; a non-image, an empty image or an image over ``--max-pixels`` is answered with an error
message on the page.

``--model`` default: ``models:/sas@champion`` from the tracking store (``--mlflow-uri``), else the
pretrained checkpoint at ``--pretrained`` (default ``$SAS_PRETRAINED_MODEL`` or
``models/pretrained``), else a one-line error. The server binds to 127.0.0.1 unless ``--host``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli.env import PRETRAINED_ENV, apply_env_defaults
from pipelines.tracking.store import resolve_mlflow_uri
from synth.cli import UserError, fail
from synth.ray_runtime import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "docs" / "demo" / "examples"
DISPLAY_MIN = 256  # small images are shown enlarged (nearest neighbour) to at least this many pixels
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# ---- model ------------------------------------------------------------------------------------------
def find_model(uri: str | None, tracking_uri: str, pretrained: str | None = None) -> Any:
    """``ModelSource`` for ``--model`` (a run id, ``runs:/``, ``models:/`` or a checkpoint path); with
    none, the registered champion, else the shipped pretrained checkpoint, else ``UserError``."""
    from pipelines.inference.models import default_model, resolve_model

    if uri:
        return resolve_model(f"runs:/{uri}/model" if RUN_ID.match(uri) else uri, tracking_uri)
    return default_model(tracking_uri, pretrained)


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
        from sas_model.overlay import LAYER_COLOURS, heat_map

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


OBJECT_HEADERS = ["object", "layer", "score", "visible fraction", "area (px)", "bbox [x0,y0,x1,y1]"]
EDGE_HEADERS = ["front object", "its layer", "hidden object", "its layer"]


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


# ---- CLI --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A demo page (Gradio) for the segmenter.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", metavar="URI", help="run id, runs:/ID/model, models:/NAME@ALIAS or a checkpoint path"
    )
    parser.add_argument(
        "--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)"
    )
    parser.add_argument(
        "--pretrained",
        help=f"checkpoint used when there is no champion (default ${PRETRAINED_ENV}, models/pretrained)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--max-pixels", type=int, help="largest image accepted, H×W (default $SAS_MAX_PIXELS or 4096²)"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    return parser


def load(args: argparse.Namespace) -> DemoModel:
    from pipelines.inference.models import inference_device
    from sas_model.checkpoint import load_segmenter
    from sas_model.predictor import Predictor, max_pixels_from_env

    source = find_model(args.model, resolve_mlflow_uri(args.mlflow_uri), args.pretrained)
    segmenter = load_segmenter(source.checkpoint_dir, device=args.device or inference_device())
    max_pixels = args.max_pixels if args.max_pixels is not None else max_pixels_from_env()
    print(f"[demo] model {source.uri} on {segmenter.device}", flush=True)
    return DemoModel(Predictor(segmenter, max_pixels=max_pixels or None), label=source.uri)


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        fail("the demo needs Gradio: pip install -e '.[demo]'")
    try:
        model = load(args)
    except UserError as exc:
        fail(str(exc))
    demo = build_demo(model)
    print(f"[demo] http://{args.host}:{args.port}", flush=True)
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
