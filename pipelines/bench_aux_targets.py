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
import torch.nn.functional as F
from scipy import ndimage

from pipelines.augment import perturb_cumulative_mask
from pipelines.bench_learning import parse_overrides, val_scenes
from pipelines.optim import lr_at
from sas_model.config import ModelConfig
from sas_model.diffusion import dice_loss, diffusion_loss
from sas_model.metrics import mask_iou
from sas_model.model import SASModel
from sas_model.unet import zero_module
from synth.render import RenderConfig, render_scenes
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
    """All output channels of the deterministic UNet (x_t = 0, t = T - 1)."""
    cond = model.condition(image, cumulative)
    t = torch.full((cond.shape[0],), model.cfg.diffusion.num_timesteps - 1, dtype=torch.long)
    return model.unet(torch.cat([cond, torch.zeros_like(cond[:, :1])], dim=1), t)


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
    rng, pool, next_id = np.random.default_rng(0), [], 0
    render = RenderConfig(size=cfg.image_size)
    print(f"aux={args.aux} params={model.num_parameters():,} overrides={args.set}", flush=True)
    train_s = 0.0
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        if len(pool) < 1024:
            while len(pool) < 2048:
                scenes = render_scenes(0, next_id, 256, render)
                next_id += 256
                pool += [x for s in scenes if s.split == "train" for x in scene_samples(s, args.aux)]
            pool = [pool[i] for i in rng.permutation(len(pool))]
        taken, pool = pool[: tc.batch_size], pool[tc.batch_size :]
        image, cumulative, layer, aux = (torch.from_numpy(np.stack([s[i] for s in taken])) for i in range(4))
        cumulative = perturb_cumulative_mask(cumulative, tc.cmask_noise_p)
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, tc.lr, tc.warmup_steps, args.steps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = logits(model, image, cumulative).float()
        x0 = layer.float().unsqueeze(1) * 2 - 1
        t = torch.full((x0.shape[0],), cfg.diffusion.num_timesteps - 1)
        loss = diffusion_loss(model.schedule, cfg.diffusion, out[:, :1], x0, x0, t, x0).total
        if channels:
            target = aux.float()
            aux_loss = F.binary_cross_entropy_with_logits(out[:, 1:], target) + dice_loss(
                torch.sigmoid(out[:, 1:]), target
            )
            loss = loss + args.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - min(tc.ema_decay, step / (9 + step)))
        train_s += time.perf_counter() - t0
        if step % args.eval_steps == 0 or step == args.steps:
            row = {"step": step, "minutes": round(train_s / 60, 2), "loss": round(float(loss.detach()), 3)}
            print(json.dumps({**row, **evaluate(ema, val, args.aux)}), flush=True)


if __name__ == "__main__":
    main()
