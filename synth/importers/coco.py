"""COCO-style amodal annotations (COCOA / KINS / D2SA family) -> scenes with objects.

Accepted JSON (one file, as the datasets ship it)::

    {"images": [{"id": 7, "file_name": "train2014/a.jpg", "split"?: "train",
                 "depth_constraint"?: "1-2,3-1"}, ...],
     "annotations": [ per-object entries, or COCOA per-image entries ]}

- per-object entry: ``{"image_id": 7, "segmentation": ..., <visible>?, <rank>?, "iscrowd"?}``;
- COCOA per-image entry: ``{"image_id": 7, "regions": [per-object entries without image_id],
  "depth_constraint"?: "1-2,3-1"}``.

Keys read per object (first one present wins):

- amodal mask: ``segmentation`` (KINS also ``a_segm``): polygons, compressed or uncompressed RLE;
- visible mask: ``visible_mask`` (COCOA, D2SA), ``inmodal_seg`` / ``i_segm`` (KINS); in an image where
  some object has one, an object without one is fully visible (COCOA stores it only when occluded);
- rank, smaller = nearer: ``order``, ``depth`` or ``layer`` (a number, compared across the image);
  KINS ``ico_id`` is compared only between objects with the same occlusion cluster ``oco_id``
  (the convention public KINS tools read: a smaller ``ico_id`` is in front);
- ``iscrowd: 1`` objects are dropped (counted); COCOA ``isStuff: 1`` regions too with ``drop_stuff``.

Pairwise constraints ``depth_constraint`` (per image entry or COCOA per-image annotation): a string
``"a-b,c-d"`` or a list ``[[a, b], ...]``, "a in front of b", where a and b are the objects'
``order`` values when every object has one (COCOA), else 1-based positions in the image's list.

Depth order and its sources: see ``occlusion_order``. Layers, visible masks and edges then come
from ``compute_layers`` on the resized amodal masks (the annotated visible masks are evidence for
the order; the stored visible masks are the ones the order implies). Per image, skipped and
counted: unsafe file names (absolute, ``..``), missing or unreadable images, undecodable
segmentations, no objects, order cycles. Warnings: objects empty at full size or vanished by
resizing, dropped crowd / stuff objects, constraints naming unknown objects, overlapping pairs the
order sources leave unrelated (ordered by rank, then annotation position), pairs whose order field
contradicts their visible masks (many of these suggest a misread convention).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from synth.cli import UserError, one_line
from synth.importers.common import (
    ImportReport,
    pick_split,
    read_rgb,
    resize_image,
    resize_masks,
)
from synth.importers.masks import AnnotationError, decode_segmentation
from synth.importers.occlusion_order import (
    contradicted_pairs,
    depth_order,
    front_of_graph,
    unordered_overlaps,
    visible_evidence,
)
from synth.layering import overlap_matrix
from synth.schema import Scene, scene_from_masks

SOURCE = "coco"
AMODAL_KEYS = ("segmentation", "a_segm")
VISIBLE_KEYS = ("visible_mask", "inmodal_seg", "i_segm")
RANK_KEYS = ("order", "depth", "layer")
CLUSTER_KEY, CLUSTER_RANK_KEY = "oco_id", "ico_id"  # KINS: occlusion cluster, rank inside it


def load_annotations(path: str) -> dict:
    """Parse the annotation file; ``UserError`` (one line) when unreadable or not COCO-shaped."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"annotation file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path} is not a COCO annotation file: need an object with an 'images' list")
    if not isinstance(data.get("annotations", []), list):
        raise UserError(f"{path}: 'annotations' must be a list")
    return data


