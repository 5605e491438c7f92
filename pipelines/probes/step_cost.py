"""Seconds per training step of ``tiny`` with and without the cue module, side by side (no Ray).

One batch of 32 ``flat`` samples, forward + backward + AdamW, 2 warm-up steps then the mean of 3::

    python pipelines/probes/step_cost.py --threads 1 --precision fp32
"""

import argparse
import sys
import time

sys.path.insert(0, ".")
import torch  # noqa: E402

from sas_model.config import ModelConfig  # noqa: E402
from sas_model.model import SASModel  # noqa: E402
from sas_model.precision import autocast, autocast_dtype  # noqa: E402
from synth.families import family_config  # noqa: E402
from synth.reader import collate_samples, scene_to_samples  # noqa: E402
from synth.render import render_scenes  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--precision", default="fp32")
ap.add_argument(
    "--set", nargs="*", default=[], help="extra overrides for the cue row, e.g. cues.query_stride=4"
)
a = ap.parse_args()
torch.set_num_threads(a.threads)
scenes = render_scenes(0, 0, 64, family_config("flat"))
samples = [s for scene in scenes for s in scene_to_samples(scene)][:32]
batch = {k: torch.from_numpy(v) for k, v in collate_samples(samples).items()}
dtype = autocast_dtype(torch.device("cpu"), a.precision)
extra = dict(kv.split("=", 1) for kv in a.set)
for label, overrides in (("no cues", {"cues.enabled": False}), ("cues", {"cues.enabled": True, **extra})):
    model = SASModel(ModelConfig.preset("tiny").replace(**overrides))
    opt = torch.optim.AdamW(model.parameters())
    for i in range(5):
        if i == 2:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            loss, _ = model(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"{label}: {(time.perf_counter() - start) / 3:.3f} s/step ({a.precision}, {a.threads} thread(s))")
