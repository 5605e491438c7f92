"""Reading a generated dataset: manifest, checks, decoded scenes and training samples.

Plain pyarrow (no Ray) except :func:`read_dataset`, which imports Ray lazily. Paths are local
folders or ``s3://bucket/prefix`` (endpoint from the argument or ``AWS_ENDPOINT_URL``,
credentials from the standard AWS environment).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from synth.schema import COLUMNS, SCHEMA_VERSION, SCHEMA_VERSION_KEY, Scene, decode_scene, unpack_masks

MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.parquet$")
# (image, C_k, M_k, k), optionally + the scene's foreground C_L: see scene_to_samples
Sample = (
    tuple[np.ndarray, np.ndarray, np.ndarray, int]
    | tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]
)


class DatasetError(Exception):
    """A dataset that cannot be used; the message is one line saying what is wrong."""


def open_filesystem(path: str, endpoint_url: str | None = None, create_bucket: bool = False):
    """``(pyarrow.fs.FileSystem, path_in_fs)`` for a local path or ``s3://bucket/prefix``.

    S3: endpoint from ``endpoint_url`` or ``AWS_ENDPOINT_URL`` (else AWS), region from
    ``AWS_REGION``/``AWS_DEFAULT_REGION`` (default us-east-1), credentials from the usual AWS
    environment. Timeouts and retries are short so an unreachable endpoint fails in seconds.
    """
    from pyarrow import fs

    if path.startswith("s3://"):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        options: dict[str, Any] = {
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            "connect_timeout": 3.0,
            "request_timeout": 20.0,
            "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=2),
            "allow_bucket_creation": create_bucket,
        }
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            if not host:
                scheme, host = "https", endpoint
            options["endpoint_override"] = host.rstrip("/")
            options["scheme"] = scheme
        return fs.S3FileSystem(**options), path[len("s3://") :].rstrip("/")
    if "://" in path and not path.startswith("file://"):
        raise DatasetError(f"unsupported dataset location {path!r}: use a local folder or s3://bucket/prefix")
    local = path[len("file://") :] if path.startswith("file://") else path
    return fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if base else name


def list_shards(path: str, endpoint_url: str | None = None) -> list[str]:
    """Sorted shard file names (``shard-00000.parquet`` ...) directly under ``path``."""
    from pyarrow import fs

    filesystem, root = open_filesystem(path, endpoint_url)
    try:
        infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    except OSError as exc:
        raise DatasetError(f"cannot list {path}: {_one_line(exc)}") from None
    names = [info.base_name for info in infos if info.type == fs.FileType.File]
    return sorted(name for name in names if SHARD_PATTERN.match(name))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def load_manifest(path: str, endpoint_url: str | None = None) -> dict:
    """The dataset's ``manifest.json`` as a dict (``DatasetError`` if missing or unreadable)."""
    filesystem, root = open_filesystem(path, endpoint_url)
    try:
        with filesystem.open_input_stream(_join(root, MANIFEST_NAME)) as stream:
            manifest = json.loads(stream.read().decode())
    except FileNotFoundError:
        raise DatasetError(
            f"no {MANIFEST_NAME} in {path}: generate the dataset with synth/generate.py"
        ) from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {MANIFEST_NAME} in {path}: {_one_line(exc)}") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{MANIFEST_NAME} in {path} is not a JSON object")
    return manifest


def check_dataset(path: str, endpoint_url: str | None = None) -> dict:
    """Validate a dataset (manifest, schema version, every shard's footer); return the manifest.

    Raises ``DatasetError`` with one line: missing, empty, unknown schema version, corrupt shard.
    """
    import pyarrow.parquet as pq

    filesystem, root = open_filesystem(path, endpoint_url)
    manifest = load_manifest(path, endpoint_url)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{path} has schema version {version!r}, this code reads version {SCHEMA_VERSION}: "
            "regenerate the dataset or use a matching checkout"
        )
    shards = manifest.get("shards") or []
    if not shards or not manifest.get("num_scenes"):
        raise DatasetError(f"dataset {path} is empty")
    for shard in shards:
        name = shard["file"] if isinstance(shard, dict) else str(shard)
        try:
            with filesystem.open_input_file(_join(root, name)) as handle:
                meta = pq.ParquetFile(handle).metadata
        except FileNotFoundError:
            raise DatasetError(f"shard {name} listed in the manifest is missing from {path}") from None
        except Exception as exc:  # noqa: BLE001 - any read failure means a corrupt shard
            raise DatasetError(f"shard {name} in {path} is corrupt: {_one_line(exc)}") from None
        kv = meta.metadata or {}
        if kv.get(SCHEMA_VERSION_KEY) != str(SCHEMA_VERSION).encode():
            raise DatasetError(f"shard {name} in {path} has an unknown schema version")
        expected = shard.get("num_scenes") if isinstance(shard, dict) else None
        if expected is not None and meta.num_rows != expected:
            raise DatasetError(f"shard {name} in {path} has {meta.num_rows} rows, manifest says {expected}")
    return manifest


