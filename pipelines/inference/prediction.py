"""Batch prediction on Ray Data, what ``pipelines/predict.py`` calls: inputs listed (image files or
Parquet, local or ``s3://``), segmented in model-holding actors (``ImagePredictor``), each image's
folder written atomically, ``report.json`` last. ``predict.py``'s docstring describes the outputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

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
    check_sampler_overrides,
    cluster_gpus,
    resolve_gpus_per_worker,
)
from pipelines.inference.request import PredictRequest
from pipelines.tracking.store import resolve_mlflow_uri

# decoding and resizing in and out live in sas_model.predictor (shared with the MLflow pyfunc and the demo)
from sas_model.predictor import Predictor, decode_image, resize_result
from synth.cli import UserError
from synth.ray_runtime import init_ray
from synth.reader import DatasetError, open_filesystem

IMAGE_COLUMNS = ("image", "image_png", "image_bytes", "bytes")
NAME_COLUMNS = ("name", "path", "scene_id")


# ---- per image (inside the actors) ----------------------------------------------------------------
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


def run(request: PredictRequest) -> dict[str, Any]:
    """Segment every input ``request`` names and write its folder; returns what ``report.json`` holds.
    One-line ``UserError`` on bad input (before Ray starts where it can be known then)."""
    request.validate()
    tracking_uri = resolve_mlflow_uri(request.mlflow_uri)
    source = resolve_model(request.model, tracking_uri) if request.model else default_model(tracking_uri)
    overrides = dict(request.sampler)
    check_sampler_overrides(source, overrides)
    out_dir = Path(request.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {request.out} is a file; pass a folder")
    listing = list_inputs(request.input, request.s3_endpoint)  # bad --input fails before Ray starts
    init_ray()
    gpus = resolve_gpus_per_worker(request.gpus_per_worker, cluster_gpus())
    dataset, count = image_dataset(listing, request.input, request.s3_endpoint, request.limit)
    print(
        f"[predict] {count} inputs from {request.input} with {source.uri}; "
        f"{request.workers} worker(s), {gpus:g} GPU(s) each",
        flush=True,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    predicted = dataset.map_batches(
        ImagePredictor,
        fn_constructor_kwargs={
            "source": source,
            "overrides": overrides,
            "seed": request.seed,
            "endpoint_url": request.s3_endpoint,
        },
        batch_size=request.batch,
        batch_format="numpy",
        compute=actor_pool(request.workers),
        **actor_resources(gpus),
    )
    written, skipped = [], []
    progress = Progress(count, "predict", unit="images", every=request.progress_every)
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
        "input": request.input,
        "sampler_overrides": overrides,
        "seed": request.seed,
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
            f"none of the {count} inputs in {request.input} could be read as an image "
            f"(see {out_dir}/report.json)"
        )
    return report
