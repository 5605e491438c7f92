"""Scene families: named, validated ``RenderConfig``s, from the easiest picture to today's default.

A family fixes what scenes look like (object fills, backgrounds, object count); image size and
seed stay free. ``textured`` is the generator's default (byte-identical to the renderer before
families existed, for the same seed); the others make the occlusion cue easier to see, for finding
where learning starts and for users' own curricula::

    synth/generate.py --family flat --n 1e4 --out data/flat
    family_config("flat", size=64)  # -> RenderConfig

| family | fills | backgrounds | objects |
|---|---|---|---|
| ``flat2`` | flat colours | smooth (linear / corner gradients) | exactly 2 (the minimal task) |
| ``flat`` | flat colours | smooth | 2-4 |
| ``flat8`` | flat colours | smooth | 2-8 |
| ``mixed`` | flat, gradients, stripes, checks, noise | every kind but photos | 2-6 |
| ``textured`` | today's mix (30 % flat) | today's mix (35 % photos) | 2-8 |
"""

from __future__ import annotations

from dataclasses import replace

from synth.render import RenderConfig

_FLAT_FILLS = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # over textures.PATTERNS
_SMOOTH_BACKGROUNDS = (0.5, 0.5, 0.0, 0.0, 0.0, 0.0)  # over backgrounds.BACKGROUND_KINDS
_NO_PHOTOS = (0.2, 0.2, 0.2, 0.2, 0.2, 0.0)

FAMILIES: dict[str, RenderConfig] = {
    "flat2": RenderConfig(
        min_objects=2, max_objects=2, fill_weights=_FLAT_FILLS, background_weights=_SMOOTH_BACKGROUNDS
    ),
    "flat": RenderConfig(
        min_objects=2, max_objects=4, fill_weights=_FLAT_FILLS, background_weights=_SMOOTH_BACKGROUNDS
    ),
    "flat8": RenderConfig(
        min_objects=2, max_objects=8, fill_weights=_FLAT_FILLS, background_weights=_SMOOTH_BACKGROUNDS
    ),
    "mixed": RenderConfig(min_objects=2, max_objects=6, background_weights=_NO_PHOTOS),
    "textured": RenderConfig(),
}
DEFAULT_FAMILY = "textured"


def family_config(name: str, size: int = 64, **changes) -> RenderConfig:
    """The family's ``RenderConfig`` at ``size`` (other fields overridable); one-line error if unknown."""
    if name not in FAMILIES:
        raise ValueError(f"unknown scene family {name!r}; choose one of {', '.join(FAMILIES)}")
    cfg = replace(FAMILIES[name], size=size, **changes)
    cfg.validate()
    return cfg


def family_of(cfg: RenderConfig) -> str | None:
    """The family whose look ``cfg`` has (size, split fractions and the edge-border check aside), or None."""
    for name, fam in FAMILIES.items():
        same = {
            "size": cfg.size,
            "split_fractions": cfg.split_fractions,
            "min_edge_border": cfg.min_edge_border,
        }
        if replace(fam, **same) == cfg:
            return name
    return None
