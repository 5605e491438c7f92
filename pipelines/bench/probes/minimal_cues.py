"""Exploratory probe of round 4 (the model issue): the minimal task with and without the cue module.

The ``tiny`` UNet as a plain deterministic segmenter of layer 0 (BCE + Dice, AdamW 2e-3 cosine,
batch 32, fresh scenes of a family every step, bf16 autocast), optionally reading the occlusion-cue
module's channels (``--variant pool``: ownership + boundary + pooled region; ``own``: local only).
Reports layer-0 IoU against the trivial answer, pair order (front object's mean probability beats
the back one's), the cue module's per-pixel ownership accuracy and the region map's pair order.
Kept as the record of docs/RESULTS.md round 4; ``pipelines/bench/learning.py --minimal`` is the
maintained probe. Run from the repository root::

    python pipelines/bench/probes/minimal_cues.py --variant base --steps 1000 --eval-every 250 --threads 1
    python pipelines/bench/probes/minimal_cues.py --variant pool --steps 1000 --eval-every 250 --threads 2
"""

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from sas_model.config import CueConfig, ModelConfig
from sas_model.occlusion import OcclusionCues, cue_loss, cue_targets
from sas_model.unet import UNet
from synth.families import family_config
from synth.layering import occlusion_maps
from synth.render import render_scenes

ap = argparse.ArgumentParser()
ap.add_argument("--family", default="flat2")
ap.add_argument("--steps", type=int, default=1000)
ap.add_argument("--eval-every", type=int, default=250)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--preset", default="tiny")
ap.add_argument("--variant", default="base", choices=["base", "own", "pool", "poolonly"])
ap.add_argument("--cue", nargs="*", default=[])
ap.add_argument("--set", nargs="*", default=[])
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--val", type=int, default=256)
ap.add_argument("--all-k", action="store_true")
ap.add_argument("--detach", action="store_true")
ap.add_argument("--fp32", action="store_true")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
rc = family_config(a.family, 64)
mc = ModelConfig.preset(a.preset)
over = {}
for kv in a.set:
    k, _, v = kv.partition("=")
    over[k] = json.loads(v)
if over:
    mc = mc.replace(**over)
cc = CueConfig(enabled=True, pool=a.variant in ("pool", "poolonly"))
for kv in a.cue:
    k, _, v = kv.partition("=")
    cc = type(cc)(
        **{**cc.__dict__, k: json.loads(v) if not isinstance(getattr(cc, k), tuple) else tuple(json.loads(v))}
    )
use_cues = a.variant != "base"


class Net(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.cues = OcclusionCues(cc) if use_cues else None
        s.unet = UNet(mc.unet, 64, in_channels=4 + (3 if use_cues else 0), out_channels=1)

    def forward(s, x):
        if s.cues is None:
            return s.unet(x, torch.zeros(x.shape[0], dtype=torch.long)), None
        c = s.cues(x)
        ch = c.channels()
        if a.detach:
            ch = ch.detach()
        if a.variant == "poolonly":
            return c.region * 0 + (-c.region), c  # front = not region
        return s.unet(torch.cat([x, ch.to(x.dtype)], 1), torch.zeros(x.shape[0], dtype=torch.long)), c


net = Net()
ema = copy.deepcopy(net).eval()
opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0.0)
print(
    f"params {sum(p.numel() for p in net.parameters()):,} "
    f"cue {sum(p.numel() for p in net.cues.parameters()) if net.cues else 0:,} {vars(a)}",
    flush=True,
)


def scenes(start, n, split):
    out = []
    while len(out) < n:
        out += [s for s in render_scenes(0, start, 256, rc) if s.split == split]
        start += 256
    return out[:n], start


def samples(sc):
    out = []
    for s in sc:
        m = occlusion_maps(s.amodal_masks, s.visible_masks, s.object_layer).stacked()
        ks = range(s.num_layers + 1) if a.all_k else [0]
        for k in ks:
            mk = s.layer_masks[k] if k < s.num_layers else np.zeros_like(s.layer_masks[0])
            out.append((s.image, s.cumulative_masks[k], mk, m, k))
    return out


def tensors(sm):
    img = torch.from_numpy(np.stack([s[0] for s in sm])).permute(0, 3, 1, 2).float() / 127.5 - 1
    ck = torch.from_numpy(np.stack([s[1] for s in sm])).float()[:, None] * 2 - 1
    mk = torch.from_numpy(np.stack([s[2] for s in sm])).float()[:, None]
    maps = torch.from_numpy(np.stack([s[3] for s in sm]))
    k = torch.tensor([s[4] for s in sm])
    return torch.cat([img, ck], 1), mk, maps, k


