"""Evaluate one or more models on a synth dataset split with Ray Data batch inference.

    python pipelines/evaluate.py --model models:/sas@champion --data data/shapes --split test
    python pipelines/evaluate.py --model diffusion=models:/sas@champion \\
        --model deterministic=runs/sas-det --data data/shapes --limit 200 --out outputs/eval
    python pipelines/evaluate.py --model models:/sas@champion --data data/shapes --sweep-passes

For each model, every scene of the split (or the first ``--limit``) is segmented free-running
(``segment``) and, unless ``--no-teacher-forced``, every layer again teacher-forced (``predict_layer``
given the true ``C_k``, ``k = 0..L``; ``k = L`` checks the stop). Scoring happens inside the Ray Data
actors (``SceneScorer``); the driver only merges small per-image records
(``sas_model.metrics_report``). Instance metrics (AP, invisible IoU, order accuracy) use only scenes
with ``has_instances``.

Outputs in ``--out``: ``metrics.md`` / ``metrics.csv`` (one column per model), ``per_image_<label>.csv``,
``overlays.png`` (image | truth | per model: prediction, uncertainty), ``summary.json``; with
``--coco-out DIR``: ``ground_truth.json`` and ``detections_<label>.json`` in COCO format (amodal
masks as RLE; ``coco_ap`` / ``coco_ap50`` / ``coco_ap75`` in the metrics are ``pycocotools``'
``COCOeval`` on exactly these; ``ap`` / ``ap50`` / ``ap75`` are ours, by Hungarian matching); with
``--sweep-passes``: ``sweep.md`` / ``sweep.csv`` / ``sweep.png`` (mIoU against UNet passes per image).
The same files, the metrics and the parameters go to one MLflow run in experiment ``sas-eval``
(``--no-mlflow`` skips it), with the dataset as its input (``mlflow.log_input``, context
``evaluation``). A model given as ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` gets the results
too: the metrics, keyed ``<split>/<metric>``, are logged linked to its MLflow 3 logged model (they show
on the model's page, with the dataset), and the version gets the tag ``eval.<split>.run_id``.

Exit status: 0 done, 1 failed, 2 bad input (one-line ``error:``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.cli.env import apply_env_defaults
from pipelines.cli.progress import Progress
from pipelines.inference.models import (
    ModelSource,
    describe_device,
    load_source_segmenter,
    parse_model_spec,
    resolve_model,
)
from pipelines.inference.options import (
    actor_pool,
    actor_resources,
    add_model_args,
    add_resource_args,
    add_sampler_args,
    check_sampler_overrides,
    cluster_gpus,
    resolve_gpus_per_worker,
    sampler_overrides,
)
from pipelines.tracking.store import resolve_mlflow_uri
from synth.cli import UserError, fail, parse_number
from synth.ray_runtime import init_ray

if TYPE_CHECKING:
    from synth.schema import Manifest

EXPERIMENT = "sas-eval"
# mIoU against UNet passes: (label, sampler overrides). "dpmpp2m" is the fast multistep solver.
SWEEP_SETTINGS = (
    ("DDPM-1000", {"name": "ddpm", "steps": 1000}),
    ("DDIM-100", {"name": "ddim", "steps": 100}),
    ("DDIM-50", {"name": "ddim", "steps": 50}),
    ("DDIM-20", {"name": "ddim", "steps": 20}),
    ("DDIM-10", {"name": "ddim", "steps": 10}),
    ("DPM++2M-20", {"name": "dpmpp2m", "steps": 20}),
    ("DPM++2M-10", {"name": "dpmpp2m", "steps": 10}),
)


class SceneScorer:
    """Ray Data actor: holds one segmenter; scene rows in, per-image metric records (JSON) out.

    Output columns: ``scene_id int64[B]``, ``record`` (JSON string, ``metrics_report.score_image``)
    and ``strip_png`` (PNG bytes of ``uint8[H, 4W, 3]``: image | truth | prediction | uncertainty).
    """

    def __init__(
        self, source: ModelSource, overrides: dict[str, Any], seed: int, teacher_forced: bool
    ) -> None:
        self.segmenter = load_source_segmenter(source)
        print(f"[eval] model actor on {describe_device(self.segmenter.device)}", flush=True)
        self.overrides = dict(overrides)
        self.sampler_cfg = self.segmenter.resolve(**self.overrides)
        self.seed = seed
        self.teacher_forced = teacher_forced

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from sas_model.metrics_report import ObjectsTruth, score_image
        from synth.schema import decode_scene

        scenes = [decode_scene({k: v[i] for k, v in batch.items()}) for i in range(len(batch["scene_id"]))]
        results = self.segmenter.segment(
            np.stack([s.image for s in scenes]), seed=self.seed, **self.overrides
        )
        forced = self._teacher_forced(scenes) if self.teacher_forced else [(None, None)] * len(scenes)
        records, strips = [], []
        for scene, result, (tf_layers, tf_terminal) in zip(scenes, results, forced, strict=True):
            truth = ObjectsTruth(scene.amodal_masks, scene.visible_masks, scene.occlusion_edges)
            record = score_image(
                scene.layer_masks,
                result.layer_masks,
                result.uncertainty,
                objects_truth=truth if scene.has_instances else None,
                pred_objects=result.objects if scene.has_instances else None,
                tf_layers=tf_layers,
                tf_terminal=tf_terminal,
                scene_id=scene.scene_id,
                unet_passes=result.unet_passes,
                min_foreground=self.sampler_cfg.min_foreground,
            )
            records.append(json.dumps(record))
            strips.append(_strip_png(scene, result))
        return {
            "scene_id": np.array([s.scene_id for s in scenes], dtype=np.int64),
            "record": np.array(records, dtype=object),
            "strip_png": np.array(strips, dtype=object),
        }

    def _teacher_forced(self, scenes: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per scene ``(tf_layers bool[L,H,W], tf_terminal bool[H,W])``: all ``(scene, k)`` in one call."""
        images = np.stack([s.image for s in scenes for _ in range(s.num_layers + 1)])
        cumulative = np.concatenate([s.cumulative_masks for s in scenes]).astype(bool)
        k = np.concatenate([np.arange(s.num_layers + 1) for s in scenes])
        masks = self.segmenter.predict_layer(
            images, cumulative, seed=self.seed, layer_index=k, **self.overrides
        ).layer_mask
        out, start = [], 0
        for scene in scenes:
            layers = scene.num_layers
            out.append((masks[start : start + layers], masks[start + layers]))
            start += layers + 1
        return out


