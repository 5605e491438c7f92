"""The reference folder layout: import, export, and the lossless round trip folders -> Parquet ->
folders (decoded arrays compared byte for byte), plus one real script run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from import_support import SIZE, write_reference_scene
from PIL import Image

from synth import reader
from synth.generate import write_manifest
from synth.import_dataset import main
from synth.render import RenderConfig
from synth.shards import JobConfig, write_shard

REPO = Path(__file__).resolve().parents[1]


def decoded_files(root: Path) -> dict[str, np.ndarray]:
    """``{relative path: decoded uint8 array}`` of every PNG under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.png")):
        with Image.open(path) as img:
            out[str(path.relative_to(root))] = np.asarray(img)
    return out


def test_folders_to_parquet_to_folders_is_lossless(capsys, tmp_path):
    source = tmp_path / "reference"
    for i, layers in enumerate([0, 1, 2, 3]):
        write_reference_scene(source / ("train" if i < 3 else "test"), str(10 + i), layers, seed=i)
    assert main(["sas-folders", str(source), "--out", str(tmp_path / "pq"), "--size", str(SIZE)]) == 0
    manifest = reader.check_dataset(str(tmp_path / "pq"))
    assert manifest["has_instances"] is False and manifest["source"] == "sas-folders"
    assert manifest["counts"] == {"train": 3, "val": 0, "test": 1}
    scenes = list(reader.iter_scenes(str(tmp_path / "pq")))
    assert [s.scene_id for s in scenes] == [10, 11, 12, 13]
    assert [s.num_layers for s in scenes] == [0, 1, 2, 3]
    for scene in scenes:
        assert not scene.has_instances and scene.source == "sas-folders" and scene.num_objects == 0
        assert scene.amodal_masks.shape == (0, SIZE, SIZE) and scene.occlusion_edges.shape == (0, 2)
        samples = reader.scene_to_samples(scene)
        assert len(samples) == scene.num_layers + 1 and not samples[-1][2].any()

    assert main(["export-sas", str(tmp_path / "pq"), "--out", str(tmp_path / "back")]) == 0
    original, exported = decoded_files(source), decoded_files(tmp_path / "back")
    assert sorted(original) == sorted(exported)
    for name, pixels in original.items():
        assert pixels.dtype == exported[name].dtype and np.array_equal(pixels, exported[name]), name


def test_inference_folders_and_broken_scenes_are_skipped_and_counted(capsys, tmp_path):
    source = tmp_path / "reference"
    write_reference_scene(source, "7", 2, seed=1)
    write_reference_scene(source, "8", 2, seed=2, inference=True)
    write_reference_scene(source, "9", 2, seed=3)
    (source / "9_1" / "newmask.png").unlink()
    write_reference_scene(source, "5", 1, seed=4)
    (source / "5_1").rename(source / "5_3")  # gap in k
    (source / "notes.txt").write_text("not a scene")
    code = main(["sas-folders", str(source), "--out", str(tmp_path / "pq"), "--size", str(SIZE)])
    out = capsys.readouterr().out
    assert code == 0
    report = reader.load_manifest(str(tmp_path / "pq"))["import_report"]
    assert report["skipped"] == {"incomplete_folder": 1, "missing_layer_folder": 1, "unlabelled": 1}
    assert report["warnings"] == {"ignored_entries": 1}
    assert "skipped 1 unlabelled" in out
    assert [s.scene_id for s in reader.iter_scenes(str(tmp_path / "pq"))] == [7]


def test_resizing_keeps_layers_consistent_and_string_ids_are_renumbered(capsys, tmp_path):
    source = tmp_path / "reference"
    write_reference_scene(source, "img_a", 2, seed=5)
    write_reference_scene(source, "img_b", 1, seed=6)
    assert main(["sas-folders", str(source), "--out", str(tmp_path / "pq"), "--size", "64"]) == 0
    manifest = reader.load_manifest(str(tmp_path / "pq"))
    assert manifest["config"]["folder_ids"] == {"0": "img_a", "1": "img_b"}
    assert manifest["import_report"]["warnings"] == {}
    for scene in reader.iter_scenes(str(tmp_path / "pq")):
        assert scene.image.shape == (64, 64, 3)
        c, m = scene.cumulative_masks, scene.layer_masks
        assert np.array_equal(c[1:], c[:-1] | m)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    job = JobConfig(n=12, seed=3, shard_size=12, render=RenderConfig(size=32))
    write_manifest(out, None, job, {0: write_shard(out, None, job, 0)})
    return out


def test_generated_dataset_exports_and_reimports_with_the_same_layers(capsys, synthetic, tmp_path):
    assert main(["export-sas", synthetic, "--out", str(tmp_path / "ref"), "--split", "train"]) == 0
    assert (
        main(["sas-folders", str(tmp_path / "ref"), "--out", str(tmp_path / "pq"), "--split", "train"]) == 0
    )
    originals = {s.scene_id: s for s in reader.iter_scenes(synthetic, split="train")}
    back = list(reader.iter_scenes(str(tmp_path / "pq")))
    assert sorted(s.scene_id for s in back) == sorted(originals)
    for scene in back:
        original = originals[scene.scene_id]
        assert np.array_equal(scene.image, original.image)
        assert np.array_equal(scene.layer_masks, original.layer_masks)
        assert np.array_equal(scene.cumulative_masks, original.cumulative_masks)


def test_export_refuses_a_non_empty_folder_and_a_missing_dataset(capsys, synthetic, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    assert main(["export-sas", synthetic, "--out", str(tmp_path / "busy")]) == 2
    assert main(["export-sas", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not an empty folder" in err[0] and "manifest.json" in err[1]
    assert (tmp_path / "busy" / "x").read_text() == "keep"


def test_import_refuses_to_overwrite_without_the_flag(capsys, tmp_path):
    source = tmp_path / "reference"
    write_reference_scene(source, "1", 1, seed=0)
    args = ["sas-folders", str(source), "--out", str(tmp_path / "pq"), "--size", str(SIZE)]
    assert main(args) == 0
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_script_runs_from_the_command_line(tmp_path):
    source = tmp_path / "reference"
    write_reference_scene(source, "3", 2, seed=9)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "synth" / "import_dataset.py"),
            "sas-folders",
            str(source),
            "--out",
            str(tmp_path / "pq"),
            "--size",
            str(SIZE),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "1 of 1 scenes imported" in result.stdout


def test_folder_names_that_are_not_numbers_come_back_on_export(capsys, tmp_path):
    source = tmp_path / "reference"
    write_reference_scene(source / "val", "street_a", 2, seed=7)
    write_reference_scene(source / "val", "street_b", 0, seed=8)
    assert main(["sas-folders", str(source), "--out", str(tmp_path / "pq")]) == 0
    assert [s.scene_id for s in reader.iter_scenes(str(tmp_path / "pq"))] == [0, 1]
    assert main(["export-sas", str(tmp_path / "pq"), "--out", str(tmp_path / "back")]) == 0
    original, exported = decoded_files(source), decoded_files(tmp_path / "back")
    assert sorted(original) == sorted(exported) and "val/street_a_2/mask.png" in exported
    assert all(np.array_equal(original[name], exported[name]) for name in original)
    assert not [p for p in (tmp_path / "back").iterdir() if p.name.startswith(".")]  # staging removed
