"""Exploratory probe of round 4: can a local CNN learn border ownership, and from what input?

Trains only a border-ownership classifier on 2-object flat scenes (``flat2``) and reports its
per-pixel accuracy on the border pixels of held-out scenes (chance 0.5):
``--arch plain`` a full-resolution CNN on RGB (stays at chance: swapping the two colours swaps the
answer, and it finds no symmetry-breaking feature), ``--arch ssim`` the same CNN on the
self-similarity stack, ``--arch cue`` the cue module (``--cue pool=false`` for ownership only).
Run from the repository root::

    python pipelines/bench/probes/ownership.py --arch plain --depth 6 --steps 400
    python pipelines/bench/probes/ownership.py --arch ssim --steps 400
    python pipelines/bench/probes/ownership.py --arch cue --cue pool=false --steps 400
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from sas_model.config import CueConfig
from sas_model.occlusion import OcclusionCues, cue_loss, cue_targets
from synth.families import family_config
from synth.layering import occlusion_maps
from synth.render import render_scenes

ap = argparse.ArgumentParser()
ap.add_argument("--family", default="flat2")
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--width", type=int, default=32)
ap.add_argument("--depth", type=int, default=4)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--arch", default="cue")
ap.add_argument("--cue", nargs="*", default=[])
ap.add_argument("--val", type=int, default=256)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
rc = family_config(a.family, 64)
if a.arch == "cue":
    kw = {}
    for kv in a.cue:
        k, _, v = kv.partition("=")
        kw[k] = json.loads(v)
    cc = CueConfig(width=a.width, depth=a.depth, **kw)
    net = OcclusionCues(cc)

    def fwd(x):
        return net(x)
elif a.arch == "ssim":

    class SSim(torch.nn.Module):
        def __init__(s, radius=2, dilations=(1, 2, 4)):
            super().__init__()
            s.offsets = [
                (dy * d, dx * d)
                for d in dilations
                for dy in range(-radius, radius + 1)
                for dx in range(-radius, radius + 1)
                if (dy, dx) != (0, 0)
            ]
            s.log_tau = torch.nn.Parameter(torch.tensor(3.0))
            k = len(s.offsets)
            layers = [torch.nn.Conv2d(k, a.width, 3, padding=1)]
            for i in range(a.depth):
                d = [1, 2, 4, 1][i % 4]
                layers += [torch.nn.SiLU(), torch.nn.Conv2d(a.width, a.width, 3, padding=d, dilation=d)]
            layers += [torch.nn.SiLU(), torch.nn.Conv2d(a.width, 1, 1)]
            s.net = torch.nn.Sequential(*layers)

        def forward(s, x):
            rgb = x[:, :3].float()
            m = max(max(abs(dy), abs(dx)) for dy, dx in s.offsets)
            pad = F.pad(rgb, (m, m, m, m), value=10.0)
            h, w = rgb.shape[-2:]
            feats = []
            for dy, dx in s.offsets:
                sh = pad[:, :, m + dy : m + dy + h, m + dx : m + dx + w]
                feats.append(((rgb - sh) ** 2).sum(1))
            d2 = torch.stack(feats, 1)
            return s.net(torch.exp(-d2 * s.log_tau.exp()) * 2 - 1)

    net = SSim()
    fwd = net
else:  # plain full-res CNN
    layers = [torch.nn.Conv2d(4, a.width, 3, padding=1)]
    for i in range(a.depth):
        d = [1, 2, 4, 8, 1][i % 5]
        layers += [torch.nn.SiLU(), torch.nn.Conv2d(a.width, a.width, 3, padding=d, dilation=d)]
    layers += [torch.nn.SiLU(), torch.nn.Conv2d(a.width, 1, 1)]
    net = torch.nn.Sequential(*layers)
    fwd = net
opt = torch.optim.AdamW(net.parameters(), lr=a.lr)


def batch(start, n, split):
    sc = []
    while len(sc) < n:
        sc += [s for s in render_scenes(0, start, 256, rc) if s.split == split]
        start += 256
    sc = sc[:n]
    img = torch.from_numpy(np.stack([s.image for s in sc])).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = torch.cat([img, -torch.ones_like(img[:, :1])], 1)
    maps = torch.from_numpy(
        np.stack([occlusion_maps(s.amodal_masks, s.visible_masks, s.object_layer).stacked() for s in sc])
    )
    return x, cue_targets(maps, torch.zeros(n, dtype=torch.long)), start


vx, vt, _ = batch(50_000_000, a.val, "val")
nid, pool = 0, None
t0 = time.time()
for step in range(1, a.steps + 1):
    x, t, nid = batch(nid, 32, "train")
    lr = a.lr * min(1, step / 50) * 0.5 * (1 + np.cos(np.pi * step / a.steps))
    for g in opt.param_groups:
        g["lr"] = lr
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = fwd(x)
    if a.arch == "cue":
        terms = cue_loss(o, t, junction_weight=cc.junction_weight)
        if not cc.pool:
            terms.pop("region")
            terms.pop("embedding")
        loss = sum(terms.values())
    else:
        w = t.boundary * t.active
        loss = (
            F.binary_cross_entropy_with_logits(o[:, 0].float(), t.ownership, reduction="none") * w
        ).sum() / w.sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            vout = fwd(vx)
        vo = (vout.ownership if a.arch == "cue" else vout)[:, 0].float()
        w = vt.boundary * vt.active
        acc = (((vo > 0).float() == vt.ownership).float() * w).sum() / w.sum()
        extra = {}
        if a.arch == "cue" and cc.pool:
            r = torch.sigmoid(vout.region[:, 0].float())
            vid = vt.visible_id
            ok = n = 0
            for i in range(len(vx)):
                ids = [j for j in vid[i].unique().tolist() if j > 0]
                score = {j: float(r[i][vid[i] == j].mean()) for j in ids}
                tgt = {j: float(vt.region[i][vid[i] == j].mean()) for j in ids}
                for p in ids:
                    for q in ids:
                        if tgt[p] < 0.5 and tgt[q] > 0.5:
                            n += 1
                            ok += score[p] < score[q]
            extra["region_pair"] = round(ok / max(1, n), 3)
        print(
            json.dumps(
                {
                    "step": step,
                    "s": round(time.time() - t0),
                    "loss": round(float(loss), 3),
                    "own_acc": round(float(acc), 3),
                    **extra,
                }
            ),
            flush=True,
        )
