"""Import real amodal datasets into the Parquet schema, and export ours to the reference layout.

    python synth/import_dataset.py sas-folders DIR --out PATH [--size 64] [--split S] [--seed 0]
    python synth/import_dataset.py coco ANN.json --images DIR --out PATH [--size 64] [--drop-stuff]
    python synth/import_dataset.py export-sas PATH --out DIR [--split S]

``sas-folders`` reads ``<id>_<k>/image.png, mask.png, newmask.png`` (or ``train/``, ``val/``,
``test/`` sub-folders of them) into rows with layer masks only (``has_instances=False``).
``coco`` reads COCO-style amodal annotations (COCOA / KINS / D2SA family) with their images and
derives the depth order, then layers through ``synth.layering.compute_layers``. ``export-sas``
writes any dataset of ours in the reference layout. Images are stretched to ``--size`` square
(bilinear; masks nearest). Rows are split by the source's split (``--split``, a split folder or an
image's ``"split"`` key), else by a stable hash of (seed, scene id). Inputs the importer cannot use
are skipped, counted and listed in the summary and in ``manifest.json``. ``--out`` is a local
folder or ``s3://bucket/prefix``; more than ``--ray-threshold`` inputs (or ``--ray on``) run as a
Ray Data job, one task per shard (on a cluster the input folders must be visible to every node).
``export-sas`` writes to a local folder, staged and moved into place when complete.

Exit status: 0 done, 1 nothing could be imported / exported, 2 bad input (one-line ``error:``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from synth.cli import OneLineParser, UserError
from synth.generate import default_shard_size
from synth.importers import coco, sas_folders
from synth.importers.common import (
    ImportReport,
    check_size,
    prepare_output,
    run_shards,
    write_import_manifest,
)
from synth.importers.export_sas import export_dataset
from synth.reader import DatasetError, check_dataset
from synth.splits import SPLITS

DEFAULT_RAY_THRESHOLD = 2000
DEFAULT_SIZE = 64


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="synth/import_dataset.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def common_import(q: argparse.ArgumentParser) -> None:
        q.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
        q.add_argument(
            "--size",
            type=int,
            default=None,
            help="square side in pixels, a multiple of 16 in 32..512 (default: coco 64, "
            "sas-folders the size of the images when square, else 64)",
        )
        q.add_argument("--split", choices=SPLITS, default=None, help="put every row in this split")
        q.add_argument("--seed", type=int, default=0, help="seed of the stable hash split")
        q.add_argument(
            "--shard-size", type=int, default=None, help="inputs per shard (default n/16, 250..5000)"
        )
        q.add_argument(
            "--ray",
            choices=("auto", "on", "off"),
            default="auto",
            help="Ray Data job: auto = when there are more inputs than --ray-threshold",
        )
        q.add_argument("--ray-threshold", type=int, default=DEFAULT_RAY_THRESHOLD)
        q.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
        q.add_argument(
            "--s3-endpoint", default=None, help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)"
        )

    q = sub.add_parser("sas-folders", help="reference layout <id>_<k>/{image,mask,newmask}.png -> Parquet")
    q.add_argument("dir", help="folder of <id>_<k> folders, or of train/val/test folders of them")
    common_import(q)
    q = sub.add_parser("coco", help="COCO-style amodal annotations + images -> Parquet")
    q.add_argument("annotations", help="annotation JSON file")
    q.add_argument("--images", required=True, help="image root; file_name entries are relative to it")
    q.add_argument("--drop-stuff", action="store_true", help="leave out COCOA stuff regions (isStuff: 1)")
    common_import(q)
    q = sub.add_parser("export-sas", help="any dataset of ours -> reference layout folders")
    q.add_argument("dataset", help="dataset folder or s3://bucket/prefix")
    q.add_argument("--out", required=True, help="output folder (created; must be empty unless --overwrite)")
    q.add_argument("--split", choices=SPLITS, default=None, help="export only this split, flat into --out")
    q.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out, replacing same-named folders"
    )
    q.add_argument("--s3-endpoint", default=None)
    return p


def _shards(items: list[dict], shard_size: int | None) -> list[list[dict]]:
    size = default_shard_size(len(items)) if shard_size is None else shard_size
    if size < 1:
        raise UserError(f"--shard-size must be >= 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def plan_sas_folders(args: argparse.Namespace, config: dict, report: ImportReport) -> list[dict]:
    """The scenes under ``args.dir`` (one item per ``<id>``); fills ``config``."""
    root = Path(args.dir).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{args.dir} is not a folder")
    scenes, id_map = sas_folders.plan_scenes(root, args.split, args.seed, report)
    if args.size is None:  # keep the images' own size when the model can use it: no resampling
        side = sas_folders.native_size(scenes)
        if side is not None and 32 <= side <= 512 and side % 16 == 0:
            config["size"] = side
    config.update({"source": sas_folders.SOURCE, "input": str(root), "has_instances": False})
    if id_map is not None:
        config["folder_ids"] = {str(k): v for k, v in id_map.items()}
    return scenes


def plan_coco(args: argparse.Namespace, config: dict, report: ImportReport) -> list[dict]:
    """The images of ``args.annotations`` (one item per image, objects included); fills ``config``."""
    images_root = Path(args.images).expanduser().resolve()
    if not images_root.is_dir():
        raise UserError(f"--images {args.images} is not a folder")
    records = coco.plan_images(coco.load_annotations(args.annotations), args.split, args.seed, report)
    config.update(
        {
            "source": coco.SOURCE,
            "input": str(Path(args.annotations).resolve()),
            "images": str(images_root),
            "drop_stuff": args.drop_stuff,
            "has_instances": True,
        }
    )
    return records


def run_import(args: argparse.Namespace) -> int:
    report = ImportReport()
    if args.size is not None:
        check_size(args.size)
    config = {"size": args.size or DEFAULT_SIZE, "seed": args.seed, "split": args.split}
    if args.command == "sas-folders":
        items, noun, where = plan_sas_folders(args, config, report), "scenes", args.dir
        convert = sas_folders.scenes_from_payload
    else:
        items, noun, where = plan_coco(args, config, report), "images", args.annotations
        convert = coco.scenes_from_payload
    if not items:
        raise UserError(f"no {noun} found in {where}")
    payloads = [{"items": chunk} for chunk in _shards(items, args.shard_size)]
    prepare_output(args.out, args.s3_endpoint, args.overwrite)
    use_ray = args.ray == "on" or (args.ray == "auto" and len(items) > args.ray_threshold)
    print(
        f"[import] {config['source']}: {len(items)} {noun} in {len(payloads)} shards -> {args.out} "
        f"at {config['size']}x{config['size']}{' (Ray Data)' if use_ray else ''}",
        flush=True,
    )
    started = time.perf_counter()
    shard_stats: list[dict] = []
    shards_done = 0

    def on_shard(result: dict) -> None:
        nonlocal shards_done
        shards_done += 1
        report.merge(ImportReport.from_dict(result["report"]))
        if result["stats"] is not None:
            shard_stats.append(result["stats"])
        imported = sum(s["num_scenes"] for s in shard_stats)
        print(f"[import] {shards_done}/{len(payloads)} shards, {imported} scenes imported", flush=True)

    run_shards(args.out, args.s3_endpoint, payloads, config, convert, use_ray, on_shard)
    shard_stats.sort(key=lambda s: s["file"])
    for line in report.lines():
        print(f"[import] {line}", flush=True)
    imported = sum(s["num_scenes"] for s in shard_stats)
    if imported == 0:
        print(
            f"error: none of the {len(items)} {noun} could be imported (reasons above)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    manifest = write_import_manifest(
        args.out, args.s3_endpoint, config, shard_stats, report, config["has_instances"]
    )
    elapsed = time.perf_counter() - started
    print(
        f"[import] done: {imported} of {len(items)} {noun} imported, {sum(report.skipped.values())} "
        f"skipped, in {elapsed:.1f} s ({imported / max(elapsed, 1e-9):.0f} scenes/s); manifest: {manifest}",
        flush=True,
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.overwrite)):
        raise UserError(
            f"--out {args.out} exists and is not an empty folder: choose another, or pass --overwrite"
        )
    try:
        check_dataset(args.dataset, args.s3_endpoint)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counts = export_dataset(
        args.dataset,
        out,
        args.split,
        args.s3_endpoint,
        progress=lambda n: print(f"[export] {n} scenes written", flush=True),
        overwrite=args.overwrite,
    )
    if not counts:
        print(
            f"error: no scenes{' in split ' + args.split if args.split else ''} in {args.dataset}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    per_split = ", ".join(f"{s}: {counts[s]}" for s in SPLITS if counts[s])
    print(
        f"[export] done: {sum(counts.values())} scenes ({per_split}) -> {out} "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    try:
        args = build_parser().parse_args(argv)
        return run_export(args) if args.command == "export-sas" else run_import(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun with --overwrite to start again", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
