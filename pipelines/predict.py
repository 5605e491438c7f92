"""Batch prediction with Ray Data: images of any size in, layers / objects / uncertainty / JSON out.

    python pipelines/predict.py --model models:/sas@champion --input photos/ --out outputs/pred
    python pipelines/predict.py --model runs/sas-tiny --input data/shapes --out outputs/pred --limit 20
    python pipelines/predict.py --model models:/sas/3 --input s3://bucket/images --out outputs/pred

``--input`` is a folder (searched recursively) or a single file, local or ``s3://``, of image files
(anything Pillow reads: PNG, JPEG, BMP, TIFF, WebP, ...; RGBA/greyscale/palette become RGB), or
Parquet: a synth dataset folder (``manifest.json``, column ``image_png``) or Parquet files with a
binary ``image`` / ``image_png`` column (names from ``name`` / ``path`` / ``scene_id`` when present).

**Sizes.** The model works at its training size S×S (64 for the presets). Every image is resized
to S×S (bilinear; the aspect ratio is not kept), segmented there, and every mask is resized back to
the image's own H×W (bilinear on 0/1, thresholded at 0.5; the uncertainty map bilinear). Boxes,
areas and visible fractions are measured on the resized-back masks, in the original pixels, so
detail finer than about H/S pixels is not resolved.

Per image, in ``--out/<name>/`` (``<name>``: the path relative to ``--input`` without extension,
``/`` → ``__``; the extension is kept when two inputs would collide):

- ``layer_<k>.png`` (front layer 0), ``object_<id>.png`` (amodal mask per object), 0/255 greyscale;
- ``uncertainty.png``: heat map of the ensemble variance (max over layers; white = 0.25, the most);
- ``overlay.png``: layers tinted over the image with object outlines | the uncertainty heat map;
- ``result.json``: size, layers, objects (``id``, ``layer``, ``score``, ``bbox`` ``[x0, y0, x1, y1]``
  exclusive, ``area``, ``visible_area``, ``visible_fraction``, mask file) and ``occlusion_edges``
  (``[front_id, back_id]``).

Each image folder appears complete or not at all (built aside, then renamed); ``report.json`` lists
what was written and what was skipped. Files that cannot be read or decoded as images are
reported (``[predict] skipped ...``) and skipped; they never stop the batch.

Exit status: 0 done (even with skipped files), 1 failed, 2 bad input or no readable image.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli.env import apply_env_defaults
from pipelines.cli.files import replace_dir_atomic, write_text_atomic
from pipelines.cli.progress import Progress
from pipelines.inference.models import (
    ModelSource,
    default_model,
    describe_device,
    load_source_segmenter,
    resolve_model,
)
from pipelines.inference.options import (
    actor_pool,
    actor_resources,
    add_model_args,
    add_resource_args,
    add_sampler_args,
    check_sampler_overrides,
    cluster_gpus,
    resolve_gpus_per_worker,
    sampler_overrides,
)
from pipelines.tracking.store import resolve_mlflow_uri

# decoding and resizing in and out live in sas_model.predictor (shared with the MLflow pyfunc and the demo)
from sas_model.predictor import (
    Predictor,
    decode_image,
    resize_float,
    resize_image,
    resize_mask,
    resize_result,
)
from synth.cli import UserError, fail, parse_number
from synth.ray_runtime import init_ray

IMAGE_COLUMNS = ("image", "image_png", "image_bytes", "bytes")
NAME_COLUMNS = ("name", "path", "scene_id")


# ---- per image (inside the actors) ----------------------------------------------------------------
__all__ = ["decode_image", "image_outputs", "main", "resize_float", "resize_image", "resize_mask"]


def image_outputs(image: np.ndarray, result: Any, meta: dict[str, Any]) -> dict[str, bytes]:
    """All files of one image (name → bytes), masks resized back to ``image``'s size."""
    return resize_result(image, result, int(meta.get("model_size", 0))).files(meta)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class ImagePredictor:
    """Ray Data actor: holds one segmenter. Rows ``name`` + (``source`` path | ``data`` bytes) in;
    ``name``, ``source``, ``error`` ("" when fine) and ``files`` (a zip of the image's outputs) out."""

    def __init__(
        self, source: ModelSource, overrides: dict[str, Any], seed: int, endpoint_url: str | None
    ) -> None:
        self.segmenter = load_source_segmenter(source)
        self.predictor = Predictor(self.segmenter)
        self.size = self.predictor.size
        print(f"[predict] model actor on {describe_device(self.segmenter.device)}", flush=True)
        self.overrides, self.seed, self.endpoint_url = dict(overrides), seed, endpoint_url
        self.sampler = self.segmenter.resolve(**self.overrides)
        self._filesystem: Any = None

    def _read(self, source: str) -> bytes:
        from synth.reader import open_filesystem

        if self._filesystem is None:
            self._filesystem = open_filesystem(source, self.endpoint_url)[0]
        path = source[len("s3://") :] if source.startswith("s3://") else source
        with self._filesystem.open_input_stream(path) as stream:
            return stream.read()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [str(n) for n in batch["name"]]
        sources = [str(s) for s in batch["source"]]
        errors, images = [""] * len(names), [None] * len(names)
        for i in range(len(names)):
            try:
                data = bytes(batch["data"][i]) if "data" in batch else self._read(sources[i])
                images[i] = decode_image(data)
            except (OSError, ValueError) as exc:
                errors[i] = " ".join(str(exc).split())[:200] or type(exc).__name__
        good = [i for i in range(len(names)) if not errors[i]]
        blobs = [b""] * len(names)
        if good:
            predictions = self.predictor.predict([images[i] for i in good], seed=self.seed, **self.overrides)
            sampler = {
                "name": self.sampler.name,
                "steps": self.sampler.steps,
                "ensemble": self.sampler.ensemble_size,
            }
            for i, prediction in zip(good, predictions, strict=True):
                meta = {
                    "source": sources[i],
                    "name": names[i],
                    "model_size": self.size,
                    "resized": prediction.resized,
                    "seed": self.seed,
                    "sampler": sampler,
                }
                blobs[i] = _zip(prediction.files(meta))
        return {
            "name": np.array(names, dtype=object),
            "source": np.array(sources, dtype=object),
            "error": np.array(errors, dtype=object),
            "files": np.array(blobs, dtype=object),
        }


