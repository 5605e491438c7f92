"""Scene families: named RenderConfigs that render deterministically and differ as specified."""

import dataclasses

import numpy as np
import pytest

from synth.families import FAMILIES, family_config, family_of
from synth.layering import occlusion_maps
from synth.render import RenderConfig, render_scenes
from synth.shards import JobConfig, normalised_config, same_config


def test_textured_is_todays_default_generator():
    # textured == RenderConfig() field for field, so it renders exactly what the generator rendered
    # before families existed (checked byte for byte against the old renderer when this landed).
    assert family_config("textured") == RenderConfig()
    assert family_of(RenderConfig()) == "textured"
    a = render_scenes(3, 0, 6, RenderConfig(size=32))
    b = render_scenes(3, 0, 6, family_config("textured", size=32))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_families_render_deterministically(name):
    cfg = family_config(name, size=32)
    a, b = render_scenes(5, 10, 8, cfg), render_scenes(5, 10, 8, cfg)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.amodal_masks, y.amodal_masks)
        assert cfg.min_objects <= x.num_objects <= cfg.max_objects
    assert family_of(cfg) == name


def test_flat_families_have_flat_fills_and_smooth_backgrounds():
    scenes = render_scenes(0, 0, 24, family_config("flat2", size=64))
    assert all(s.num_objects == 2 for s in scenes)
    spread = []
    for s in scenes:
        for vis in s.visible_masks:
            # the interior (2 px away from any border) of a flat-filled object is one colour (an
            # outline of another colour may run along its edge)
            inner = vis.copy()
            for axis in (0, 1):
                for shift in (-2, -1, 1, 2):
                    inner &= np.roll(vis, shift, axis=axis)
            if inner.sum() > 4:
                spread.append(s.image[inner].astype(int).std(axis=0).max())
    assert spread and np.median(spread) < 1.0
    textured = render_scenes(0, 0, 24, family_config("textured", size=64))
    inner_std = [s.image[s.visible_masks[0]].astype(int).std(axis=0).max() for s in textured]
    assert np.median(inner_std) > np.median(spread)


def test_unknown_family_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown scene family 'nosuch'; choose one of flat2, flat"):
        family_config("nosuch")


def test_old_generator_configs_resume_as_textured():
    job = JobConfig(n=10, seed=1, shard_size=5, render=RenderConfig(size=32))
    new = job.to_dict()
    assert new["family"] == "textured"
    old = {k: v for k, v in new.items() if k not in ("family", "fill_weights", "background_weights")}
    assert same_config(old, new) and normalised_config(old)["family"] == "textured"
    flat = dataclasses.replace(job, render=family_config("flat", size=32)).to_dict()
    assert flat["family"] == "flat" and not same_config(old, flat)


def test_occlusion_maps_on_two_overlapping_squares():
    amodal = np.zeros((2, 8, 8), bool)
    amodal[0, 2:5, 2:5] = True  # front
    amodal[1, 3:7, 3:7] = True  # back, partly hidden
    visible = amodal.copy()
    visible[1] &= ~amodal[0]
    maps = occlusion_maps(amodal, visible, np.array([0, 1]))
    assert maps.visible_id[2, 2] == 1 and maps.visible_id[6, 6] == 2 and maps.visible_id[0, 0] == 0
    assert maps.visible_layer[6, 6] == 1 and maps.visible_layer[0, 0] == -1
    # the back object's pixels touching the front object's visible pixels (where the back continues
    # underneath) are on the occluded side of the border; their occluder is in layer 0
    expected = np.zeros((8, 8), bool)
    expected[5, 3:5] = True
    expected[3:5, 5] = True
    np.testing.assert_array_equal(maps.occluder_layer >= 0, expected)
    assert (maps.occluder_layer[expected] == 0).all()
    assert maps.stacked().shape == (3, 8, 8) and maps.stacked().dtype == np.int8
