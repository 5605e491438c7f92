"""Probe: which extra dense targets speed up learning the layer task? (single process, no Ray)

Trains the ``tiny`` UNet deterministically (one forward, BCE + Dice + MSE on the layer mask, as
``diffusion.mode=deterministic``) with extra output channels for auxiliary targets computed from
each training scene, and reports teacher-forced IoU on layers 0-2 of held-out val scenes (and the
auxiliary channels' IoU). ``--aux``:

- ``none``: the layer mask only (the baseline);
- ``fg``: + every object of the scene (``C_L``), what ``diffusion.foreground_weight`` trains;
- ``fgb``: ``fg`` + the two sides of every occlusion boundary (visible pixels of the hidden object
  next to its occluder, and of the occluder next to the hidden object);
- ``vl``: the visible pixels of layer 0, 1, 2 and >= 3 objects (4 channels);
- ``coh``: ``fg`` + object coherence: the variance of the layer channel's probability inside each
  visible object outside ``C_k`` is penalised (there every visible object is wholly in the layer or
  wholly out of it);
- ``fg-only``: the foreground as the *only* target (a diagnostic: how fast does this UNet learn to
  find objects at all, as opposed to ordering them?).

``--curriculum 0:3 500:5 1000:8`` trains on scenes of at most 3 objects first, then 5, then the
default 8 (val scenes stay those of the default generator).

    python pipelines/bench_aux_targets.py --aux fg --steps 1500 --threads 1
    python pipelines/bench_aux_targets.py --aux fg --threads 1 --set unet.attention_resolutions=[16]
    python pipelines/bench_aux_targets.py --aux fg --threads 1 --curriculum 0:3 500:5 1000:8
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from scipy import ndimage

from pipelines.augment import perturb_cumulative_mask
from pipelines.bench_learning import SampleStream, parse_overrides, train_step, val_scenes
from pipelines.optim import lr_at
from sas_model.config import ModelConfig
from sas_model.diffusion import diffusion_loss, foreground_loss
from sas_model.metrics import mask_iou
from sas_model.model import SASModel
from sas_model.precision import autocast, autocast_dtype
from sas_model.unet import zero_module
from synth.render import RenderConfig
from synth.schema import Scene

AUX_CHANNELS = {"none": 0, "fg": 1, "fgb": 3, "vl": 4, "coh": 1, "fg-only": 0}


def aux_targets(scene: Scene, aux: str) -> np.ndarray:
    """``bool[A, H, W]`` auxiliary targets of one scene (A = ``AUX_CHANNELS[aux]``)."""
    channels: list[np.ndarray] = []
    if aux in ("fg", "fgb", "coh"):
        channels.append(scene.cumulative_masks[-1])
    if aux == "fgb":
        back = np.zeros(scene.image.shape[:2], bool)
        front = np.zeros_like(back)
        for i, j in scene.occlusion_edges:
            back |= scene.visible_masks[j] & ndimage.binary_dilation(scene.visible_masks[i])
            front |= scene.visible_masks[i] & ndimage.binary_dilation(scene.visible_masks[j])
        channels += [back, front]
    if aux == "vl":
        layer = np.minimum(scene.object_layer, 3)
        for k in range(4):
            channels.append(scene.visible_masks[layer == k].any(axis=0))
    if not channels:
        return np.zeros((0, *scene.image.shape[:2]), bool)
    return np.stack(channels)


def visible_ids(scene: Scene) -> np.ndarray:
    """``int16[H, W]``: 1 + the index of the object seen at each pixel, 0 on the background."""
    ids = np.zeros(scene.image.shape[:2], np.int16)
    for i, visible in enumerate(scene.visible_masks):
        ids[visible] = i + 1
    return ids


def scene_samples(scene: Scene, aux: str) -> list[tuple[np.ndarray, ...]]:
    """``(image, C_k, M_k, aux, visible ids)`` for k = 0..L (terminal included); one foreground sample
    for ``fg-only``."""
    targets, ids = aux_targets(scene, aux), visible_ids(scene)
    empty = np.zeros_like(scene.cumulative_masks[0])
    if aux == "fg-only":
        return [(scene.image, empty, scene.cumulative_masks[-1], targets, ids)]
    layers = scene.layer_masks.shape[0]
    return [
        (scene.image, scene.cumulative_masks[k], scene.layer_masks[k] if k < layers else empty, targets, ids)
        for k in range(layers + 1)
    ]


def coherence_loss(layer_logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean over visible objects of the variance of ``sigmoid(layer_logits [B,1,H,W])`` inside each
    object (``ids int [B,H,W]``, 0 = background, ignored)."""
    prob = torch.sigmoid(layer_logits[:, 0]).reshape(-1)
    b, n = ids.shape[0], int(ids.max()) + 1
    segment = (ids.long() + n * torch.arange(b).view(b, 1, 1)).reshape(-1)
    count = torch.zeros(b * n).index_add_(0, segment, torch.ones_like(prob))
    mean = torch.zeros(b * n).index_add_(0, segment, prob) / count.clamp(min=1)
    var = torch.zeros(b * n).index_add_(0, segment, (prob - mean[segment]) ** 2) / count.clamp(min=1)
    objects = (count > 0) & (torch.arange(b * n) % n != 0)
    return var[objects].mean()


