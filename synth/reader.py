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
from typing import Any, NamedTuple

import numpy as np

from synth.cli import one_line
from synth.layering import occlusion_maps
from synth.schema import COLUMNS, SCHEMA_VERSION, SCHEMA_VERSION_KEY, Manifest, Scene, decode_scene

MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.parquet$")


class Sample(NamedTuple):
    """One training sample: layer step ``k`` of a scene (``k = L``: the terminal sample, empty ``M_L``).

    ``image`` uint8[H,W,3]; ``cumulative_mask`` (``C_k``), ``layer_mask`` (``M_k``) and ``foreground``
    (``C_L``, every object) bool[H,W]; ``occlusion`` int8[3,H,W], the scene's
    :func:`synth.layering.occlusion_maps` (``visible_id`` is -1 everywhere when the scene has no
    per-object masks).
    """

    image: np.ndarray
    cumulative_mask: np.ndarray
    layer_mask: np.ndarray
    layer_index: int
    foreground: np.ndarray
    occlusion: np.ndarray


def scene_occlusion(scene: Scene) -> np.ndarray:
    """int8[3,H,W] occlusion maps of a scene (visible ids, visible layers, occluded-side borders)."""
    if not scene.has_instances or scene.num_objects == 0:
        unknown = np.full((3, scene.height, scene.width), -1, dtype=np.int8)
        if scene.has_instances:  # no objects: everything is background, nothing occluded
            unknown[0] = 0
        return unknown
    return occlusion_maps(scene.amodal_masks, scene.visible_masks, scene.object_layer).stacked()


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
        raise DatasetError(f"cannot list {path}: {one_line(exc)}") from None
    names = [info.base_name for info in infos if info.type == fs.FileType.File]
    return sorted(name for name in names if SHARD_PATTERN.match(name))


def load_manifest(path: str, endpoint_url: str | None = None) -> Manifest:
    """The dataset's typed ``manifest.json`` (``DatasetError`` if missing or unreadable)."""
    filesystem, root = open_filesystem(path, endpoint_url)
    try:
        with filesystem.open_input_stream(_join(root, MANIFEST_NAME)) as stream:
            manifest = json.loads(stream.read().decode())
    except FileNotFoundError:
        raise DatasetError(
            f"no {MANIFEST_NAME} in {path}: generate the dataset with synth/generate.py"
        ) from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {MANIFEST_NAME} in {path}: {one_line(exc)}") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{MANIFEST_NAME} in {path} is not a JSON object")
    return Manifest.from_dict(manifest)


def check_dataset(path: str, endpoint_url: str | None = None) -> Manifest:
    """Validate a dataset (manifest, schema version, every shard's footer); return the manifest.

    Raises ``DatasetError`` with one line: missing, empty, unknown schema version, corrupt shard.
    """
    import pyarrow.parquet as pq

    filesystem, root = open_filesystem(path, endpoint_url)
    manifest = load_manifest(path, endpoint_url)
    version = manifest.schema_version
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{path} has schema version {version!r}, this code reads version {SCHEMA_VERSION}: "
            "regenerate the dataset or use a matching checkout"
        )
    shards = manifest.shards
    if not shards or not manifest.num_scenes:
        raise DatasetError(f"dataset {path} is empty")
    for shard in shards:
        name = shard["file"] if isinstance(shard, dict) else str(shard)
        try:
            with filesystem.open_input_file(_join(root, name)) as handle:
                meta = pq.ParquetFile(handle).metadata
        except FileNotFoundError:
            raise DatasetError(f"shard {name} listed in the manifest is missing from {path}") from None
        except Exception as exc:
            raise DatasetError(f"shard {name} in {path} is corrupt: {one_line(exc)}") from None
        kv = meta.metadata or {}
        if kv.get(SCHEMA_VERSION_KEY) != str(SCHEMA_VERSION).encode():
            raise DatasetError(f"shard {name} in {path} has an unknown schema version")
        expected = shard.get("num_scenes") if isinstance(shard, dict) else None
        if expected is not None and meta.num_rows != expected:
            raise DatasetError(f"shard {name} in {path} has {meta.num_rows} rows, manifest says {expected}")
    return manifest


