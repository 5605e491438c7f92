"""One typed model config: nested dataclasses, JSON round trip, presets and dotted overrides.

    cfg = ModelConfig.preset("tiny").replace(**{"diffusion.beta_schedule": "cosine", "sampler.steps": 20})
    cfg.validate()                      # one-line ValueError on a bad combination
    ModelConfig.from_json(cfg.to_json()) == cfg

Presets: ``paper`` is the published reference protocol (64², 128 base channels, T = 1000 linear
betas, ε-prediction, DDPM-1000 sampling, ensemble 3); ``tiny`` trains on a CPU in minutes and is
what the tests use; ``small`` is the bigger CPU preset. Every recipe knob is a field so Ray Tune and
the CLI can search or override it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from sas_model.presets import PRESETS

BETA_SCHEDULES = ("linear", "cosine", "sigmoid", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "x0", "v")
MODES = ("diffusion", "deterministic")
TIMESTEP_SAMPLING = ("uniform", "high_noise")
SAMPLERS = ("ddpm", "ddim", "dpmpp2m")
CONSENSUS = ("medoid", "vote")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Dotted names kept for callers written against earlier wording: alias -> field.
_ALIASES = {"train.steps": "train.max_steps"}

# Run settings that ``TrainConfig`` once held; their one home is now the run
# (``pipelines.training.config.RunConfig``), set by these flags. Configs written before (checkpoints'
# ``config.json``, the shipped model, saved presets) still carry them: ``from_dict`` / ``load`` drop
# them, so those configs load unchanged; ``replace`` (``--set``) refuses them, naming the flag.
RETIRED_RUN_KEYS = {
    "train.val_every": "--val-every",
    "train.ckpt_every": "--ckpt-every",
    "train.seed": "--seed",
}


@dataclass
class UNetConfig:
    """Backbone shape. ``attention_resolutions`` are feature-map sizes in pixels (16 means 16×16)."""

    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = ()
    mid_attention: bool = True
    num_head_channels: int = 32
    dropout: float = 0.0
    scale_shift_norm: bool = True  # guided-diffusion's timestep scale/shift; False = improved-diffusion's add
    norm_groups: int = 32
    stem_stride: int = (
        1  # 2: strided stem, the UNet runs at half resolution; upsample + full-res skip at the end
    )
    self_condition: bool = False


@dataclass
class CueConfig:
    """The occlusion-cue module (``sas_model/occlusion.py``): border ownership, then per-object pooling.

    Off by default (checkpoints written before it existed load unchanged); on in the CPU presets.
    """

    enabled: bool = False
    width: int = 32  # channels of the full-resolution CNN
    depth: int = 4  # residual 3x3 conv blocks (half resolution)
    fine_depth: int = 0  # 3x3 convs at full resolution before the half-resolution blocks
    dilations: tuple[int, ...] = (1, 2, 4, 1)  # cycled over the blocks
    similarity_radius: int = 2  # self-similarity window (2r+1)^2 at each dilation
    similarity_dilations: tuple[int, ...] = (1, 2, 4)
    learned_similarity: int = 0  # learned appearance channels compared in a second stack (0: RGB only)
    embed_dim: int = 16  # instance embedding (half resolution) used as attention keys/queries
    attention_scale: float = 10.0  # initial inverse temperature of the pooling attention
    pool: bool = True  # False: local ownership/boundary only (no region map)
    query_stride: int = 2  # resolution of the pooled region map: 2 (half) or 4 (quarter, cheaper)
    weight: float = 1.0  # weight of the cue losses in the training loss
    junction_weight: float = 4.0  # extra weight of the ownership loss within 2 px of a T-junction


def _order_unet() -> UNetConfig:
    return UNetConfig(stem_stride=2)


@dataclass
class OrderConfig:
    """The order head (``sas_model/order.py``): one pass from the image to the visible-layer map ``V``,
    from which the segmenter takes every ``C_k = {V < k}``, layer 0 and the layer count; the diffusion
    model then only completes the hidden part of each layer. Off by default (checkpoints written
    before it existed load unchanged); on in the CPU presets."""

    enabled: bool = False
    max_layers: int = 6  # logits per pixel: "object here", then "deeper than layer j-1" for j = 1..K-1
    use_cues: bool = True  # the occlusion-cue module (its settings: cues.*) feeds the head
    unet: UNetConfig = field(default_factory=_order_unet)
    weight: float = 1.0  # of the order loss in the total
    object_weight: float = 1.0  # of the per-object term (mean logit over each visible object)


@dataclass
class DiffusionConfig:
    """Noise process and training objective."""

    mode: str = "diffusion"  # "deterministic": same backbone, one forward, x_t zeroed and t fixed
    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    zero_terminal_snr: bool = False
    prediction_type: str = "epsilon"
    mask_scale: float = 1.0  # the clean layer mask lives in {-s, +s}
    mse_weight: float = 1.0  # MSE on the prediction target
    bce_weight: float = 0.0  # BCE on the predicted clean mask
    dice_weight: float = 0.0  # soft Dice on the predicted clean mask
    min_snr_gamma: float | None = None  # Hang et al. 2023; None = unweighted
    timestep_sampling: str = "uniform"
    timestep_bias: float = 1.0  # high_noise: t = floor(T * u ** (1 / (1 + bias))), density ∝ t^bias
    use_cumulative_mask: bool = True  # ablation: False zeroes the C_k input channel
    self_cond_prob: float = 0.5  # used only when unet.self_condition
    # Auxiliary foreground head: weight of BCE + Dice on a second output channel that predicts every
    # object of the scene (C_L, the union of all amodal masks) whatever layer is asked for. 0 = off.
    # Extra dense supervision of "where are the objects"; it speeds up learning the layer task (see
    # the model issue's note). The samplers and the segmenter use the first channel only.
    foreground_weight: float = 0.0


@dataclass
class SamplerConfig:
    """Inference: sampler, ensemble and the sequential segmenter's rules."""

    name: str = "ddim"
    steps: int = 10
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like)
    ensemble_size: int = 3
    threshold: float = 0.5  # on the foreground probability (x0 / s + 1) / 2
    min_foreground: float = 0.0025  # samples with a smaller foreground fraction are dropped
    consensus: str = "medoid"
    max_layers: int = 6
    merge_disconnected: bool = True  # reference rule: a part not touching layer k-1 belongs to layer k-1
    min_object_area: int = 4  # connected components smaller than this (pixels) are not objects
    # order-map models: a region of one layer in the visible-layer map smaller than this (pixels) takes
    # the layer around it (the background if none): speckle is not an object, nor a layer of its own
    min_region_area: int = 16
    # Autocast dtype of the UNet passes while sampling, resolved as train.precision is ("auto": bf16 on
    # GPUs and on CPUs with native bf16, else fp32; see sas_model/precision.py). The sampler's own
    # arithmetic stays fp32. On this project's 2-core box bf16 segments 2.2x faster with the same IoU
    # (docs/RESULTS.md, "Round 3").
    precision: str = "auto"


