"""Fixture builders shared by the importer tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from synth.importers.masks import encode_rle, rle_counts_to_string

SIZE = 32  # side of the reference-layout fixture images


# ----- COCO-style fixtures: three rectangles A, B, C on a random image

COCO_SIZE = 64  # side of the COCO fixture images
# Three rectangles (x0, y0, x1, y1 inclusive): A in front of B in front of C; A and C apart.
RECTS = {"A": (4, 4, 29, 29), "B": (20, 20, 49, 49), "C": (40, 40, 59, 59)}
FRONT_TO_BACK = ("A", "B", "C")


def rect_mask(x0, y0, x1, y1, h=COCO_SIZE, w=COCO_SIZE):
    mask = np.zeros((h, w), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def polygon(x0, y0, x1, y1):
    """COCO polygon covering the pixels of ``rect_mask(x0, y0, x1, y1)`` (corners in continuous
    coordinates: the last pixel ``x1`` ends at ``x1 + 1``)."""
    return [[x0, y0, x1 + 1, y0, x1 + 1, y1 + 1, x0, y1 + 1]]


def amodal_masks():
    return {name: rect_mask(*RECTS[name]) for name in RECTS}


def visible_masks():
    amodal, covered, visible = amodal_masks(), np.zeros((COCO_SIZE, COCO_SIZE), bool), {}
    for name in FRONT_TO_BACK:
        visible[name] = amodal[name] & ~covered
        covered |= amodal[name]
    return visible


def compressed(mask: np.ndarray) -> dict:
    """bool[H, W] -> COCO RLE with the compressed (string) counts."""
    rle = encode_rle(mask)
    return {"size": rle["size"], "counts": rle_counts_to_string(np.array(rle["counts"]))}


def write_image(folder: Path, name: str, seed: int = 0) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (COCO_SIZE, COCO_SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def objects(style: str, order: list[str]) -> list[dict]:
    """Annotation dicts of A, B, C listed in ``order``, with masks in ``style``."""
    amodal, visible = amodal_masks(), visible_masks()
    out = []
    for name in order:
        entry = {"id": "ABC".index(name) + 1}
        if style == "polygons+inmodal":  # KINS-like
            entry["segmentation"] = polygon(*RECTS[name])
            entry["inmodal_seg"] = encode_rle(visible[name])
        elif style == "rle+visible":  # COCOA / D2SA-like: visible only where occluded
            entry["segmentation"] = compressed(amodal[name])
            if not np.array_equal(visible[name], amodal[name]):
                entry["visible_mask"] = encode_rle(visible[name])
        elif style == "order":
            entry["segmentation"] = polygon(*RECTS[name])
            entry["order"] = FRONT_TO_BACK.index(name) + 1
        else:
            raise ValueError(style)
        out.append(entry)
    return out


def write_coco(tmp_path: Path, images: list[dict], annotations: list, name="ann.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def write_reference_scene(
    folder: Path, name: str, num_layers: int, seed: int, inference: bool = False
) -> None:
    """``<name>_<k>`` folders for k = 0..L with random rectangles per layer (0/255 grey masks)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    cumulative = np.zeros((SIZE, SIZE), dtype=bool)
    for k in range(num_layers + 1):
        layer = np.zeros((SIZE, SIZE), dtype=bool)
        if k < num_layers:
            y, x = rng.integers(0, SIZE - 8, 2)
            layer[y : y + rng.integers(3, 9), x : x + rng.integers(3, 9)] = True
        target = folder / f"{name}_{k}"
        target.mkdir(parents=True)
        Image.fromarray(image).save(target / "image.png")
        Image.fromarray(cumulative.astype(np.uint8) * 255).save(target / "newmask.png")
        if not inference:
            Image.fromarray(layer.astype(np.uint8) * 255).save(target / "mask.png")
        cumulative = cumulative | layer
        if inference:
            break


def write_coco_from_dataset(
    dataset: str, folder: Path, with_depth: bool, compressed: bool = True, split: str | None = None
) -> Path:
    """A dataset of ours as COCO-style amodal annotations: ``folder/images/<id>.png`` and
    ``folder/ann.json`` with RLE amodal ``segmentation`` and ``visible_mask`` per object, plus a
    ``depth`` rank when ``with_depth``. Returns the annotation file."""
    from synth.reader import iter_scenes

    def rle(mask: np.ndarray) -> dict:
        raw = encode_rle(mask)
        return (
            {"size": raw["size"], "counts": rle_counts_to_string(np.array(raw["counts"]))}
            if compressed
            else raw
        )

    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for scene in iter_scenes(dataset, split=split):
        name = f"{scene.scene_id}.png"
        Image.fromarray(scene.image).save(folder / "images" / name)
        images.append({"id": scene.scene_id, "file_name": name, "split": scene.split})
        for i in range(scene.num_objects):
            entry = {
                "id": len(annotations) + 1,
                "image_id": scene.scene_id,
                "segmentation": rle(scene.amodal_masks[i]),
                "visible_mask": rle(scene.visible_masks[i]),
            }
            if with_depth:
                entry["depth"] = int(scene.object_depth[i])
            annotations.append(entry)
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path