def _strip_png(scene: Any, result: Any) -> bytes:
    from sas_model.codec import encode_png
    from sas_model.overlay import tint_layers

    w = scene.image.shape[1]
    overlay = result.render_overlay(scene.image)  # [H, 2W + 2, 3]: prediction | uncertainty
    panels = [scene.image, tint_layers(scene.image, scene.layer_masks), overlay[:, :w], overlay[:, w + 2 :]]
    return encode_png(np.concatenate(panels, axis=1))


# ---- driver ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate sequential amodal segmentation models on a dataset split (Ray Data).",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser, repeatable=True)
    parser.add_argument("--data", required=True, help="dataset directory or s3:// URI written by synth")
    parser.add_argument("--split", default="test", help="train, val or test (default test)")
    parser.add_argument("--limit", type=parse_number, help="evaluate only the first N scenes of the split")
    parser.add_argument("--out", default="outputs/eval", help="report folder (default outputs/eval)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)")
    parser.add_argument(
        "--coco-out",
        metavar="DIR",
        help="write ground truth and each model's detections as COCO JSON (amodal masks, RLE) to DIR",
    )
    add_sampler_args(parser)
    add_resource_args(parser)
    parser.add_argument(
        "--no-teacher-forced", action="store_true", help="skip teacher-forced IoU and stop accuracy (faster)"
    )
    parser.add_argument(
        "--sweep-passes",
        action="store_true",
        help="mIoU against UNet passes per image (DDPM-1000, DDIM 100/50/20/10, DPM++2M 20/10) for one model",
    )
    parser.add_argument(
        "--sweep", metavar="SAMPLER:STEPS,...", help="custom sweep settings, e.g. ddim:10,dpmpp2m:10"
    )
    parser.add_argument("--sweep-limit", type=parse_number, help="scenes for the sweep (default --limit)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Data actors holding a model (default 1)")
    parser.add_argument("--batch", type=int, default=16, help="scenes per actor batch (default 16)")
    parser.add_argument("--sheet-rows", type=int, default=8, help="scenes in the overlay sheet (default 8)")
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default {EXPERIMENT})")
    parser.add_argument("--run-name", help="MLflow run name")
    parser.add_argument("--no-mlflow", action="store_true", help="write the report files only")
    return parser