val, _ = scenes(50_000_000, a.val, "val")
vx, vm, vmaps, vk = tensors(
    [
        (
            s.image,
            s.cumulative_masks[0],
            s.layer_masks[0],
            occlusion_maps(s.amodal_masks, s.visible_masks, s.object_layer).stacked(),
            0,
        )
        for s in val
    ]
)
ctx = (
    (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    if not a.fp32
    else (lambda: torch.autocast("cpu", enabled=False))
)


def evaluate(model):
    with torch.no_grad(), ctx():
        logit, c = model(vx)
    p = torch.sigmoid(logit.float())[:, 0].numpy()
    ious, triv, pairs, rpairs = [], [], [], []
    for s, pi in zip(val, p, strict=False):
        pr = pi > 0.5
        gt = s.layer_masks[0]
        fg = s.cumulative_masks[-1]
        ious.append((pr & gt).sum() / max(1, (pr | gt).sum()))
        triv.append((fg & gt).sum() / max(1, (fg | gt).sum()))
        score = [pi[v].mean() if v.sum() else 0.0 for v in s.visible_masks]
        for f, b in np.asarray(s.occlusion_edges).reshape(-1, 2):
            if s.object_layer[f] == 0:
                pairs.append(score[f] > score[b])
    out = dict(
        l0=float(np.mean(ious)),
        trivial=float(np.mean(triv)),
        pair_order=float(np.mean(pairs)),
        n_pairs=len(pairs),
    )
    if c is not None:
        t = cue_targets(vmaps, vk)
        w = t.boundary * t.active
        own_acc = (((c.ownership[:, 0].float() > 0).float() == t.ownership).float() * w).sum() / w.sum()
        out["own_acc"] = float(own_acc)
        out["bnd_f1"] = float(
            2
            * ((c.boundary[:, 0] > 0).float() * t.boundary).sum()
            / ((c.boundary[:, 0] > 0).float().sum() + t.boundary.sum())
        )
        r = torch.sigmoid(c.region.float())[:, 0].numpy()
        for s, ri in zip(val, r, strict=False):
            score = [ri[v].mean() if v.sum() else 0.0 for v in s.visible_masks]
            for f, b in np.asarray(s.occlusion_edges).reshape(-1, 2):
                if s.object_layer[f] == 0:
                    rpairs.append(score[f] < score[b])
        out["region_pair"] = float(np.mean(rpairs))
    return out


pool, nid, t0 = [], 0, time.time()
rng = np.random.default_rng(0)
for step in range(1, a.steps + 1):
    if len(pool) < a.batch:
        more, nid = scenes(nid, 512, "train")
        pool += samples(more)
        rng.shuffle(pool)
    batch, pool = pool[: a.batch], pool[a.batch :]
    x, mk, maps, k = tensors(batch)
    if step % 2:
        x, mk, maps = x.flip(3), mk.flip(3), maps.flip(3)
    lr = a.lr * min(1, step / 50) * 0.5 * (1 + np.cos(np.pi * step / a.steps))
    for g in opt.param_groups:
        g["lr"] = lr
    with ctx():
        logit, c = net(x)
    logit = logit.float()
    pr = torch.sigmoid(logit)
    dice = 1 - (2 * (pr * mk).sum((1, 2, 3)) + 1) / (pr.sum((1, 2, 3)) + mk.sum((1, 2, 3)) + 1)
    loss = F.binary_cross_entropy_with_logits(logit, mk) + dice.mean()
    terms = {}
    if c is not None:
        terms = cue_loss(c, cue_targets(maps, k), junction_weight=cc.junction_weight)
        if a.variant == "own":
            terms.pop("region")
            terms.pop("embedding")
        loss = loss + cc.weight * sum(terms.values())
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), net.parameters(), strict=False):
            pe.lerp_(pm, 1 - min(0.995, (1 + step) / (10 + step)))
    if step % a.eval_every == 0 or step == a.steps:
        print(
            json.dumps(
                {
                    "step": step,
                    "min": round((time.time() - t0) / 60, 2),
                    "loss": round(float(loss.detach()), 3),
                    **{k: round(float(v), 3) for k, v in terms.items()},
                    **{k: round(v, 3) for k, v in evaluate(ema).items()},
                }
            ),
            flush=True,
        )