# ---- inputs (driver) ------------------------------------------------------------------------------
def output_names(relative_paths: list[str]) -> list[str]:
    """Folder name per input: relative path without extension, ``/`` → ``__``; extension kept on a clash."""
    stems = [p.rsplit(".", 1)[0] if "." in Path(p).name else p for p in relative_paths]
    stems = [s.replace("/", "__") for s in stems]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return [
        (p.replace("/", "__").replace(".", "_") if counts[s] > 1 else s) or "image"
        for p, s in zip(relative_paths, stems, strict=True)
    ]


def list_inputs(path: str, endpoint_url: str | None) -> tuple[str, list[str], list[str]]:
    """``(kind, full_paths, relative_paths)``, kind ``parquet`` or ``images``; hidden files left out."""
    from pyarrow import fs

    from synth.reader import DatasetError, open_filesystem

    try:
        filesystem, root = open_filesystem(path, endpoint_url)
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.NotFound:
            raise UserError(f"--input {path} does not exist")
        if info.type == fs.FileType.File:
            entries = [info]
            base = root.rsplit("/", 1)[0] if "/" in root else ""
        else:
            entries = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
            base = root
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot list --input {path}: {' '.join(str(exc).split())[:200]}") from None
    files = sorted(e.path for e in entries if e.type == fs.FileType.File)
    relative = [f[len(base) :].lstrip("/") if base else f for f in files]
    keep = [i for i, r in enumerate(relative) if not any(part.startswith(".") for part in r.split("/"))]
    files, relative = [files[i] for i in keep], [relative[i] for i in keep]
    scheme = "s3://" if path.startswith("s3://") else ""
    files = [scheme + f for f in files]
    parquet = [i for i, r in enumerate(relative) if r.endswith(".parquet")]
    if parquet and (len(parquet) == len(relative) or "manifest.json" in relative):
        return "parquet", [files[i] for i in parquet], [relative[i] for i in parquet]
    if not files:
        raise UserError(f"--input {path} holds no files; pass a folder of images, an image or Parquet")
    return "images", files, relative


def image_dataset(
    listing: tuple[str, list[str], list[str]], path: str, endpoint_url: str | None, limit: int | None
):
    """Ray Dataset of ``{name, source}`` (images) or ``{name, source, data}`` (Parquet) rows; its size."""
    import ray.data

    kind, files, relative = listing
    if kind == "images":
        if limit:
            files, relative = files[:limit], relative[:limit]
        items = [{"name": n, "source": f} for n, f in zip(output_names(relative), files, strict=True)]
        return ray.data.from_items(items), len(items)
    return parquet_dataset(path, files, endpoint_url, limit)