def sweep_settings(text: str | None) -> list[tuple[str, dict[str, Any]]]:
    """``ddim:10,dpmpp2m:20`` → ``[("DDIM-10", {...}), ...]``; the built-in list when ``text`` is None."""
    if not text:
        return [(label, dict(o)) for label, o in SWEEP_SETTINGS]
    names = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp2m": "DPM++2M"}
    out = []
    for item in text.split(","):
        name, sep, steps = item.strip().partition(":")
        if not sep or name not in names or not steps.isdigit():
            raise UserError(
                f"--sweep item {item!r}: write SAMPLER:STEPS with SAMPLER one of ddpm, ddim, dpmpp2m"
            )
        out.append((f"{names[name]}-{steps}", {"name": name, "steps": int(steps)}))
    return out


def check_data(args: argparse.Namespace, image_size: int) -> Manifest:
    """Validate ``--data`` and ``--split`` from the manifest (no Ray needed); return the manifest."""
    from synth.reader import DatasetError, check_dataset

    try:
        manifest = check_dataset(args.data, args.s3_endpoint)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    counts = manifest.counts
    if counts and not manifest.split_count(args.split):
        have = ", ".join(f"{k} ({v})" for k, v in counts.items() if v) or "none"
        raise UserError(f"split {args.split!r} of {args.data} has no scenes; splits with scenes: {have}")
    size = manifest.config.get("size")
    if size is not None and int(size) != image_size:
        raise UserError(
            f"the dataset's images are {size}x{size} but the model expects {image_size}x{image_size}; "
            f"evaluate on a dataset generated at --size {image_size}"
        )
    return manifest


def load_scenes(args: argparse.Namespace, limit: int | None) -> Any:
    """The split's scenes (the first ``limit``) as a materialised Ray Dataset, in dataset order."""
    import ray.data

    from synth.reader import read_dataset

    ray.data.DataContext.get_current().execution_options.preserve_order = True  # same scenes every time
    dataset = read_dataset(args.data, split=args.split, endpoint_url=args.s3_endpoint)
    if limit:
        dataset = dataset.limit(limit)
    dataset = dataset.materialize()
    if dataset.count() == 0:
        raise UserError(f"split {args.split!r} of {args.data} has no scenes")
    return dataset


def score_dataset(
    dataset: Any,
    source: ModelSource,
    overrides: dict[str, Any],
    args: argparse.Namespace,
    teacher_forced: bool,
) -> tuple[list[dict[str, Any]], dict[int, bytes], float]:
    """Run ``SceneScorer`` over ``dataset``; returns records (scene order), strips by scene id, seconds."""
    start = time.time()
    scored = dataset.map_batches(
        SceneScorer,
        fn_constructor_kwargs={
            "source": source,
            "overrides": overrides,
            "seed": args.seed,
            "teacher_forced": teacher_forced,
        },
        batch_size=args.batch,
        batch_format="numpy",
        compute=actor_pool(args.workers),
        **actor_resources(getattr(args, "gpus", 0.0)),
    )
    records, strips = [], {}
    progress = Progress(
        dataset.count(), f"eval {source.label}", unit="scenes", every=getattr(args, "progress_every", 0)
    )
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        progress.update(len(batch["scene_id"]))
        for scene_id, record, strip in zip(
            batch["scene_id"], batch["record"], batch["strip_png"], strict=True
        ):
            records.append(json.loads(record))
            if len(strips) < args.sheet_rows:
                strips[int(scene_id)] = bytes(strip)
    progress.close()
    records.sort(key=lambda r: r["scene_id"])
    return records, strips, time.time() - start


def evaluate_models(args: argparse.Namespace, sources: list[ModelSource], overrides: dict[str, Any]) -> dict:
    from sas_model.metrics_report import MetricsAccumulator

    dataset = load_scenes(args, args.limit)
    out: dict[str, Any] = {"summaries": {}, "records": {}, "strips": {}, "seconds": {}}
    for source in sources:
        print(f"[eval] {source.label}: {source.uri}", flush=True)
        records, strips, seconds = score_dataset(dataset, source, overrides, args, not args.no_teacher_forced)
        acc = MetricsAccumulator()
        acc.extend(records)
        summary = acc.summary()
        summary["eval_seconds"] = seconds
        summary["images_per_s"] = len(records) / seconds if seconds else float("nan")
        out["summaries"][source.label] = summary
        out["records"][source.label] = acc
        out["strips"][source.label] = strips
        print(
            f"[eval] {source.label}: {len(records)} scenes, "
            f"mIoU free {summary.get('miou_free', float('nan')):.4f}"
            f", teacher-forced {summary.get('miou_tf', float('nan')):.4f}, {seconds:.1f} s",
            flush=True,
        )
    return out


