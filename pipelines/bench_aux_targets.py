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
- ``fg-only``: the foreground as the *only* target (a diagnostic: how fast does this UNet learn to
  find objects at all, as opposed to ordering them?).

    python pipelines/bench_aux_targets.py --aux fg --steps 1500 --threads 1
    python pipelines/bench_aux_targets.py --aux fg --threads 1 --set unet.attention_resolutions=[16]
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
from synth.schema import Scene

AUX_CHANNELS = {"none": 0, "fg": 1, "fgb": 3, "vl": 4, "fg-only": 0}


def aux_targets(scene: Scene, aux: str) -> np.ndarray:
    """``bool[A, H, W]`` auxiliary targets of one scene (A = ``AUX_CHANNELS[aux]``)."""
    channels: list[np.ndarray] = []
    if aux in ("fg", "fgb"):
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


def scene_samples(scene: Scene, aux: str) -> list[tuple[np.ndarray, ...]]:
    """``(image, C_k, M_k, aux)`` for k = 0..L (terminal included); one foreground sample for ``fg-only``."""
    targets = aux_targets(scene, aux)
    if aux == "fg-only":
        return [(scene.image, np.zeros_like(scene.cumulative_masks[0]), scene.cumulative_masks[-1], targets)]
    empty = np.zeros_like(scene.cumulative_masks[0])
    layers = scene.layer_masks.shape[0]
    return [
        (scene.image, scene.cumulative_masks[k], scene.layer_masks[k] if k < layers else empty, targets)
        for k in range(layers + 1)
    ]


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
        fields=(0, 1, 2, 3),
        hflip=False,
    )
    cpu = torch.device("cpu")
    amp_dtype = autocast_dtype(cpu, tc.precision)
    print(f"aux={args.aux} params={model.num_parameters():,} overrides={args.set}", flush=True)
    t = torch.full((tc.batch_size,), cfg.diffusion.num_timesteps - 1)
    train_s = 0.0
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        image, cumulative, layer, aux = stream.batch(tc.batch_size)
        cumulative = perturb_cumulative_mask(cumulative, tc.cmask_noise_p)
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, tc.lr, tc.warmup_steps, args.steps)
        with autocast(cpu, amp_dtype):
            out = logits(model, image, cumulative).float()
        x0 = layer.float().unsqueeze(1) * 2 - 1
        loss = diffusion_loss(model.schedule, cfg.diffusion, out[:, :1], x0, x0, t, x0).total
        if channels:
            loss = loss + args.aux_weight * foreground_loss(out[:, 1:], aux)
        train_step(model, ema, opt, loss, step - 1)
        train_s += time.perf_counter() - t0
        if step % args.eval_steps == 0 or step == args.steps:
            row = {"step": step, "minutes": round(train_s / 60, 2), "loss": round(float(loss.detach()), 3)}
            print(json.dumps({**row, **evaluate(ema, val, args.aux)}), flush=True)


if __name__ == "__main__":
    main()
