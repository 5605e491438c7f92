"""Any dataset of ours -> the reference implementation's folder layout.

For every scene and k = 0..L it writes ``<scene_id>_<k>/image.png`` (RGB), ``mask.png`` (M_k, grey
0/255; empty at the terminal k = L) and ``newmask.png`` (C_k). Without ``split`` the scenes go to
``OUT/<split>/``; with ``split`` only that split is written, straight into ``OUT``. Importing the
result with ``sas_folders`` gives the same images and masks back. Folder names are the scene ids,
or, for a dataset imported from folders whose ids were not whole numbers, the original ids (kept in
the manifest's ``config.folder_ids``), so the round trip reproduces the folder tree.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from synth.importers.sas_folders import CUMULATIVE_MASK_FILE, IMAGE_FILE, LAYER_MASK_FILE
from synth.reader import iter_scenes, load_manifest
from synth.schema import Scene, encode_png


def write_mask_png(mask: np.ndarray, path: Path) -> None:
    """bool[H, W] -> 8-bit grey PNG, 0 / 255."""
    from PIL import Image

    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(path, compress_level=1)


def export_scene(scene: Scene, folder: Path, name: str | None = None) -> int:
    """Write one scene's L + 1 folders ``<name>_<k>`` (name: the scene id) under ``folder``; returns L + 1."""
    image_png = encode_png(scene.image)
    empty = np.zeros((scene.height, scene.width), dtype=bool)
    for k in range(scene.num_layers + 1):
        target = folder / f"{scene.scene_id if name is None else name}_{k}"
        target.mkdir(parents=True, exist_ok=True)
        (target / IMAGE_FILE).write_bytes(image_png)
        write_mask_png(scene.layer_masks[k] if k < scene.num_layers else empty, target / LAYER_MASK_FILE)
        write_mask_png(scene.cumulative_masks[k], target / CUMULATIVE_MASK_FILE)
    return scene.num_layers + 1


def export_dataset(
    path: str,
    out: Path,
    split: str | None = None,
    endpoint: str | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> Counter:
    """Export scenes of ``path`` (local or s3://) into ``out``; returns ``Counter`` of scenes per split.

    Everything is written under ``out/.export-<random>/`` first and moved into ``out`` only when
    complete, so an interrupted export leaves no half-written scene folders behind. With
    ``overwrite``, entries of ``out`` with the same names as the new ones are replaced.
    """
    folder_ids = load_manifest(path, endpoint).config.get("folder_ids") or {}
    counts: Counter = Counter()
    staging = out / f".export-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        for scene in iter_scenes(path, split=split, endpoint_url=endpoint):
            folder = staging if split is not None else staging / scene.split
            original = folder_ids.get(str(scene.scene_id))
            export_scene(scene, folder, None if original is None else original.rsplit("/", 1)[-1])
            counts[scene.split] += 1
            if progress is not None and sum(counts.values()) % 1000 == 0:
                progress(sum(counts.values()))
        for entry in sorted(staging.iterdir()):
            target = out / entry.name
            if overwrite and target.is_dir():
                shutil.rmtree(target)
            elif overwrite and target.exists():
                target.unlink()
            entry.rename(target)  # a clash without overwrite raises: run_export checked out is empty
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts
