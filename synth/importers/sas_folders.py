"""The reference implementation's folder layout -> scenes with layer masks only.

Layout (one folder per image and layer, k = 0..L)::

    DIR/<id>_<k>/image.png     the RGB image (the same in every k; the k = 0 copy is read)
    DIR/<id>_<k>/mask.png      M_k, the union of the objects of layer k (empty at k = L, the terminal)
    DIR/<id>_<k>/newmask.png   C_k, the union of the layers before k (empty at k = 0)

``DIR`` may instead hold ``train/``, ``val/``, ``test/`` sub-folders in that layout, which give the
split. Masks are read as grey levels: foreground is > 127, or > 0 when the file only holds 0/1.

Rows get ``has_instances=False``, ``source="sas-folders"`` and no objects (N = 0: empty amodal /
visible masks, depths, layers, edges); ``layer_masks`` = M_0..M_{L-1} and ``cumulative_masks`` =
C_0..C_L exactly as read (resized if ``--size`` differs), so export gives the same folders back.

Skipped and counted: inference folders (no ``mask.png``: nothing to learn from), scenes with a gap
in k, a missing ``image.png``/``newmask.png``, a non-empty last ``mask.png`` (no terminal folder),
masks whose size differs from the image, unreadable PNGs. Imported with a warning: scenes where
``C_{k+1} != C_k ∪ M_k``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from synth.cli import one_line
from synth.importers.common import ImportReport, pick_split, read_rgb, resize_image, resize_masks
from synth.schema import Scene
from synth.splits import SPLITS

SOURCE = "sas-folders"
FOLDER_PATTERN = re.compile(r"^(?P<id>.+)_(?P<k>\d+)$")
IMAGE_FILE, LAYER_MASK_FILE, CUMULATIVE_MASK_FILE = "image.png", "mask.png", "newmask.png"


def read_mask(path: str | Path) -> np.ndarray:
    """A mask PNG -> bool[H, W]: grey level > 127, or > 0 when the file holds only 0 and 1."""
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
    return grey > (0 if grey.max(initial=0) <= 1 else 127)


def scan_layout(root: Path) -> tuple[list[tuple[str | None, Path]], int]:
    """``([(split or None, folder holding <id>_<k> folders)], ignored entry count)``."""
    children = [p for p in root.iterdir()] if root.is_dir() else []
    split_dirs = [p for p in children if p.is_dir() and p.name in SPLITS]
    layer_dirs = [p for p in children if p.is_dir() and FOLDER_PATTERN.match(p.name)]
    if split_dirs and not layer_dirs:
        ignored = len(children) - len(split_dirs)
        return [(p.name, p) for p in sorted(split_dirs, key=lambda p: SPLITS.index(p.name))], ignored
    return [(None, root)], 0  # group_scenes counts the entries it ignores


def group_scenes(folder: Path) -> tuple[dict[str, dict[int, str]], int]:
    """``{id: {k: folder path}}`` of the ``<id>_<k>`` folders directly under ``folder``; ignored count."""
    groups: dict[str, dict[int, str]] = {}
    ignored = 0
    for entry in sorted(folder.iterdir()):
        match = FOLDER_PATTERN.match(entry.name)
        if not (match and entry.is_dir()):
            ignored += 1
            continue
        groups.setdefault(match["id"], {})[int(match["k"])] = str(entry)
    return groups, ignored


def scene_from_folders(
    scene_id: int, split: str, name: str, folders: dict[int, str], size: int, report: ImportReport
) -> Scene | None:
    """One scene from its ``{k: folder}`` (None, with the reason in ``report``, when unusable)."""
    ks = sorted(folders)
    if ks != list(range(len(ks))):
        report.skip("missing_layer_folder", f"{name}: has k = {ks}, expected 0..{len(ks) - 1}")
        return None
    paths = [Path(folders[k]) for k in ks]
    if not all((p / LAYER_MASK_FILE).is_file() for p in paths):
        report.skip("unlabelled", f"{name}: no {LAYER_MASK_FILE} (an inference folder)")
        return None
    for p in paths:
        for file in (IMAGE_FILE, CUMULATIVE_MASK_FILE):
            if not (p / file).is_file():
                report.skip("incomplete_folder", f"{p.name}: no {file}")
                return None
    try:
        image = read_rgb(paths[0] / IMAGE_FILE)
        layer = np.stack([read_mask(p / LAYER_MASK_FILE) for p in paths])
        cumulative = np.stack([read_mask(p / CUMULATIVE_MASK_FILE) for p in paths])
    except ValueError:
        report.skip("size_mismatch", f"{name}: masks of different sizes")
        return None
    except (OSError, Image.DecompressionBombError) as exc:
        report.skip("unreadable_image", f"{name}: {one_line(exc)}")
        return None
    if layer.shape[1:] != image.shape[:2]:
        report.skip("size_mismatch", f"{name}: masks {layer.shape[1:]} vs image {image.shape[:2]}")
        return None
    if layer[-1].any():
        report.skip("no_terminal", f"{name}: mask.png of {paths[-1].name} is not empty")
        return None
    image, layer, cumulative = (
        resize_image(image, size),
        resize_masks(layer, size),
        resize_masks(cumulative, size),
    )
    if cumulative[0].any() or not np.array_equal(cumulative[1:], cumulative[:-1] | layer[:-1]):
        report.warn("inconsistent_cumulative", f"{name}: newmask.png is not the union of earlier mask.png")
    empty = np.zeros((0, size, size), dtype=bool)
    return Scene(
        scene_id=scene_id,
        split=split,
        image=image,
        amodal_masks=empty,
        visible_masks=empty,
        object_depth=np.zeros(0, dtype=np.int64),
        object_layer=np.zeros(0, dtype=np.int64),
        occlusion_edges=np.zeros((0, 2), dtype=np.int64),
        layer_masks=layer[:-1],
        cumulative_masks=cumulative,
        has_instances=False,
        source=SOURCE,
    )


def plan_scenes(
    root: Path, forced_split: str | None, seed: int, report: ImportReport
) -> tuple[list[dict], dict[int, str] | None]:
    """Every scene to import as ``{"scene_id", "split", "name", "folders"}``, in a stable order.

    Scene ids are the folder ids when all are whole numbers, unique across splits; otherwise
    0..n-1 in (split, id) order, and the second value maps each scene id to its folder id.
    """
    entries: list[tuple[str | None, str, dict[int, str]]] = []
    locations, ignored = scan_layout(root)
    for split, folder in locations:
        groups, skipped_names = group_scenes(folder)
        ignored += skipped_names
        entries.extend((split, name, groups[name]) for name in groups)
    if ignored:
        report.warn("ignored_entries", f"{ignored} entries not named <id>_<k> under {root}", count=ignored)
    names = [name for _, name, _ in entries]
    numeric = all(re.fullmatch(r"\d+", n) for n in names) and len({int(n) for n in names}) == len(names)
    if numeric:
        order = sorted(range(len(entries)), key=lambda i: int(entries[i][1]))
        ids = {i: int(entries[i][1]) for i in order}
        id_map = None
    else:
        order = list(range(len(entries)))
        ids = {i: i for i in order}
        id_map = {i: f"{entries[i][0] + '/' if entries[i][0] else ''}{entries[i][1]}" for i in order}
    plan = []
    for i in order:
        split, name, folders = entries[i]
        plan.append(
            {
                "scene_id": ids[i],
                "split": pick_split(forced_split, split, seed, ids[i]),
                "name": name,
                "folders": {str(k): v for k, v in folders.items()},
            }
        )
    return plan, id_map


def native_size(plan: list[dict]) -> int | None:
    """Side of the first scene's square ``image.png`` (None if it is not square or unreadable)."""
    for item in plan:
        if "0" not in item["folders"]:
            continue
        try:
            with Image.open(Path(item["folders"]["0"]) / IMAGE_FILE) as img:
                width, height = img.size
        except OSError:
            continue
        return width if width == height else None
    return None


def scenes_from_payload(payload: dict, config: dict, report: ImportReport) -> Iterator[Scene]:
    """One shard's scenes (``payload["items"]`` from :func:`plan_scenes`)."""
    for item in payload["items"]:
        folders = {int(k): v for k, v in item["folders"].items()}
        scene = scene_from_folders(
            item["scene_id"], item["split"], item["name"], folders, config["size"], report
        )
        if scene is not None:
            yield scene