def _shard_names(path: str, endpoint_url: str | None) -> list[str]:
    try:
        names = load_manifest(path, endpoint_url).shard_files
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
        except Exception as exc:
            raise DatasetError(f"shard {name} in {path} cannot be read: {one_line(exc)}") from None
        with handle:
            for batch in parquet.iter_batches(batch_size=batch_size, columns=list(COLUMNS)):
                if split is not None:
                    batch = batch.filter(pc.equal(batch.column("split"), split))
                for row in batch.to_pylist():
                    yield decode_scene(row)


def sample_layers(num_layers: int, completion: bool = False) -> list[int]:
    """The layer indices k a scene with ``num_layers`` layers gives samples for: ``0..L`` (the last,
    k = L, the terminal sample), or with ``completion`` (a model whose order head decides the layers
    and whose diffusion UNet completes them) the layers with a hidden part, ``1..L-1``, or ``[0]``
    when there are none (the sample still trains the order head on the scene)."""
    if not completion:
        return list(range(num_layers + 1))
    return list(range(1, num_layers)) if num_layers >= 2 else [0]


def scene_to_samples(scene: Scene, completion: bool = False) -> list[Sample]:
    """``[Sample(k) for k in sample_layers(L, completion)]``; by default k = 0..L, the last (k = L) the
    terminal sample (empty ``M_L``)."""
    layers = scene.num_layers
    empty = np.zeros((scene.height, scene.width), dtype=bool)
    occlusion = scene_occlusion(scene)
    foreground = scene.cumulative_masks[-1]
    return [
        Sample(
            scene.image,
            scene.cumulative_masks[k],
            scene.layer_masks[k] if k < layers else empty,
            k,
            foreground,
            occlusion,
        )
        for k in sample_layers(layers, completion)
    ]


def expand_batch_to_samples(batch: dict[str, np.ndarray], completion: bool = False) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches(batch_format="numpy")``: scene rows -> one row per (scene, k), k = 0..L
    (with ``completion``: the k of :func:`sample_layers`).

    Output: ``image`` uint8[B, H, W, 3], ``cumulative_mask``/``layer_mask`` uint8[B, H, W] (0/1),
    ``foreground`` uint8[B, H, W] (every object of the scene: ``C_L``, the same for all its samples;
    the target of the model's auxiliary foreground head), ``occlusion`` int8[B, 3, H, W] (the scene's
    occlusion maps, targets of the occlusion-cue module), ``layer_index`` int64[B], ``is_terminal``
    bool[B], ``scene_id`` int64[B].
    """
    samples: list[Sample] = []
    terminal: list[bool] = []
    ids: list[int] = []
    for i in range(len(batch["scene_id"])):
        scene = decode_scene({name: values[i] for name, values in batch.items()})
        expanded = scene_to_samples(scene, completion)
        samples += expanded
        terminal += [sample.layer_index == scene.num_layers for sample in expanded]
        ids += [scene.scene_id] * len(expanded)
    return {
        **collate_samples(samples),
        "is_terminal": np.array(terminal, dtype=bool),
        "scene_id": np.array(ids, dtype=np.int64),
    }


SAMPLE_DTYPES = {
    "image": np.uint8,
    "cumulative_mask": np.uint8,
    "layer_mask": np.uint8,
    "foreground": np.uint8,
    "occlusion": np.int8,
    "layer_index": np.int64,
}


def collate_samples(samples: list[Sample]) -> dict[str, np.ndarray]:
    """Stack samples into one array per :class:`Sample` field (masks as uint8 0/1, ``occlusion`` int8):
    the columns the training data carries, and the keyword arguments of ``SASModel.forward``."""
    if not samples:
        shapes = {"image": (0, 1, 1, 3), "occlusion": (0, 3, 1, 1), "layer_index": (0,)}
        return {name: np.zeros(shapes.get(name, (0, 1, 1)), dtype) for name, dtype in SAMPLE_DTYPES.items()}
    return {
        name: np.asarray([getattr(s, name) for s in samples]).astype(dtype, copy=False)
        for name, dtype in SAMPLE_DTYPES.items()
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