def _first(entry: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if entry.get(key) is not None:
            return entry[key]
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _object(entry: Any) -> dict:
    """The parts of one object entry the importer needs (JSON-friendly; ``amodal`` None if absent).

    ``rank`` (smaller = nearer) is compared only between objects with the same ``rank_group``:
    ``"image"`` for ``order`` / ``depth`` / ``layer``, ``"oco:<id>"`` for KINS ``ico_id``.
    ``order`` is kept apart too: COCOA's ``depth_constraint`` names objects by it.
    """
    if not isinstance(entry, dict):
        return {"amodal": None}
    rank, rank_group = _number(_first(entry, RANK_KEYS)), "image"
    if _number(entry.get(CLUSTER_RANK_KEY)) is not None:  # KINS: rank inside an occlusion cluster
        rank, rank_group = _number(entry[CLUSTER_RANK_KEY]), f"oco:{entry.get(CLUSTER_KEY)}"
    return {
        "id": entry.get("id"),
        "amodal": _first(entry, AMODAL_KEYS),
        "visible": _first(entry, VISIBLE_KEYS),
        "rank": rank,
        "rank_group": rank_group if rank is not None else None,
        "order": _number(entry.get("order")),
        "crowd": bool(entry.get("iscrowd", 0)),
        "stuff": bool(entry.get("isStuff", 0)),
    }


def plan_images(data: dict, forced_split: str | None, seed: int, report: ImportReport) -> list[dict]:
    """One record per image: ``{"scene_id", "split", "file_name", "objects", "constraints"}``.

    Scene ids are the image ids when all are whole numbers, else positions in ``images``.
    """
    images = data["images"]
    if not all(isinstance(img, dict) for img in images):
        raise UserError("every entry of 'images' must be an object")
    raw_ids = [img.get("id") for img in images]
    if len(set(map(repr, raw_ids))) != len(raw_ids):
        dup = next(i for i in raw_ids if raw_ids.count(i) > 1)
        raise UserError(f"image id {dup!r} appears twice in 'images'")
    numeric = all(isinstance(i, int) and not isinstance(i, bool) for i in raw_ids)
    by_id: dict[str, dict] = {}
    records = []
    for position, img in enumerate(images):
        scene_id = img["id"] if numeric else position
        record = {
            "scene_id": scene_id,
            "split": pick_split(forced_split, img.get("split"), seed, scene_id),
            "file_name": img.get("file_name"),
            "objects": [],
            "constraints": img.get("depth_constraint"),
        }
        by_id[repr(img.get("id"))] = record
        records.append(record)
    for entry in data.get("annotations", []):
        record = by_id.get(repr(entry.get("image_id"))) if isinstance(entry, dict) else None
        if record is None:
            report.warn(
                "orphan_annotation",
                f"annotation for unknown image id {entry.get('image_id')!r}"
                if isinstance(entry, dict)
                else "annotation that is not an object",
            )
            continue
        if isinstance(entry.get("regions"), list):  # COCOA: one entry per image
            record["objects"].extend(_object(region) for region in entry["regions"])
            if entry.get("depth_constraint") is not None:
                record["constraints"] = entry["depth_constraint"]
        else:
            record["objects"].append(_object(entry))
    return records


def unsafe_file_name(name: Any) -> str | None:
    """Why ``name`` may not be opened under the image root (None when it is a plain relative path)."""
    if not isinstance(name, str) or not name:
        return "no file_name"
    if "\x00" in name:
        return "file name holds a NUL byte"
    if (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path leaves the image folder (..)"
    return None


def parse_constraints(raw: Any, objects: list[dict]) -> tuple[list[tuple[int, int]], int]:
    """``depth_constraint`` -> ``([(front index, back index)], count of unusable pairs)``.

    Objects are named by their ``order`` when every object has one (COCOA), else by their 1-based
    position in ``objects`` (the image's full list, dropped objects included).
    """
    if raw is None or raw == "":
        return [], 0
    pairs: list[tuple[Any, Any]] = []
    bad = 0
    if isinstance(raw, str):
        for part in raw.split(","):
            front, sep, back = part.strip().partition("-")
            if sep and front.strip().isdigit() and back.strip().isdigit():
                pairs.append((int(front), int(back)))
            elif part.strip():
                bad += 1
    elif isinstance(raw, list):
        for pair in raw:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                pairs.append((pair[0], pair[1]))
            else:
                bad += 1
    else:
        return [], 1
    if objects and all(o.get("order") is not None for o in objects):
        lookup = {o["order"]: i for i, o in enumerate(objects)}
    else:
        lookup = {i + 1: i for i in range(len(objects))}
    resolved = []
    for front, back in pairs:
        if front in lookup and back in lookup:
            resolved.append((lookup[front], lookup[back]))
        else:
            bad += 1
    return resolved, bad


def _name(obj: dict, index: int) -> str:
    return f"#{index}" if obj.get("id") is None else f"id {obj['id']}"


def _group_codes(groups: list[str | None]) -> np.ndarray:
    """float[N] codes of rank group names (NaN for None), for ``front_of_graph(rank_groups=...)``."""
    codes = {name: float(i) for i, name in enumerate(sorted({g for g in groups if g is not None}))}
    return np.array([math.nan if g is None else codes[g] for g in groups], dtype=float)


def _decode_objects(
    objects: list[dict], keep: list[int], height: int, width: int, label: str, report: ImportReport
) -> tuple[list[int], np.ndarray, list[np.ndarray | None]]:
    """Decode the amodal (and visible) masks of ``objects[i]`` for ``i`` in ``keep``.

    Returns ``(kept indices, amodal bool[K, H, W], visible masks or None)``; objects whose amodal
    mask is empty are dropped with a warning. Raises ``AnnotationError`` on an undecodable one.
    """
    kept, amodal, visible = [], [], []
    for i in keep:
        obj = objects[i]
        if obj["amodal"] is None:
            raise AnnotationError(f"object {_name(obj, i)} has no amodal segmentation")
        mask = decode_segmentation(obj["amodal"], height, width)
        if not mask.any():
            report.warn("empty_object", f"{label}: object {_name(obj, i)} has an empty mask")
            continue
        kept.append(i)
        amodal.append(mask)
        raw_visible = obj.get("visible")
        visible.append(None if raw_visible is None else decode_segmentation(raw_visible, height, width))
    stacked = np.stack(amodal) if amodal else np.zeros((0, height, width), dtype=bool)
    return kept, stacked, visible


def scene_from_record(
    record: dict, images_root: str, size: int, report: ImportReport, drop_stuff: bool = False
) -> Scene | None:
    """One image's scene (None, with the reason in ``report``, when it cannot be imported)."""
    label = f"image {record['scene_id']} ({record['file_name']})"
    image = _read_image(record["file_name"], images_root, label, report)
    if image is None:
        return None
    height, width = image.shape[:2]
    objects = record["objects"]
    keep = _objects_to_keep(objects, drop_stuff, label, report)
    try:
        kept, amodal_full, visible = _decode_objects(objects, keep, height, width, label, report)
    except AnnotationError as exc:
        report.skip("bad_annotation", f"{label}: {exc}")
        return None
    if not kept:
        report.skip("no_objects", f"{label}: no annotated objects")
        return None
    depth = _object_depths(record, kept, amodal_full, visible, label, report)
    if depth is None:
        return None
    return _scene_at_size(record, image, amodal_full, depth, size, label, report)


def _read_image(file_name: Any, images_root: str, label: str, report: ImportReport) -> np.ndarray | None:
    """The image's RGB pixels (None, with the reason in ``report``, when unsafe, missing or unreadable)."""
    problem = unsafe_file_name(file_name)
    if problem:
        report.skip("unsafe_path", f"{label}: {problem}")
        return None
    path = Path(images_root) / file_name
    if not path.is_file():
        report.skip("missing_image", f"{label}: not found under {images_root}")
        return None
    try:
        return read_rgb(path)
    except (OSError, Image.DecompressionBombError) as exc:
        report.skip("unreadable_image", f"{label}: {one_line(exc)}")
        return None


def _objects_to_keep(objects: list[dict], drop_stuff: bool, label: str, report: ImportReport) -> list[int]:
    """Indices of the objects to import: crowd regions (and, with ``drop_stuff``, stuff) are dropped."""
    keep = []
    for i, obj in enumerate(objects):
        if obj.get("crowd"):
            report.warn("crowd_dropped", f"{label}: object {_name(obj, i)}")
        elif drop_stuff and obj.get("stuff"):
            report.warn("stuff_dropped", f"{label}: object {_name(obj, i)}")
        else:
            keep.append(i)
    return keep


def _object_depths(
    record: dict,
    kept: list[int],
    amodal_full: np.ndarray,
    visible: list[np.ndarray | None],
    label: str,
    report: ImportReport,
) -> np.ndarray | None:
    """Depth per kept object (0 = front) from the constraints, ranks and visible masks; None, with the
    reason in ``report``, when the order has a cycle."""
    objects = record["objects"]
    constraints, bad = parse_constraints(record.get("constraints"), objects)
    if bad:
        report.warn("bad_constraint", f"{label}: {bad} depth constraint(s) name unknown objects", count=bad)
    position = {orig: new for new, orig in enumerate(kept)}  # constraints on dropped objects vanish
    constraints = [(position[f], position[b]) for f, b in constraints if f in position and b in position]
    overlaps = overlap_matrix(amodal_full)
    ranks = np.array([math.nan if objects[i]["rank"] is None else objects[i]["rank"] for i in kept])
    evidence = None
    if any(v is not None for v in visible):
        visible_full = np.stack([a if v is None else v for a, v in zip(amodal_full, visible, strict=True)])
        evidence = visible_evidence(amodal_full, visible_full)
    graph = front_of_graph(
        overlaps,
        constraints,
        None if np.isnan(ranks).all() else ranks,
        evidence,
        rank_groups=_group_codes([objects[i]["rank_group"] for i in kept]),
    )
    order = depth_order(graph, tiebreak=ranks)
    if order.depth is None:
        chain = " > ".join(_name(objects[kept[i]], kept[i]) for i in [*order.cycle, order.cycle[0]])
        report.skip("order_cycle", f"{label}: objects {chain}")
        return None
    unordered = unordered_overlaps(graph, overlaps)
    if unordered:
        report.warn(
            "unordered_overlaps", f"{label}: {unordered} overlapping pair(s) without order", count=unordered
        )
    if evidence is not None and (contradicted := contradicted_pairs(graph, evidence)):
        report.warn(
            "order_contradicts_visible",
            f"{label}: {contradicted} pair(s) ordered against their visible masks",
            count=contradicted,
        )
    return order.depth


def _scene_at_size(
    record: dict,
    image: np.ndarray,
    amodal_full: np.ndarray,
    depth: np.ndarray,
    size: int,
    label: str,
    report: ImportReport,
) -> Scene | None:
    """The scene at ``size``×``size``: objects that vanish there are left out (and the depths of the
    rest renumbered); None, with the reason in ``report``, when none is left."""
    amodal_small = resize_masks(amodal_full, size)
    present = amodal_small.reshape(len(amodal_full), -1).any(axis=1)
    if not present.any():
        report.skip("no_objects", f"{label}: every object vanishes at {size}x{size}")
        return None
    if not present.all():
        report.warn(
            "vanished_object",
            f"{label}: {int((~present).sum())} object(s) gone at {size}x{size}",
            count=int((~present).sum()),
        )
    depth = np.argsort(np.argsort(depth[present], kind="stable"), kind="stable")
    return scene_from_masks(
        record["scene_id"],
        record["split"],
        resize_image(image, size),
        amodal_small[present],
        depth,
        source=SOURCE,
    )


def scenes_from_payload(payload: dict, config: dict, report: ImportReport) -> Iterator[Scene]:
    """One shard's scenes (``payload["items"]``: records from :func:`plan_images`)."""
    for record in payload["items"]:
        scene = scene_from_record(
            record, config["images"], config["size"], report, drop_stuff=config.get("drop_stuff", False)
        )
        if scene is not None:
            yield scene
