"""The occlusion-cue module: targets from occlusion maps, shapes, and the model's loss with cues."""

import numpy as np
import pytest
import torch

from sas_model.config import CueConfig, ModelConfig
from sas_model.metrics import object_layers, pair_order, trivial_layer_ious
from sas_model.model import SASModel
from sas_model.occlusion import OcclusionCues, cue_loss, cue_targets, self_similarity
from synth.layering import occlusion_maps
from synth.reader import collate_samples, scene_to_samples
from synth.schema import scene_from_masks


def _three_layer_scene():
    amodal = np.zeros((3, 16, 16), bool)
    amodal[0, 2:8, 2:8] = True  # layer 0
    amodal[1, 5:12, 5:12] = True  # layer 1 (under 0)
    amodal[2, 9:15, 9:15] = True  # layer 2 (under 1)
    image = np.zeros((16, 16, 3), np.uint8)
    return scene_from_masks(0, "train", image, amodal, np.arange(3))


def test_cue_targets_follow_the_layer_step():
    scene = _three_layer_scene()
    assert scene.object_layer.tolist() == [0, 1, 2]
    maps = torch.from_numpy(
        occlusion_maps(scene.amodal_masks, scene.visible_masks, scene.object_layer).stacked()
    )
    maps = maps[None].repeat(3, 1, 1, 1)
    t = cue_targets(maps, torch.tensor([0, 1, 2]))
    vid = maps[0, 0].numpy()
    # k = 0: objects 1 and 2 are still hidden by something outside C_0 = {}; object 0 is free
    assert t.region[0][vid == 2].all() and t.region[0][vid == 3].all() and not t.region[0][vid == 1].any()
    # k = 1: object 0 is in C_1, so object 1 is free now; object 2 is still hidden by object 1
    assert not t.region[1][vid == 2].any() and t.region[1][vid == 3].all()
    assert not t.active[1][vid == 1].any() and t.active[1][vid == 2].all()
    # ownership: the border of object 1 against object 0 counts at k = 0 only
    border_10 = (vid == 2) & (maps[0, 2].numpy() == 0)
    assert border_10.any() and t.ownership[0][torch.from_numpy(border_10)].all()
    assert not t.ownership[1][torch.from_numpy(border_10)].any()
    assert (t.known == 1).all()
    unknown = torch.full_like(maps, -1)
    assert cue_targets(unknown, torch.tensor([0, 0, 0])).known.sum() == 0


def test_self_similarity_is_colour_invariant():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, (1, 12, 12))
    palette_a = torch.tensor([[-1.0, -1.0, -1.0], [1.0, -1.0, 0.0], [0.0, 1.0, 1.0]])
    palette_b = palette_a[[2, 0, 1]]  # same regions, colours swapped around
    a = palette_a[torch.from_numpy(ids)].permute(0, 3, 1, 2)
    b = palette_b[torch.from_numpy(ids)].permute(0, 3, 1, 2)
    sa = self_similarity(a, 1, (1, 2), 50.0)
    sb = self_similarity(b, 1, (1, 2), 50.0)
    assert sa.shape == (1, 16, 12, 12)
    # "which neighbours look like me" does not depend on the colours (off-frame counts as different)
    assert torch.equal(sa > 0, sb > 0)
    assert (sa[sa > 0] == 1).all() and (sa[sa <= 0] < -0.9).all()


def test_cue_module_shapes_and_loss_are_finite():
    torch.manual_seed(0)
    cues = OcclusionCues(CueConfig(enabled=True, width=16, depth=2))
    scene = _three_layer_scene()
    batch = collate_samples(scene_to_samples(scene))
    x = torch.randn(len(batch["image"]), 4, 16, 16)
    out = cues(x)
    assert out.ownership.shape == out.region.shape == (4, 1, 16, 16) and out.channels().shape == (
        4,
        3,
        16,
        16,
    )
    terms = cue_loss(
        out, cue_targets(torch.from_numpy(batch["occlusion"]), torch.from_numpy(batch["layer_index"]))
    )
    assert set(terms) == {"ownership", "boundary", "region", "embedding"}
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total)


def test_model_with_cues_needs_the_maps_and_trains():
    cfg = ModelConfig.preset("tiny-sequential").replace(
        **{"image_size": 32, "cues.enabled": True, "cues.width": 16, "cues.depth": 2}
    )
    model = SASModel(cfg)
    scene = _three_layer_scene()
    image = np.zeros((32, 32, 3), np.uint8)
    big = scene_from_masks(
        0, "train", image, np.kron(scene.amodal_masks, np.ones((1, 2, 2), bool)), np.arange(3)
    )
    batch = {k: torch.from_numpy(v) for k, v in collate_samples(scene_to_samples(big)).items()}
    loss, logs = model(**batch)
    loss.backward()
    assert torch.isfinite(loss) and "cue/ownership" in logs and logs["loss"] >= logs["cues"] * 0
    with pytest.raises(ValueError, match="pass occlusion="):
        model(batch["image"], batch["cumulative_mask"], batch["layer_mask"], batch["foreground"])
    cond = model.condition(batch["image"], batch["cumulative_mask"])
    assert cond.shape[1] == 7


def test_trivial_baseline_and_pair_order_on_a_constructed_scene():
    scene = _three_layer_scene()
    truth = scene.layer_masks
    everything = truth.any(0)
    assert trivial_layer_ious(truth)[0] == pytest.approx(truth[0].sum() / everything.sum())
    # the right layers: every pair in order; everything in one layer: no pair in order
    assert pair_order(truth, scene.visible_masks, scene.occlusion_edges) == (2, 2)
    assert pair_order(everything[None], scene.visible_masks, scene.occlusion_edges) == (0, 2)
    swapped = truth[[1, 0, 2]]
    assert object_layers(swapped, scene.visible_masks).tolist() == [1, 0, 2]
    assert pair_order(swapped, scene.visible_masks, scene.occlusion_edges) == (1, 2)
