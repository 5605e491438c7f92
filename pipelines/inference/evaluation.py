"""Evaluation on Ray Data: every scene segmented free-running (and teacher-forced), scored inside the
model-holding actors, merged on the driver into per-model summaries; or one model's mIoU against UNet
passes (the sweep). ``run(request)`` is what ``pipelines/evaluate.py`` calls (its docstring lists the
outputs); the report files and the MLflow run come from ``inference.eval_report``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cli.progress import Progress
from pipelines.inference import eval_report
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
    check_sampler_overrides,
    cluster_gpus,
    resolve_gpus_per_worker,
)
from pipelines.inference.request import EvalRequest, EvalResult
from pipelines.tracking.store import resolve_mlflow_uri
from sas_model.codec import encode_png
from sas_model.config import ModelConfig
from sas_model.metrics_report import MetricsAccumulator, ObjectsTruth, score_image
from synth.cli import UserError
from synth.ray_runtime import init_ray
from synth.reader import DatasetError, check_dataset, read_dataset
from synth.schema import Manifest, decode_scene

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
    return encode_png(np.concatenate(result.comparison_panels(scene.image, scene.layer_masks), axis=1))


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


def check_data(request: EvalRequest, image_size: int) -> Manifest:
    """Validate the request's data and split from the manifest (no Ray needed); return the manifest."""
    try:
        manifest = check_dataset(request.data, request.s3_endpoint)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    counts = manifest.counts
    if counts and not manifest.split_count(request.split):
        have = ", ".join(f"{k} ({v})" for k, v in counts.items() if v) or "none"
        raise UserError(
            f"split {request.split!r} of {request.data} has no scenes; splits with scenes: {have}"
        )
    size = manifest.config.get("size")
    if size is not None and int(size) != image_size:
        raise UserError(
            f"the dataset's images are {size}x{size} but the model expects {image_size}x{image_size}; "
            f"evaluate on a dataset generated at --size {image_size}"
        )
    return manifest


def load_scenes(request: EvalRequest, limit: int | None) -> Any:
    """The split's scenes (the first ``limit``) as a materialised Ray Dataset, in dataset order."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True  # same scenes every time
    dataset = read_dataset(request.data, split=request.split, endpoint_url=request.s3_endpoint)
    if limit:
        dataset = dataset.limit(limit)
    dataset = dataset.materialize()
    if dataset.count() == 0:
        raise UserError(f"split {request.split!r} of {request.data} has no scenes")
    return dataset


def score_dataset(
    dataset: Any,
    source: ModelSource,
    overrides: dict[str, Any],
    request: EvalRequest,
    teacher_forced: bool,
    gpus: float,
) -> tuple[list[dict[str, Any]], dict[int, bytes], float]:
    """Run ``SceneScorer`` over ``dataset``; returns records (scene order), strips by scene id, seconds."""
    start = time.time()
    scored = dataset.map_batches(
        SceneScorer,
        fn_constructor_kwargs={
            "source": source,
            "overrides": overrides,
            "seed": request.seed,
            "teacher_forced": teacher_forced,
        },
        batch_size=request.batch,
        batch_format="numpy",
        compute=actor_pool(request.workers),
        **actor_resources(gpus),
    )
    records, strips = [], {}
    progress = Progress(dataset.count(), f"eval {source.label}", unit="scenes", every=request.progress_every)
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        progress.update(len(batch["scene_id"]))
        for scene_id, record, strip in zip(
            batch["scene_id"], batch["record"], batch["strip_png"], strict=True
        ):
            records.append(json.loads(record))
            if len(strips) < request.sheet_rows:
                strips[int(scene_id)] = bytes(strip)
    progress.close()
    records.sort(key=lambda r: r["scene_id"])
    return records, strips, time.time() - start


def evaluate_models(
    request: EvalRequest, sources: list[ModelSource], overrides: dict[str, Any], gpus: float
) -> dict:
    dataset = load_scenes(request, request.limit)
    out: dict[str, Any] = {"summaries": {}, "records": {}, "strips": {}, "seconds": {}}
    for source in sources:
        print(f"[eval] {source.label}: {source.uri}", flush=True)
        records, strips, seconds = score_dataset(
            dataset, source, overrides, request, request.teacher_forced, gpus
        )
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


def sweep_passes(request: EvalRequest, source: ModelSource, gpus: float) -> list[dict[str, Any]]:
    """Free-running metrics of ``source`` under each sweep setting (ensemble/consensus flags still apply)."""
    settings = sweep_settings(request.sweep)
    base = {k: v for k, v in request.sampler.items() if k not in ("name", "steps")}
    dataset = load_scenes(request, request.sweep_limit or request.limit)
    rows = []
    for label, setting in settings:
        records, _, seconds = score_dataset(
            dataset, source, {**base, **setting}, request, teacher_forced=False, gpus=gpus
        )
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
    return ModelConfig.load(Path(source.checkpoint_dir) / "config.json").image_size


def run(request: EvalRequest) -> EvalResult:
    """Evaluate (or sweep) as ``request`` says: check everything that needs no Ray first, then score,
    write the report, log the MLflow run. One-line ``UserError`` on bad input."""
    started = time.time()
    request.validate()
    specs = [parse_model_spec(text) for text in request.models]
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"model labels must differ, got {labels}; name them with --model LABEL=URI")
    tracking_uri = resolve_mlflow_uri(request.mlflow_uri)
    sources = []
    for label, uri in specs:
        source = resolve_model(uri, tracking_uri)
        source.label = label
        sources.append(source)
    overrides = dict(request.sampler)
    if not request.sweep_passes:
        for source in sources:
            check_sampler_overrides(source, overrides)
    sizes = {_image_size(source) for source in sources}
    if len(sizes) > 1:
        raise UserError(
            f"the models work at different image sizes {sorted(sizes)}; compare models of one size"
        )
    manifest = check_data(request, sizes.pop())
    if request.sweep_passes:  # validate every sweep setting before starting Ray
        base = {k: v for k, v in overrides.items() if k not in ("name", "steps")}
        for _, setting in sweep_settings(request.sweep):
            check_sampler_overrides(sources[0], {**base, **setting})
    init_ray()
    gpus = resolve_gpus_per_worker(request.gpus_per_worker, cluster_gpus())
    print(f"[eval] {request.workers} worker(s), {gpus:g} GPU(s) each", flush=True)
    out_dir = Path(request.out)
    result = EvalResult()
    if request.sweep_passes:
        result.sweep = sweep_passes(request, sources[0], gpus)
        result.files = eval_report.write_sweep(out_dir, result.sweep, sources[0].label)
        print(eval_report.sweep_markdown(result.sweep, sources[0].label))
    else:
        evaluated = evaluate_models(request, sources, overrides, gpus)
        result.summaries = evaluated["summaries"]
        result.files = eval_report.write_report(out_dir, evaluated, sources, request)
        if request.coco_out:
            coco_files = eval_report.write_coco(Path(request.coco_out), evaluated)
            print(f"[eval] COCO JSON: {', '.join(str(p) for p in coco_files)}", flush=True)
            result.files += coco_files
        print(eval_report.comparison_markdown(result.summaries, request))
    if request.mlflow:
        result.mlflow_run_id = eval_report.log_to_mlflow(tracking_uri, request, sources, result, manifest)
        print(f"[eval] MLflow run {result.mlflow_run_id} in experiment {request.experiment!r}", flush=True)
    print(f"[eval] report in {out_dir.resolve()}", flush=True)
    result.seconds = time.time() - started
    return result
