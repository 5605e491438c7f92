"""COCO-style amodal import: fixtures built here (polygons, RLE, order fields, COCOA regions with
depth constraints, a cycle, unsafe and missing file names, malformed JSON), run in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from import_support import (
    RECTS,
    amodal_masks,
    objects,
    polygon,
    rect_mask,
    visible_masks,
    write_coco,
    write_coco_from_dataset,
    write_image,
)

from synth import reader
from synth.generate import write_manifest
from synth.import_dataset import main
from synth.importers.masks import encode_rle
from synth.render import RenderConfig
from synth.shards import JobConfig, write_shard

TARGET = 32  # imported size


def run(capsys, ann: Path, images: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["coco", str(ann), "--images", str(images), "--out", str(out), "--size", str(TARGET), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def layers_by_name(scene, order: list[str]) -> dict[str, int]:
    return {name: int(scene.object_layer[i]) for i, name in enumerate(order)}


@pytest.mark.parametrize(
    "style,order",
    [
        ("polygons+inmodal", ["C", "A", "B"]),
        ("rle+visible", ["B", "C", "A"]),
        ("order", ["C", "B", "A"]),
    ],
)
def test_depth_comes_from_visible_masks_or_order_fields_whatever_the_listing(capsys, tmp_path, style, order):
    images = tmp_path / "images"
    write_image(images, "a.png")
    anns = [{"image_id": 1, **obj} for obj in objects(style, order)]
    ann = write_coco(tmp_path, [{"id": 1, "file_name": "a.png"}], anns)
    code, _, err = run(capsys, ann, images, tmp_path / "out")
    assert code == 0, err
    (scene,) = list(reader.iter_scenes(str(tmp_path / "out")))
    assert layers_by_name(scene, order) == {"A": 0, "B": 1, "C": 2}
    assert scene.has_instances and scene.source == "coco" and scene.image.shape == (TARGET, TARGET, 3)
    # masks resized nearest from the full-size rasters
    expected = amodal_masks()[order[0]][1::2, 1::2]
    assert np.array_equal(scene.amodal_masks[0], expected)


def test_cocoa_regions_with_depth_constraints_and_a_cycle(capsys, tmp_path):
    images = tmp_path / "images"
    write_image(images, "ok.png", 1)
    write_image(images, "cycle.png", 2)
    regions = [{"segmentation": polygon(*RECTS[n])[0], "order": i + 1} for i, n in enumerate("ABC")]
    annotations = [
        {"image_id": 10, "regions": regions, "depth_constraint": "1-2,2-3"},
        {"image_id": 11, "regions": regions, "depth_constraint": "1-2,2-3,3-1"},
    ]
    ann = write_coco(
        tmp_path, [{"id": 10, "file_name": "ok.png"}, {"id": 11, "file_name": "cycle.png"}], annotations
    )
    code, out, err = run(capsys, ann, images, tmp_path / "out")
    assert code == 0, err
    assert "skipped 1 order_cycle" in out
    scenes = list(reader.iter_scenes(str(tmp_path / "out")))
    assert [s.scene_id for s in scenes] == [10]
    assert scenes[0].object_layer.tolist() == [0, 1, 2]
    assert scenes[0].occlusion_edges.tolist() == [[0, 1], [1, 2]]
    manifest = reader.check_dataset(str(tmp_path / "out"))
    assert manifest["import_report"]["skipped"] == {"order_cycle": 1}
    assert "image 11" in manifest["import_report"]["examples"]["order_cycle"][0]


def test_unsafe_and_missing_file_names_are_skipped_and_counted(capsys, tmp_path):
    images = tmp_path / "root" / "images"
    write_image(images, "sub/good.png")
    write_image(tmp_path / "root", "outside.png")  # exists, but outside the image root
    names = [
        "sub/good.png",
        "../outside.png",
        str(tmp_path / "root" / "outside.png"),
        "sub/../../outside.png",
        "gone.png",
    ]
    imgs = [{"id": i, "file_name": n} for i, n in enumerate(names)]
    anns = [{"image_id": i, **obj} for i in range(len(names)) for obj in objects("order", list("ABC"))]
    code, out, err = run(capsys, write_coco(tmp_path, imgs, anns), images, tmp_path / "out")
    assert code == 0, err
    report = reader.load_manifest(str(tmp_path / "out"))["import_report"]
    assert report["skipped"] == {"missing_image": 1, "unsafe_path": 3}
    assert [s.scene_id for s in reader.iter_scenes(str(tmp_path / "out"))] == [0]
    assert "skipped 3 unsafe_path" in out and "skipped 1 missing_image" in out


def test_imported_dataset_feeds_training_samples_and_keeps_splits(capsys, tmp_path):
    images = tmp_path / "images"
    imgs = []
    for i in range(6):
        write_image(images, f"{i}.png", i)
        imgs.append({"id": 100 + i, "file_name": f"{i}.png", **({"split": "test"} if i == 0 else {})})
    anns = [{"image_id": 100 + i, **obj} for i in range(6) for obj in objects("rle+visible", list("ABC"))]
    code, _, err = run(
        capsys, write_coco(tmp_path, imgs, anns), images, tmp_path / "out", "--shard-size", "4"
    )
    assert code == 0, err
    manifest = reader.check_dataset(str(tmp_path / "out"))
    assert manifest["has_instances"] is True and manifest["num_scenes"] == 6 and len(manifest["shards"]) == 2
    scenes = list(reader.iter_scenes(str(tmp_path / "out")))
    assert scenes[0].split == "test"
    samples = reader.scene_to_samples(scenes[1])
    assert len(samples) == 4 and not samples[-1][2].any() and samples[-1][1].any()
    assert manifest["num_layers_histogram"] == {"3": 6}


def test_forced_split_and_images_without_objects_and_bad_segmentations(capsys, tmp_path):
    images = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png"):
        write_image(images, name)
    imgs = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "c.png"}]
    anns = [{"image_id": 1, **obj} for obj in objects("order", list("ABC"))]
    anns.append({"image_id": 3, "segmentation": [[1, 2, 3]]})  # odd polygon
    anns.append({"image_id": 99, "segmentation": []})
    code, out, err = run(capsys, write_coco(tmp_path, imgs, anns), images, tmp_path / "out", "--split", "val")
    assert code == 0, err
    report = reader.load_manifest(str(tmp_path / "out"))["import_report"]
    assert report["skipped"] == {"bad_annotation": 1, "no_objects": 1}
    assert report["warnings"] == {"orphan_annotation": 1}
    assert [s.split for s in reader.iter_scenes(str(tmp_path / "out"))] == ["val"]


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"images": [', "not valid JSON (line 1"),
        ("[1, 2]", "not a COCO annotation file"),
        ('{"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}]}', "appears twice"),
    ],
)
def test_malformed_annotation_files_get_one_line_and_exit_2(capsys, tmp_path, content, needle):
    ann = tmp_path / "ann.json"
    ann.write_text(content)
    (tmp_path / "images").mkdir()
    code, _, err = run(capsys, ann, tmp_path / "images", tmp_path / "out")
    assert code == 2 and err.startswith("error:") and needle in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_bad_arguments_get_one_line_and_exit_2(capsys, tmp_path):
    (tmp_path / "images").mkdir()
    ann = write_coco(tmp_path, [], [])
    code, _, err = run(capsys, ann, tmp_path / "images", tmp_path / "out", "--size", "50")
    assert code == 2 and "multiple of 16" in err
    code, _, err = run(capsys, tmp_path / "nope.json", tmp_path / "images", tmp_path / "out")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, ann, tmp_path / "images", tmp_path / "out")
    assert code == 2 and "no images found" in err


def test_kins_cluster_ranks_order_objects_only_inside_their_cluster(capsys, tmp_path):
    # KINS: a_segm / i_segm polygons, ico_id = rank inside occlusion cluster oco_id (smaller = front).
    # A, B, C in one cluster listed back to front; D overlaps C but sits in another cluster with a
    # smaller ico_id, which must not put it in front of C: C > D comes from the visible masks.
    images = tmp_path / "images"
    write_image(images, "kitti.png")
    visible = visible_masks()
    d_rect = (50, 50, 63, 63)
    anns = [
        {"image_id": 1, "id": 3, "a_segm": polygon(*RECTS["C"]), "ico_id": 3, "oco_id": 1},
        {"image_id": 1, "id": 2, "a_segm": polygon(*RECTS["B"]), "ico_id": 2, "oco_id": 1},
        {"image_id": 1, "id": 1, "a_segm": polygon(*RECTS["A"]), "ico_id": 1, "oco_id": 1},
        {"image_id": 1, "id": 4, "a_segm": polygon(*d_rect), "ico_id": 0, "oco_id": 2},
    ]
    for ann, name in zip(anns, "CBA", strict=False):
        ann["i_segm"] = encode_rle(visible[name])
    anns[3]["i_segm"] = encode_rle(rect_mask(*d_rect) & ~amodal_masks()["C"])
    code, out, err = run(
        capsys, write_coco(tmp_path, [{"id": 1, "file_name": "kitti.png"}], anns), images, tmp_path / "out"
    )
    assert code == 0, err
    (scene,) = list(reader.iter_scenes(str(tmp_path / "out")))
    assert scene.object_layer.tolist() == [2, 1, 0, 3]  # C, B, A, D as listed
    report = reader.load_manifest(str(tmp_path / "out"))["import_report"]
    assert report["warnings"] == {} and report["skipped"] == {}


def test_an_order_field_read_against_the_visible_masks_is_counted(capsys, tmp_path):
    images = tmp_path / "images"
    write_image(images, "a.png")
    anns = [{"image_id": 1, **obj} for obj in objects("polygons+inmodal", list("ABC"))]
    for ann, wrong_rank in zip(anns, (3, 2, 1), strict=True):  # back to front: the opposite convention
        ann["order"] = wrong_rank
    code, out, err = run(
        capsys, write_coco(tmp_path, [{"id": 1, "file_name": "a.png"}], anns), images, tmp_path / "out"
    )
    assert code == 0, err
    assert "warning 2 order_contradicts_visible" in out  # (C, B) and (B, A): the overlapping pairs


def test_dropped_crowd_and_stuff_objects_keep_positional_constraints_aimed(capsys, tmp_path):
    # Constraints name objects by 1-based position in the full list (no "order" fields): dropping
    # the crowd object at position 1 must not shift which objects "2-3" and "3-4" mean.
    images = tmp_path / "images"
    write_image(images, "a.png")
    regions = [{"segmentation": polygon(0, 0, 63, 63)[0], "iscrowd": 1}]
    regions += [{"segmentation": polygon(*RECTS[n])[0]} for n in "ABC"]
    regions.append({"segmentation": polygon(0, 0, 63, 10)[0], "isStuff": 1})
    annotations = [{"image_id": 1, "regions": regions, "depth_constraint": "2-3,3-4,5-2"}]
    ann = write_coco(tmp_path, [{"id": 1, "file_name": "a.png"}], annotations)
    code, out, err = run(capsys, ann, images, tmp_path / "out", "--drop-stuff")
    assert code == 0, err
    (scene,) = list(reader.iter_scenes(str(tmp_path / "out")))
    assert scene.num_objects == 3 and scene.object_layer.tolist() == [0, 1, 2]
    report = reader.load_manifest(str(tmp_path / "out"))["import_report"]
    assert report["warnings"] == {"crowd_dropped": 1, "stuff_dropped": 1}
    code, _, err = run(capsys, ann, images, tmp_path / "with_stuff")
    assert code == 0, err
    (scene,) = list(reader.iter_scenes(str(tmp_path / "with_stuff")))
    assert scene.num_objects == 4 and scene.object_layer.tolist() == [1, 2, 3, 0]  # stuff 5 > A


@pytest.mark.parametrize("with_depth,compressed", [(True, True), (False, False)])
def test_a_generated_dataset_survives_coco_export_and_import(capsys, tmp_path, with_depth, compressed):
    # Ground truth from the generator, written as COCO RLE with visible masks, objects listed front
    # to back. With a depth rank per object every overlapping pair is ordered by it; from visible
    # masks alone some pairs show no evidence (both hidden by a third object) and fall back to the
    # listing order. Either way the import must give back exactly the generated scenes.
    generated = str(tmp_path / "generated")
    job = JobConfig(n=10, seed=5, shard_size=10, render=RenderConfig(size=32))
    write_manifest(generated, None, job, {0: write_shard(generated, None, job, 0)})
    ann = write_coco_from_dataset(generated, tmp_path / "coco", with_depth=with_depth, compressed=compressed)
    code, out, err = run(capsys, ann, tmp_path / "coco" / "images", tmp_path / "out")
    assert code == 0, err
    warnings = reader.load_manifest(str(tmp_path / "out"))["import_report"]["warnings"]
    assert set(warnings) <= ({"unordered_overlaps"} if not with_depth else set())
    originals = list(reader.iter_scenes(generated))
    imported = list(reader.iter_scenes(str(tmp_path / "out")))
    assert [s.scene_id for s in imported] == [s.scene_id for s in originals]
    for original, scene in zip(originals, imported, strict=True):
        assert scene.split == original.split and np.array_equal(scene.image, original.image)
        for field in ("amodal_masks", "visible_masks", "object_layer", "occlusion_edges", "layer_masks"):
            assert np.array_equal(getattr(scene, field), getattr(original, field)), (scene.scene_id, field)