def parquet_dataset(
    path: str, files: list[str], endpoint_url: str | None, limit: int | None
) -> tuple[Any, int]:
    import pyarrow.parquet as pq
    import ray.data

    from synth.reader import open_filesystem

    filesystem, _ = open_filesystem(path, endpoint_url)
    strip = (lambda f: f[len("s3://") :]) if path.startswith("s3://") else (lambda f: f)
    schema = pq.read_schema(filesystem.open_input_file(strip(files[0])))
    image_col = next((c for c in IMAGE_COLUMNS if c in schema.names), None)
    if image_col is None:
        raise UserError(f"Parquet in {path} has no image column (one of {', '.join(IMAGE_COLUMNS)})")
    name_col = next((c for c in NAME_COLUMNS if c in schema.names), None)
    dataset = ray.data.read_parquet([strip(f) for f in files], filesystem=filesystem).select_columns(
        [image_col] + ([name_col] if name_col else [])
    )
    if limit:
        dataset = dataset.limit(limit)

    def to_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        data = [bytes(d) for d in batch[image_col]]
        if name_col == "scene_id":
            names = [f"scene_{int(v):06d}" for v in batch[name_col]]
        elif name_col:
            names = [str(v).replace("/", "__").rsplit(".", 1)[0] for v in batch[name_col]]
        else:
            names = [hashlib.sha1(d).hexdigest()[:12] for d in data]
        return {
            "name": np.array(names, dtype=object),
            "source": np.array([f"{path}#{n}" for n in names], dtype=object),
            "data": np.array(data, dtype=object),
        }

    dataset = dataset.map_batches(to_rows, batch_format="numpy").materialize()
    return dataset, dataset.count()


# ---- driver ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Segment images layer by layer with Ray Data; write masks, overlays and JSON per image.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser)
    parser.add_argument("--input", required=True, help="image folder/file or Parquet, local or s3://")
    parser.add_argument("--out", required=True, help="output folder (local)")
    parser.add_argument("--limit", type=parse_number, help="only the first N inputs")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)")
    add_sampler_args(parser)
    add_resource_args(parser)
    parser.add_argument("--workers", type=int, default=1, help="Ray Data actors holding a model (default 1)")
    parser.add_argument("--batch", type=int, default=16, help="images per actor batch (default 16)")
    return parser


def write_image_folder(out_dir: Path, name: str, blob: bytes) -> Path:
    """Unpack one image's zip into ``out_dir/.<name>.tmp-*``, then rename it to ``out_dir/<name>``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            archive.extractall(staging)
        return replace_dir_atomic(staging, out_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.workers < 1 or args.batch < 1:
        raise UserError("--workers and --batch must be at least 1")
    tracking_uri = resolve_mlflow_uri(args.mlflow_uri)
    source = resolve_model(args.model, tracking_uri) if args.model else default_model(tracking_uri)
    overrides = sampler_overrides(vars(args))
    check_sampler_overrides(source, overrides)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {args.out} is a file; pass a folder")
    listing = list_inputs(args.input, args.s3_endpoint)  # bad --input fails before Ray starts
    init_ray()
    gpus = resolve_gpus_per_worker(args.gpus_per_worker, cluster_gpus())
    dataset, count = image_dataset(listing, args.input, args.s3_endpoint, args.limit)
    print(
        f"[predict] {count} inputs from {args.input} with {source.uri}; "
        f"{args.workers} worker(s), {gpus:g} GPU(s) each",
        flush=True,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    predicted = dataset.map_batches(
        ImagePredictor,
        fn_constructor_kwargs={
            "source": source,
            "overrides": overrides,
            "seed": args.seed,
            "endpoint_url": args.s3_endpoint,
        },
        batch_size=args.batch,
        batch_format="numpy",
        compute=actor_pool(args.workers),
        **actor_resources(gpus),
    )
    written, skipped = [], []
    progress = Progress(count, "predict", unit="images", every=args.progress_every)
    for batch in predicted.iter_batches(batch_size=None, batch_format="numpy"):
        progress.update(len(batch["name"]))
        for name, src, error, blob in zip(
            batch["name"], batch["source"], batch["error"], batch["files"], strict=True
        ):
            if error:
                skipped.append({"source": str(src), "error": str(error)})
                print(f"[predict] skipped {src}: {error}", flush=True)
                continue
            write_image_folder(out_dir, str(name), bytes(blob))
            written.append({"source": str(src), "name": str(name)})
    progress.close()
    seconds = time.time() - start
    report = {
        "model": source.uri,
        "input": args.input,
        "sampler_overrides": overrides,
        "seed": args.seed,
        "written": sorted(written, key=lambda r: r["name"]),
        "skipped": sorted(skipped, key=lambda r: r["source"]),
        "seconds": round(seconds, 2),
    }
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2))
    print(
        f"[predict] {len(written)} images written to {out_dir.resolve()}, {len(skipped)} skipped, "
        f"{seconds:.1f} s",
        flush=True,
    )
    if not written:
        raise UserError(
            f"none of the {count} inputs in {args.input} could be read as an image "
            f"(see {out_dir}/report.json)"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as exc:
        fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
