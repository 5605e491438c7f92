"""Schema encode/decode, and the plain-pyarrow reader on a small dataset written without Ray."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth import reader
from synth.generate import write_manifest
from synth.reader import DatasetError
from synth.render import RenderConfig, render_scenes
from synth.schema import (
    ARROW_SCHEMA,
    SCHEMA_VERSION,
    decode_png,
    decode_scene,
    encode_png,
    encode_scene,
    pack_masks,
    scenes_to_table,
    unpack_masks,
)
from synth.shards import JobConfig, shard_name, write_shard

FIELDS = (
    "image",
    "amodal_masks",
    "visible_masks",
    "object_depth",
    "object_layer",
    "occlusion_edges",
    "layer_masks",
    "cumulative_masks",
)


def assert_same_scene(a, b) -> None:
    assert (a.scene_id, a.split, a.has_instances, a.source) == (
        b.scene_id,
        b.split,
        b.has_instances,
        b.source,
    )
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_encode_decode_round_trip_is_exact():
    for scene in render_scenes(1, 0, 8, RenderConfig(size=48)):
        row = encode_scene(scene)
        assert set(row) == set(ARROW_SCHEMA.names)
        assert_same_scene(decode_scene(row), scene)


def test_column_wise_table_equals_row_encoding_and_round_trips_through_parquet(tmp_path):
    scenes = render_scenes(2, 10, 12)
    table = scenes_to_table(scenes)
    assert table.equals(pa.Table.from_pylist([encode_scene(s) for s in scenes], schema=ARROW_SCHEMA))
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.schema.metadata[b"synth.schema_version"] == str(SCHEMA_VERSION).encode()
    for scene, row in zip(scenes, back.to_pylist(), strict=True):
        assert_same_scene(decode_scene(row), scene)


def test_png_is_standard_and_masks_pack_eight_per_byte():
    image = np.random.default_rng(0).integers(0, 256, (37, 21, 3), dtype=np.uint8)
    data = encode_png(image)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
    np.testing.assert_array_equal(decode_png(data), image)
    masks = np.random.default_rng(1).random((3, 5, 7)) < 0.5
    packed = pack_masks(masks)
    assert len(packed) == -(-masks.size // 8)
    np.testing.assert_array_equal(unpack_masks(packed, 3, 5, 7), masks)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 3-shard dataset (70 scenes at 32x32) written in-process, as generate.py's workers do."""
    out = str(tmp_path_factory.mktemp("ds"))
    job = JobConfig(n=70, seed=5, shard_size=30, render=RenderConfig(size=32))
    stats = {i: write_shard(out, None, job, i) for i in range(job.num_shards)}
    write_manifest(out, None, job, stats)
    return out, job


def test_reader_yields_the_rendered_scenes_in_order(dataset):
    out, job = dataset
    manifest = reader.check_dataset(out)
    assert manifest["num_scenes"] == 70 and sum(manifest["counts"].values()) == 70
    assert sum(manifest["objects_per_scene_histogram"].values()) == 70
    scenes = list(reader.iter_scenes(out))
    assert [s.scene_id for s in scenes] == list(range(70))
    for got, expected in zip(scenes[::7], render_scenes(job.seed, 0, 70, job.render)[::7], strict=True):
        assert_same_scene(got, expected)
    val = list(reader.iter_scenes(out, split="val"))
    assert all(s.split == "val" for s in val) and len(val) == manifest["counts"]["val"]


def test_expand_batch_gives_one_sample_per_layer_plus_terminal(dataset):
    out, _ = dataset
    table = pq.read_table(f"{out}/{shard_name(0)}").slice(0, 5)
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    samples = reader.expand_batch_to_samples(batch)
    layers = batch["num_layers"]
    assert len(samples["image"]) == int((layers + 1).sum())
    assert samples["image"].dtype == np.uint8 and samples["layer_mask"].dtype == np.uint8
    assert samples["is_terminal"].sum() == 5
    assert not samples["layer_mask"][samples["is_terminal"]].any()
    first = decode_scene(table.to_pylist()[0])
    for k, sample in enumerate(reader.scene_to_samples(first)):
        np.testing.assert_array_equal(samples["cumulative_mask"][k], sample.cumulative_mask)
        np.testing.assert_array_equal(samples["layer_mask"][k], sample.layer_mask)
        assert samples["layer_index"][k] == sample.layer_index
        np.testing.assert_array_equal(samples["occlusion"][k], sample.occlusion)
        np.testing.assert_array_equal(samples["foreground"][k], first.cumulative_masks[-1])
    assert samples["foreground"].dtype == np.uint8


def test_check_dataset_reports_one_line_errors(tmp_path, dataset):
    out, job = dataset
    with pytest.raises(DatasetError, match="no manifest.json"):
        reader.check_dataset(str(tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads(open(f"{out}/manifest.json").read())
    for name in [s["file"] for s in manifest["shards"]]:
        (broken / name).write_bytes(open(f"{out}/{name}", "rb").read())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(DatasetError, match="schema version 99"):
        reader.check_dataset(str(broken))
    (broken / "manifest.json").write_text(json.dumps({**manifest, "shards": [], "num_scenes": 0}))
    with pytest.raises(DatasetError, match="empty"):
        reader.check_dataset(str(broken))
    (broken / "manifest.json").write_text(json.dumps(manifest))
    (broken / shard_name(1)).write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match=f"{shard_name(1)}.*corrupt") as info:
        reader.check_dataset(str(broken))
    assert "\n" not in str(info.value)


def test_the_manifest_is_typed_and_reads_back_as_the_json_it_was(dataset):
    import json
    from pathlib import Path

    from pipelines.tracking.lineage import manifest_digest
    from synth.schema import Manifest

    out, job = dataset
    stored = json.loads((Path(out) / "manifest.json").read_text())
    manifest = reader.load_manifest(out)
    assert isinstance(manifest, Manifest) and manifest.to_dict() == stored  # the digest does not move
    assert manifest_digest(manifest) == manifest_digest(stored)
    assert manifest.num_scenes == 70 and manifest.split_count("train") == stored["counts"]["train"]
    assert manifest.family == "textured" and len(manifest.shard_files) == job.num_shards
    assert manifest["counts"] == stored["counts"] and manifest.get("nosuch") is None  # still a mapping
    # a manifest written before families, with a key this code does not know: read and kept
    old = {k: v for k, v in stored.items() if k != "config"} | {"config": {"size": 32}, "future": 1}
    assert Manifest.from_dict(old).to_dict() == old and Manifest.from_dict(old).family == "textured"
    imported = Manifest.from_dict(
        stored | {"config": {"source": "coco"}, "source": "coco", "import_report": {}}
    )
    assert imported.family is None and imported.to_dict()["source"] == "coco"