def _shard_names(path: str, endpoint_url: str | None) -> list[str]:
    try:
        manifest = load_manifest(path, endpoint_url)
        names = [s["file"] if isinstance(s, dict) else str(s) for s in manifest.get("shards", [])]
    except DatasetError:
        names = list_shards(path, endpoint_url)
    if not names:
        raise DatasetError(f"no shards found in {path}")
    return names


def iter_scenes(
    path: str, split: str | None = None, endpoint_url: str | None = None, batch_size: int = 256
) -> Iterator[Scene]:
    """Decoded scenes in shard order; ``split`` ("train"/"val"/"test") filters rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    filesystem, root = open_filesystem(path, endpoint_url)
    for name in _shard_names(path, endpoint_url):
        try:
            handle = filesystem.open_input_file(_join(root, name))
            parquet = pq.ParquetFile(handle)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"shard {name} in {path} cannot be read: {_one_line(exc)}") from None
        with handle:
            for batch in parquet.iter_batches(batch_size=batch_size, columns=list(COLUMNS)):
                if split is not None:
                    batch = batch.filter(pc.equal(batch.column("split"), split))
                for row in batch.to_pylist():
                    yield decode_scene(row)


def scene_to_samples(scene: Scene, with_foreground: bool = False) -> list[Sample]:
    """``[(image, C_k, M_k, k) for k = 0..L]``; the last (k = L) is the terminal sample (empty M_L).

    ``with_foreground`` appends the scene's foreground ``C_L`` (every object) to each sample, as the
    ``foreground`` column of ``expand_batch_to_samples`` does.
    """
    layers = scene.num_layers
    empty = np.zeros((scene.height, scene.width), dtype=bool)
    extra = (scene.cumulative_masks[-1],) if with_foreground else ()
    samples: list[Sample] = []
    for k in range(layers + 1):
        layer_mask = scene.layer_masks[k] if k < layers else empty
        samples.append((scene.image, scene.cumulative_masks[k], layer_mask, k, *extra))
    return samples


def expand_batch_to_samples(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches(batch_format="numpy")``: scene rows -> one row per (scene, k), k = 0..L.

    Output: ``image`` uint8[B, H, W, 3], ``cumulative_mask``/``layer_mask`` uint8[B, H, W] (0/1),
    ``foreground`` uint8[B, H, W] (every object of the scene: ``C_L``, the same for all its samples;
    the target of the model's auxiliary foreground head), ``layer_index`` int64[B], ``is_terminal``
    bool[B], ``scene_id`` int64[B].
    """
    from synth.schema import decode_png

    images, cumulative, layer, foreground, index, terminal, ids = [], [], [], [], [], [], []
    for i in range(len(batch["scene_id"])):
        height, width = int(batch["height"][i]), int(batch["width"][i])
        layers = int(batch["num_layers"][i])
        image = decode_png(bytes(batch["image_png"][i]))
        c_k = unpack_masks(bytes(batch["cumulative_masks"][i]), layers + 1, height, width)
        m_k = unpack_masks(bytes(batch["layer_masks"][i]), layers, height, width)
        m_k = np.concatenate([m_k, np.zeros((1, height, width), dtype=bool)])
        images.append(np.broadcast_to(image, (layers + 1, height, width, 3)))
        cumulative.append(c_k)
        layer.append(m_k)
        foreground.append(np.broadcast_to(c_k[-1], (layers + 1, height, width)))
        index.append(np.arange(layers + 1, dtype=np.int64))
        terminal.append(np.arange(layers + 1) == layers)
        ids.append(np.full(layers + 1, int(batch["scene_id"][i]), dtype=np.int64))
    if not images:
        return {
            "image": np.zeros((0, 1, 1, 3), np.uint8),
            "cumulative_mask": np.zeros((0, 1, 1), np.uint8),
            "layer_mask": np.zeros((0, 1, 1), np.uint8),
            "foreground": np.zeros((0, 1, 1), np.uint8),
            "layer_index": np.zeros(0, np.int64),
            "is_terminal": np.zeros(0, bool),
            "scene_id": np.zeros(0, np.int64),
        }
    return {
        "image": np.concatenate(images).astype(np.uint8),
        "cumulative_mask": np.concatenate(cumulative).astype(np.uint8),
        "layer_mask": np.concatenate(layer).astype(np.uint8),
        "foreground": np.concatenate(foreground).astype(np.uint8),
        "layer_index": np.concatenate(index),
        "is_terminal": np.concatenate(terminal),
        "scene_id": np.concatenate(ids),
    }


def read_dataset(path: str, split: str | None = None, endpoint_url: str | None = None):
    """A ``ray.data.Dataset`` of scene rows (``synth.schema`` columns), filtered by ``split``."""
    import ray.data

    filesystem, root = open_filesystem(path, endpoint_url)
    files = [_join(root, name) for name in _shard_names(path, endpoint_url)]
    dataset = ray.data.read_parquet(files, filesystem=filesystem)
    if split is not None:
        from ray.data.expressions import col

        dataset = dataset.filter(expr=col("split") == split)
    return dataset
