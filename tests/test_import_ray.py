"""Imported datasets on Ray: the importers' Ray Data path (one task per shard) gives the same rows as
the in-process one, and what the pipelines read (train input stream, ``pipelines/evaluate.py``) works
on imported datasets. One local Ray for the whole module."""

from __future__ import annotations

import numpy as np
import pytest
from import_support import (
    SIZE,
    objects,
    write_coco,
    write_coco_from_dataset,
    write_image,
    write_reference_scene,
)

from synth import reader
from synth.import_dataset import main

pytestmark = pytest.mark.usefixtures("local_ray")  # conftest: one local Ray for the module


def test_ray_data_import_matches_the_in_process_import(capsys, tmp_path):
    source = tmp_path / "reference"
    for i in range(5):
        write_reference_scene(source, str(i), i % 3, seed=i)
    common = ["sas-folders", str(source), "--size", str(SIZE), "--shard-size", "2"]
    assert main([*common, "--out", str(tmp_path / "plain"), "--ray", "off"]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--ray", "on"]) == 0
    assert "(Ray Data)" in capsys.readouterr().out
    plain = reader.check_dataset(str(tmp_path / "plain"))
    ray = reader.check_dataset(str(tmp_path / "ray"))
    assert plain["shards"] == ray["shards"] and len(ray["shards"]) == 3
    for a, b in zip(
        reader.iter_scenes(str(tmp_path / "plain")), reader.iter_scenes(str(tmp_path / "ray")), strict=True
    ):
        assert a.scene_id == b.scene_id and np.array_equal(a.image, b.image)
        assert np.array_equal(a.cumulative_masks, b.cumulative_masks)


def test_imported_datasets_feed_the_training_input_pipeline(capsys, tmp_path):
    """What ``pipelines/train.py --data`` reads: the manifest check and the Ray Data sample stream
    (L + 1 samples per train scene, terminal included) work on imported datasets of both kinds."""
    from pipelines.training.data import build_train_dataset, check_dataset

    source = tmp_path / "reference"
    for i in range(4):
        write_reference_scene(source, str(i), i % 3, seed=i)
    assert main(["sas-folders", str(source), "--out", str(tmp_path / "sas"), "--split", "train"]) == 0
    images = tmp_path / "images"
    write_image(images, "a.png")
    anns = [{"image_id": 1, **obj} for obj in objects("order", list("ABC"))]
    ann = write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "split": "train"}], anns)
    assert main(["coco", str(ann), "--images", str(images), "--out", str(tmp_path / "coco")]) == 0
    for dataset in (tmp_path / "sas", tmp_path / "coco"):
        check_dataset(str(dataset))
        scenes = list(reader.iter_scenes(str(dataset), split="train"))
        batch = build_train_dataset(str(dataset)).take_batch(1000, batch_format="numpy")
        assert len(batch["image"]) == sum(s.num_layers + 1 for s in scenes)
        assert batch["image"].dtype == np.uint8 and batch["layer_mask"].shape[1:] == scenes[0].image.shape[:2]


@pytest.mark.slow
def test_evaluate_runs_on_imported_datasets_and_skips_instance_metrics_without_instances(capsys, tmp_path):
    """``pipelines/evaluate.py`` on a reference-layout import (layers only: no instance metrics) and a
    COCO import (instances), with an untrained full-frame ``tiny`` model (quality is not the point)."""
    import json

    from eval_support import FAST_SAMPLER, make_checkpoint
    from train_support import make_dataset

    from pipelines.evaluate import main as evaluate

    generated = make_dataset(tmp_path / "generated", n=6, shard_size=6)
    assert main(["export-sas", str(generated), "--out", str(tmp_path / "ref")]) == 0
    assert (
        main(["sas-folders", str(tmp_path / "ref"), "--out", str(tmp_path / "sas"), "--split", "test"]) == 0
    )
    ann = write_coco_from_dataset(str(generated), tmp_path / "coco", with_depth=False)
    coco_args = ["coco", str(ann), "--images", str(tmp_path / "coco" / "images"), "--split", "test"]
    assert main([*coco_args, "--out", str(tmp_path / "coco_pq")]) == 0
    checkpoint = make_checkpoint(tmp_path / "model", head_bias=1.0)
    for dataset, with_instances in ((tmp_path / "sas", 0), (tmp_path / "coco_pq", 6)):
        out = tmp_path / f"eval_{dataset.name}"
        args = ["--model", str(checkpoint), "--data", str(dataset), "--split", "test", "--out", str(out)]
        assert evaluate([*args, "--no-mlflow", *FAST_SAMPLER]) == 0, capsys.readouterr().err
        (summary,) = json.loads((out / "summary.json").read_text())["summaries"].values()
        assert summary["images"] == 6 and summary.get("images_with_instances", 0) == with_instances
        assert ("ap50" in summary) == bool(with_instances)  # layers-only rows: no instance metrics
        true_layers = [s.num_layers for s in reader.iter_scenes(str(dataset))]
        assert summary["layers_true_mean"] == pytest.approx(np.mean(true_layers))