def sweep_passes(args: argparse.Namespace, source: ModelSource) -> list[dict[str, Any]]:
    """Free-running metrics of ``source`` under each sweep setting (ensemble/consensus flags still apply)."""
    from sas_model.metrics_report import MetricsAccumulator

    settings = sweep_settings(args.sweep)
    base = {k: v for k, v in sampler_overrides(args).items() if k not in ("name", "steps")}
    dataset = load_scenes(args, args.sweep_limit or args.limit)
    rows = []
    for label, setting in settings:
        records, _, seconds = score_dataset(dataset, source, {**base, **setting}, args, teacher_forced=False)
        acc = MetricsAccumulator()
        acc.extend(records)
        summary = acc.summary()
        rows.append(
            {
                "setting": label,
                "sampler": setting["name"],
                "steps": setting["steps"],
                "images": len(records),
                "unet_passes_per_image": round(summary["unet_passes_mean"], 1),
                "miou_free": round(summary["miou_free"], 4),
                "layer_count_acc": round(summary["layer_count_acc"], 4),
                "ap50": round(summary["ap50"], 4) if "ap50" in summary else "",
                "seconds": round(seconds, 1),
            }
        )
        print(
            f"[sweep] {label}: {rows[-1]['unet_passes_per_image']} passes/image, "
            f"mIoU {rows[-1]['miou_free']}, {seconds:.1f} s",
            flush=True,
        )
    return rows


def _image_size(source: ModelSource) -> int:
    from sas_model.config import ModelConfig

    return ModelConfig.load(Path(source.checkpoint_dir) / "config.json").image_size


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.inference import eval_report

    if args.workers < 1 or args.batch < 1:
        raise UserError("--workers and --batch must be at least 1")
    specs = [parse_model_spec(text) for text in args.model]
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"model labels must differ, got {labels}; name them with --model LABEL=URI")
    if args.sweep_passes and len(specs) > 1:
        raise UserError("--sweep-passes takes exactly one --model")
    if args.sweep_passes and args.coco_out:
        raise UserError("--coco-out writes the evaluation's predictions; leave it out with --sweep-passes")
    tracking_uri = resolve_mlflow_uri(args.mlflow_uri)
    sources = []
    for label, uri in specs:
        source = resolve_model(uri, tracking_uri)
        source.label = label
        sources.append(source)
    overrides = sampler_overrides(args)
    if not args.sweep_passes:
        for source in sources:
            check_sampler_overrides(source, overrides)
    sizes = {_image_size(source) for source in sources}
    if len(sizes) > 1:
        raise UserError(
            f"the models work at different image sizes {sorted(sizes)}; compare models of one size"
        )
    manifest = check_data(args, sizes.pop())
    if args.sweep_passes:  # validate every sweep setting before starting Ray
        base = {k: v for k, v in overrides.items() if k not in ("name", "steps")}
        for _, setting in sweep_settings(args.sweep):
            check_sampler_overrides(sources[0], {**base, **setting})
    init_ray()
    args.gpus = resolve_gpus_per_worker(args.gpus_per_worker, cluster_gpus())
    print(f"[eval] {args.workers} worker(s), {args.gpus:g} GPU(s) each", flush=True)
    out_dir = Path(args.out)
    if args.sweep_passes:
        rows = sweep_passes(args, sources[0])
        files = eval_report.write_sweep(out_dir, rows, sources[0].label)
        print(eval_report.sweep_markdown(rows, sources[0].label))
        result: dict[str, Any] = {"sweep": rows, "files": files}
    else:
        evaluated = evaluate_models(args, sources, overrides)
        files = eval_report.write_report(out_dir, evaluated, sources, args)
        if args.coco_out:
            coco_files = eval_report.write_coco(Path(args.coco_out), evaluated)
            print(f"[eval] COCO JSON: {', '.join(str(p) for p in coco_files)}", flush=True)
            files += coco_files
        print(eval_report.comparison_markdown(evaluated["summaries"], args))
        result = {"summaries": evaluated["summaries"], "files": files}
    if not args.no_mlflow:
        result["mlflow_run_id"] = eval_report.log_to_mlflow(
            tracking_uri, args, sources, overrides, result, files, manifest
        )
        print(f"[eval] MLflow run {result['mlflow_run_id']} in experiment {args.experiment!r}", flush=True)
    print(f"[eval] report in {out_dir.resolve()}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as exc:
        fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