def logits(model: SASModel, image: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
    """All output channels of the deterministic model (it zeroes x_t and fixes t itself)."""
    cond = model.condition(image, cumulative)
    t = torch.zeros(cond.shape[0], dtype=torch.long)
    return model.outputs(cond, torch.zeros_like(cond[:, :1]), t)


def mean_iou(predictions, targets) -> float:
    return round(float(np.mean([mask_iou(p, t) for p, t in zip(predictions, targets, strict=True)])), 3)


@torch.no_grad()
def evaluate(model: SASModel, scenes: list[Scene], aux: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for k in range(3):
        rows = [s for s in scenes if s.layer_masks.shape[0] > k]
        image = torch.from_numpy(np.stack([s.image for s in rows]))
        cumulative = torch.from_numpy(np.stack([s.cumulative_masks[k] for s in rows]))
        pred = (logits(model, image, cumulative) > 0).numpy()
        out[f"tf_layer{k}"] = mean_iou(pred[:, 0], [s.layer_masks[k] for s in rows])
        if k == 0 and aux == "fg-only":
            out["foreground"] = mean_iou(pred[:, 0], [s.cumulative_masks[-1] for s in rows])
        if k == 0 and AUX_CHANNELS[aux]:
            target = np.stack([aux_targets(s, aux) for s in rows])
            out["aux"] = [mean_iou(pred[:, 1 + c], target[:, c]) for c in range(AUX_CHANNELS[aux])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aux", choices=sorted(AUX_CHANNELS), default="fg")
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--coherence-weight", type=float, default=4.0, help="with --aux coh")
    ap.add_argument(
        "--curriculum",
        nargs="*",
        default=[],
        help="STEP:MAX_OBJECTS pairs: from STEP on, train on scenes of at most MAX_OBJECTS objects",
    )
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-steps", type=int, default=500)
    ap.add_argument("--val-scenes", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="dotted overrides of the tiny preset")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {"diffusion.mode": "deterministic", "diffusion.foreground_weight": 0.0}
    cfg = ModelConfig.preset("tiny").replace(**{**overrides, **parse_overrides(args.set)})
    model = SASModel(cfg)
    channels = AUX_CHANNELS[args.aux]
    if channels:
        model.unet.head = zero_module(
            torch.nn.Conv2d(model.unet.head.in_channels, 1 + channels, 3, padding=1)
        )
    ema, tc = copy.deepcopy(model).eval(), cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    val = val_scenes(0, cfg.image_size, args.val_scenes)
    stream = SampleStream(
        0,
        cfg.image_size,
        expand=lambda scene: scene_samples(scene, args.aux),
        fields=(0, 1, 2, 3, 4),
        hflip=False,
    )
    cpu = torch.device("cpu")
    amp_dtype = autocast_dtype(cpu, tc.precision)
    print(f"aux={args.aux} params={model.num_parameters():,} overrides={args.set}", flush=True)
    t = torch.full((tc.batch_size,), cfg.diffusion.num_timesteps - 1)
    train_s = 0.0
    stages = {int(k): int(v) for k, v in (item.split(":") for item in args.curriculum)}
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        if step - 1 in stages:  # a new curriculum stage: fresh scenes from the new generator config
            stream.cfg = RenderConfig(size=cfg.image_size, max_objects=stages[step - 1])
            stream.pool = []
        image, cumulative, layer, aux, ids = stream.batch(tc.batch_size)
        cumulative_true = cumulative
        cumulative = perturb_cumulative_mask(cumulative, tc.cmask_noise_p)
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, tc.lr, tc.warmup_steps, args.steps)
        with autocast(cpu, amp_dtype):
            out = logits(model, image, cumulative).float()
        x0 = layer.float().unsqueeze(1) * 2 - 1
        loss = diffusion_loss(model.schedule, cfg.diffusion, out[:, :1], x0, x0, t, x0).total
        if channels:
            loss = loss + args.aux_weight * foreground_loss(out[:, 1:], aux)
        if args.aux == "coh":
            # outside C_k every visible object is wholly in M_k or wholly out of it (inside, the amodal
            # parts of layer-k objects hidden behind C_k cut across the visible objects)
            outside = ids * (1 - cumulative_true.to(ids.dtype))
            loss = loss + args.coherence_weight * coherence_loss(out[:, :1], outside)
        train_step(model, ema, opt, loss, step - 1)
        train_s += time.perf_counter() - t0
        if step % args.eval_steps == 0 or step == args.steps:
            row = {"step": step, "minutes": round(train_s / 60, 2), "loss": round(float(loss.detach()), 3)}
            print(json.dumps({**row, **evaluate(ema, val, args.aux)}), flush=True)


if __name__ == "__main__":
    main()