@dataclass
class TrainConfig:
    """Optimisation; read by ``pipelines/train.py``. How often to validate and checkpoint and the data
    seed are the run's (``RETIRED_RUN_KEYS``)."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    batch_size: int = 32  # global, over all workers
    warmup_steps: int = 100
    max_steps: int = 2000
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cmask_noise_p: float = 0.0  # probability of perturbing the cumulative-mask input (robustness)
    hflip: bool = True
    # Autocast dtype for the training forward pass: "auto" = bf16 on a GPU that has it (else fp16) and
    # on a CPU with native bf16 instructions (AVX512-BF16/AMX; 1.46x the samples/s of fp32 for tiny
    # on this project's 2-core box, docs/RESULTS.md), else fp32. See sas_model/precision.py.
    precision: str = "auto"

    @property
    def steps(self) -> int:
        """Alias of ``max_steps``."""
        return self.max_steps

    @property
    def hflip_p(self) -> float:
        """Horizontal-flip probability implied by ``hflip``."""
        return 0.5 if self.hflip else 0.0


@dataclass
class ModelConfig:
    """The whole model: image size, backbone, diffusion, sampler and training recipe."""

    name: str = "custom"
    image_size: int = 64
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cues: CueConfig = field(default_factory=CueConfig)
    order: OrderConfig = field(default_factory=OrderConfig)

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """``tiny`` | ``small`` | ``paper`` (``sas_model/presets.py``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict(PRESETS[name])

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``, missing keys take defaults, and
        the retired run settings (``RETIRED_RUN_KEYS``) of older configs are dropped."""
        return _build(cls, _without_retired_keys(data), "")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_json(Path(path).read_text())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    # ---- overrides -----------------------------------------------------------------------
    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with dotted overrides, e.g. ``replace(**{"diffusion.beta_schedule": "cosine"})``.

        Values are coerced to the field's type (so CLI strings like ``"0.5"`` or ``"1,2,2"`` work).
        """
        data = self.to_dict()
        for dotted, value in overrides.items():
            dotted = _ALIASES.get(dotted, dotted)
            if dotted in RETIRED_RUN_KEYS:
                raise ValueError(
                    f"config key {dotted!r} is a run setting now, not a model one: "
                    f"use the run flag {RETIRED_RUN_KEYS[dotted]}"
                )
            parts = dotted.split(".")
            node: Any = data
            for part in parts[:-1]:
                if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                    raise ValueError(f"unknown config key {dotted!r}")
                node = node[part]
            if parts[-1] not in node or isinstance(node[parts[-1]], dict):
                raise ValueError(f"unknown config key {dotted!r}")
            node[parts[-1]] = value
        return ModelConfig.from_dict(data)

    # ---- checks --------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Image sides must be divisible by this (stem stride × 2 per extra UNet level, of the order
        head's UNet too when it is on)."""
        factor = self.unet.stem_stride * 2 ** (len(self.unet.channel_mults) - 1)
        if self.order.enabled:
            o = self.order.unet
            factor = max(factor, o.stem_stride * 2 ** (len(o.channel_mults) - 1))
        return factor

    def validate(self) -> ModelConfig:
        """Raise a one-line ``ValueError`` for an inconsistent config; returns ``self``."""
        self._check_choices()
        self._check_noise_schedule()
        self._check_unet_shape()
        self._check_ranges()
        self._check_loss_weights()
        self._check_order()
        self._check_cues()
        return self

    def _check_choices(self) -> None:
        d, s = self.diffusion, self.sampler
        _choice("diffusion.mode", d.mode, MODES)
        _choice("diffusion.beta_schedule", d.beta_schedule, BETA_SCHEDULES)
        _choice("diffusion.prediction_type", d.prediction_type, PREDICTION_TYPES)
        _choice("diffusion.timestep_sampling", d.timestep_sampling, TIMESTEP_SAMPLING)
        _choice("sampler.name", s.name, SAMPLERS)
        _choice("sampler.consensus", s.consensus, CONSENSUS)
        _choice("train.precision", self.train.precision, PRECISIONS)
        _choice("sampler.precision", s.precision, PRECISIONS)

    def _check_noise_schedule(self) -> None:
        d, s = self.diffusion, self.sampler
        if d.zero_terminal_snr and d.prediction_type == "epsilon" and d.mode == "diffusion":
            raise ValueError("zero_terminal_snr needs prediction_type 'v' or 'x0' (ε is undefined at SNR 0)")
        if d.num_timesteps < 2:
            raise ValueError(f"diffusion.num_timesteps must be >= 2, got {d.num_timesteps}")
        if not 1 <= s.steps <= d.num_timesteps:
            raise ValueError(f"sampler.steps must be in 1..{d.num_timesteps} (num_timesteps), got {s.steps}")

    def _check_unet_shape(self) -> None:
        u = self.unet
        if u.stem_stride not in (1, 2):
            raise ValueError(f"unet.stem_stride must be 1 or 2, got {u.stem_stride}")
        if not u.channel_mults or min(u.channel_mults) < 1 or u.base_channels < 1 or u.num_res_blocks < 1:
            raise ValueError("unet.channel_mults, base_channels and num_res_blocks must be positive")
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the UNet's factor {self.downsample_factor}"
            )
        resolutions = {self.image_size // u.stem_stride // 2**i for i in range(len(u.channel_mults))}
        bad = sorted(set(u.attention_resolutions) - resolutions)
        if bad:
            raise ValueError(
                f"unet.attention_resolutions {bad} are not UNet feature sizes {sorted(resolutions)}"
            )

    def _check_ranges(self) -> None:
        u, d, s, t = self.unet, self.diffusion, self.sampler, self.train
        positive = {
            "diffusion.mask_scale": d.mask_scale,
            "sampler.ensemble_size": s.ensemble_size,
            "sampler.max_layers": s.max_layers,
            "train.lr": t.lr,
            "train.batch_size": t.batch_size,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"{key} must be positive, got {value}")
        for key, value in {
            "diffusion.self_cond_prob": d.self_cond_prob,
            "sampler.threshold": s.threshold,
            "sampler.min_foreground": s.min_foreground,
            "unet.dropout": u.dropout,
            "train.cmask_noise_p": t.cmask_noise_p,
            "sampler.eta": s.eta,
        }.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value}")

    def _check_loss_weights(self) -> None:
        d = self.diffusion
        if (
            min(d.mse_weight, d.bce_weight, d.dice_weight) < 0
            or d.mse_weight + d.bce_weight + d.dice_weight == 0
        ):
            raise ValueError("diffusion loss weights must be >= 0 and not all zero")
        if d.min_snr_gamma is not None and d.min_snr_gamma <= 0:
            raise ValueError(f"diffusion.min_snr_gamma must be positive or null, got {d.min_snr_gamma}")
        if d.foreground_weight < 0:
            raise ValueError(f"diffusion.foreground_weight must be >= 0, got {d.foreground_weight}")
        if d.timestep_bias < 0:
            raise ValueError(f"diffusion.timestep_bias must be >= 0, got {d.timestep_bias}")

    def _check_order(self) -> None:
        o = self.order
        if not o.enabled:
            return
        if not 2 <= o.max_layers <= 16:
            raise ValueError(f"order.max_layers must be in 2..16, got {o.max_layers}")
        if o.unet.stem_stride not in (1, 2) or not o.unet.channel_mults or min(o.unet.channel_mults) < 1:
            raise ValueError("order.unet needs stem_stride 1 or 2 and positive channel_mults")
        factor = o.unet.stem_stride * 2 ** (len(o.unet.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by order.unet's factor {factor}")
        if min(o.weight, o.object_weight) < 0:
            raise ValueError("order.weight and order.object_weight must be >= 0")

    def _check_cues(self) -> None:
        c, o = self.cues, self.order
        if not (c.enabled or (o.enabled and o.use_cues)):
            return
        if c.query_stride not in (2, 4):
            raise ValueError(f"cues.query_stride must be 2 or 4, got {c.query_stride}")
        if min(c.width, c.depth, c.embed_dim, len(c.dilations), len(c.similarity_dilations)) < 1:
            raise ValueError("cues.width, depth, embed_dim and the dilation lists must be positive")
        if self.image_size % (2 * c.query_stride):
            raise ValueError(f"image_size {self.image_size} must be divisible by {2 * c.query_stride} (cues)")


def _without_retired_keys(data: Any) -> Any:
    """``data`` without ``RETIRED_RUN_KEYS`` (a shallow copy when it had any): configs written while
    ``TrainConfig`` held the run's validation/checkpoint cadence and seed load as if they never had."""
    train = data.get("train") if isinstance(data, dict) else None
    if not isinstance(train, dict):
        return data
    retired = {key.partition(".")[2] for key in RETIRED_RUN_KEYS}
    if not retired & set(train):
        return data
    return {**data, "train": {k: v for k, v in train.items() if k not in retired}}


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(options)}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Coerce a JSON/CLI value to the dataclass field type ``hint``."""
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ValueError(f"config key {key!r} cannot be null")
    if "tuple" in text:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        return tuple(int(v) for v in value)
    if hint is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config key {key!r} needs a boolean, got {value!r}")
            return value.lower() in ("true", "1")
        return bool(value)
    if hint is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"config key {key!r} needs an integer, got {value}")
        return int(value)
    if hint is float or "float" in text:
        return float(value)
    if hint is str:
        return str(value)
    return value


def _build(cls: Any, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or 'root'!r} must be an object")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)
