"""Named presets of ``ModelConfig``: ``paper`` (the reference protocol), ``small`` and ``tiny`` (CPU).

``tiny`` was chosen with ``pipelines/bench/learning.py`` (learning curves in the model issue's note):
x0 prediction with BCE + Dice on the clean-mask estimate, timesteps drawn with density ∝ t³ (the
high-noise end, where the model must read the image, is where learning happens; at 1,000 steps this
beat density ∝ t by 0.31 vs 0.30 layer-0 IoU and 0.32 vs 0.30 on layer 1), AdamW 2e-3, DDIM-5 (on a
1,500-step model DDIM-1/2/5/10 gave layer-0 IoU 0.354/0.345/0.333/0.324: more steps do not help
yet, so fewer passes). An auxiliary foreground head (``diffusion.foreground_weight``: a second
output channel trained to mark every object of the scene) adds dense "where are the objects"
supervision: with the round-2 probe (``bench_aux_targets.py``, since retired) it raised
teacher-forced IoU at 1,500 steps from 0.39 / 0.41 / 0.38 to 0.43 / 0.44 / 0.40 on layers
0 / 1 / 2 (docs/RESULTS.md). Training autocasts to bf16 on CPUs with native bf16
(``train.precision=auto``; 1.46x the samples/s of fp32 here). The occlusion-cue module (``cues``:
border ownership from self-similarity features, pooled over each object by attention;
``sas_model/occlusion.py``) is on in ``tiny`` and ``small``: it is what lets the model learn which
objects are in front at all (docs/RESULTS.md, round 4). Every knob is a config field, so tuning
never needs a code change.

A preset is data: the nested dict of the fields it sets (``ModelConfig.to_dict`` layout; the other
fields keep their defaults), built by ``ModelConfig.preset(name)`` through ``from_dict``, where an
unknown key is an error.
"""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = {
    "name": "tiny",
    "image_size": 64,
    "unet": {
        "base_channels": 32,
        "channel_mults": (1, 2, 2),
        "num_res_blocks": 1,
        "attention_resolutions": (),
        "mid_attention": True,
        "num_head_channels": 32,
        "stem_stride": 2,
        "self_condition": False,
    },
    "diffusion": {
        "prediction_type": "x0",
        "beta_schedule": "linear",
        "mask_scale": 1.0,
        "mse_weight": 1.0,
        "bce_weight": 1.0,
        "dice_weight": 1.0,
        "timestep_sampling": "high_noise",
        "timestep_bias": 3.0,  # density ∝ t³: mostly the image-reading high-noise end
        "foreground_weight": 0.0,  # the order head marks the objects
    },
    "sampler": {"name": "ddim", "steps": 5, "eta": 0.0, "ensemble_size": 3},
    "train": {
        "lr": 2e-3,
        "batch_size": 32,
        "warmup_steps": 50,
        "max_steps": 5000,  # ~15 min on 2 cores with bf16 (0.18 s/step); a --minutes budget ends it sooner
        "ema_decay": 0.995,
        "cmask_noise_p": 0.2,
    },
    # the order head (with its own occlusion-cue module) decides layers; the diffusion UNet completes
    # hidden parts and reads no cues
    "cues": {"enabled": False},
    "order": {"enabled": True},
}


SMALL: dict[str, Any] = {
    "name": "small",
    "image_size": 64,
    "unet": {
        "base_channels": 48,
        "channel_mults": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attention_resolutions": (8,),
        "mid_attention": True,
        "num_head_channels": 32,
        "stem_stride": 2,
        "self_condition": True,
    },
    "diffusion": {
        "prediction_type": "x0",
        "beta_schedule": "linear",
        "mask_scale": 1.0,
        "mse_weight": 1.0,
        "bce_weight": 1.0,
        "dice_weight": 1.0,
        "timestep_sampling": "high_noise",
        "timestep_bias": 1.0,
        "self_cond_prob": 0.5,
        "foreground_weight": 0.0,
    },
    "sampler": {"name": "ddim", "steps": 10, "eta": 0.0, "ensemble_size": 3},
    "train": {
        "lr": 5e-4,
        "batch_size": 32,
        "warmup_steps": 100,
        "max_steps": 4000,
        "ema_decay": 0.999,
        "cmask_noise_p": 0.2,
    },
    "cues": {"enabled": False},
    "order": {
        "enabled": True,
        "unet": {
            "base_channels": 48,
            "channel_mults": (1, 2, 2, 2),
            "num_res_blocks": 2,
            "attention_resolutions": (8,),
            "stem_stride": 2,
        },
    },
}


PAPER: dict[str, Any] = {
    "name": "paper",
    "image_size": 64,
    "unet": {
        "base_channels": 128,
        "channel_mults": (1, 2, 3, 4),
        "num_res_blocks": 2,
        "attention_resolutions": (16,),
        "mid_attention": True,
        "num_head_channels": 64,
        "dropout": 0.0,
        "scale_shift_norm": False,
        "stem_stride": 1,
        "self_condition": False,
    },
    "diffusion": {
        "prediction_type": "epsilon",
        "beta_schedule": "linear",
        "num_timesteps": 1000,
        "mse_weight": 1.0,
        "bce_weight": 0.0,
        "dice_weight": 0.0,
        "timestep_sampling": "uniform",
    },
    "sampler": {
        "name": "ddpm",
        "steps": 1000,
        "eta": 1.0,
        "ensemble_size": 3,
        "threshold": 0.5,
        "min_foreground": 0.0025,
        "consensus": "medoid",
        "max_layers": 6,
        "merge_disconnected": True,
    },
    "train": {
        "lr": 1e-4,
        "weight_decay": 0.0,
        "batch_size": 256,
        "warmup_steps": 0,
        "max_steps": 100_000,
        "ema_decay": 0.9999,
        "cmask_noise_p": 0.0,
    },
}


# The round-6 ``tiny``: the sequential diffusion model deciding the layers itself (the paper's method
# at CPU size, with the occlusion cues and the foreground head); the baseline of the order head.
TINY_SEQUENTIAL: dict[str, Any] = {
    **TINY,
    "name": "tiny-sequential",
    "diffusion": {**TINY["diffusion"], "foreground_weight": 1.0},
    "cues": {"enabled": True},
    "order": {"enabled": False},
}


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": TINY,
    "tiny-sequential": TINY_SEQUENTIAL,
    "small": SMALL,
    "paper": PAPER,
}
