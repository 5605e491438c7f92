"""The order head: the visible-layer identity it rests on, its targets and decoding, its loss, the model
that completes layers from it, and the segmenter's order path (with an oracle standing in for the nets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sas_model import metrics as lm
from sas_model.checkpoint import load_model, save_checkpoint
from sas_model.config import ModelConfig
from sas_model.model import SASModel, mask_to_unit, normalise_image
from sas_model.order import decode_visible_layers, order_loss, ordinal_targets
from sas_model.schedules import NoiseSchedule
from sas_model.segmenter import SequentialSegmenter
from synth.families import family_config
from synth.reader import collate_samples, scene_occlusion, scene_to_samples
from synth.render import render_scenes

SIZE = 32


def visible_layer_map(scene) -> np.ndarray:
    """int64[H,W]: the layer of the object visible at each pixel, -1 on the background."""
    v = np.full((scene.height, scene.width), -1, dtype=np.int64)
    for mask, layer in zip(scene.visible_masks, scene.object_layer, strict=True):
        v[mask] = layer
    return v


def test_the_visible_layer_map_gives_layer_zero_and_every_cumulative_mask():
    # M_0 = {V = 0} and C_k = {V < k} for every k, on scenes of every look and depth
    for family in ("flat", "textured"):
        for scene in render_scenes(5, 0, 150, family_config(family, 64, min_edge_border=0)):
            v = visible_layer_map(scene)
            np.testing.assert_array_equal(scene.layer_masks[0], v == 0)
            for k in range(scene.num_layers + 1):
                np.testing.assert_array_equal(scene.cumulative_masks[k], (v >= 0) & (v < k))
            # and each layer's visible part is M_k \\ C_k
            for k in range(scene.num_layers):
                np.testing.assert_array_equal(scene.layer_masks[k] & ~scene.cumulative_masks[k], v == k)


def test_the_occlusion_maps_carry_the_visible_layer_map():
    scene = render_scenes(1, 0, 1, family_config("flat", 64))[0]
    np.testing.assert_array_equal(scene_occlusion(scene)[1], visible_layer_map(scene))


def test_targets_decode_back_to_the_map_and_deep_layers_saturate():
    v = torch.tensor([[[-1, 0, 1, 2, 5, 9]]])
    target, applies = ordinal_targets(v, max_layers=4)
    logits = (target * 2 - 1) * 10  # confident and right wherever the question applies
    decoded, p = decode_visible_layers(logits)
    assert decoded.tolist() == [[[-1, 0, 1, 2, 3, 3]]]  # layers past K-1 read as K-1
    assert torch.allclose(p.sum(1), torch.ones(1, 1, 6))
    assert applies[0, :, 0, 0].tolist() == [1, 0, 0, 0]  # background: only "is there an object"
    assert applies[0, :, 0, 3].tolist() == [1, 1, 1, 1]  # layer 2: asked down to "deeper than 2?"


def test_order_loss_scores_objects_and_ignores_scenes_without_instances():
    scene = render_scenes(2, 0, 1, family_config("flat", SIZE))[0]
    maps = torch.from_numpy(scene_occlusion(scene))[None]
    target, _ = ordinal_targets(maps[:, 1].long(), 6)
    from sas_model.order import OrderOutput

    right = order_loss(OrderOutput((target * 2 - 1) * 8, None), maps, object_weight=1.0)
    wrong = order_loss(OrderOutput((1 - target * 2) * 8, None), maps, object_weight=1.0)
    assert right["pixels"] < 0.01 and right["objects"] < 0.01
    assert wrong["pixels"] > 5 and wrong["objects"] > 5
    unknown = torch.full_like(maps, -1)
    blind = order_loss(OrderOutput((1 - target * 2) * 8, None), unknown, object_weight=1.0)
    assert float(blind["pixels"]) == 0.0 and "objects" not in blind


def small_order_config() -> ModelConfig:
    return ModelConfig.preset("tiny").replace(
        **{"image_size": SIZE, "cues.width": 16, "cues.depth": 2, "train.precision": "fp32"}
    )


def test_the_model_trains_its_order_head_on_every_sample_and_the_unet_on_hidden_parts():
    cfg = small_order_config()
    assert cfg.order.enabled and not cfg.cues.enabled
    model = SASModel(cfg)
    scenes = render_scenes(0, 0, 12, family_config("flat", SIZE))
    samples = [s for sc in scenes for s in scene_to_samples(sc, completion=True)]
    assert all(s.layer_index >= 1 or sc.num_layers == 1 for sc in scenes for s in scene_to_samples(sc, True))
    batch = {k: torch.from_numpy(v) for k, v in collate_samples(samples).items()}
    loss, logs = model(**batch)
    assert torch.isfinite(loss) and {"order", "order/pixels", "order/objects", "order/cue/ownership"} <= set(
        logs
    )
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # a batch of layer-0 and terminal samples only: the UNet gets zero weight but stays in the graph
    only = [s for sc in scenes for s in scene_to_samples(sc) if s.layer_index in (0, sc.num_layers)]
    model.zero_grad()
    batch = {k: torch.from_numpy(v) for k, v in collate_samples(only).items()}
    loss, logs = model(**batch)
    loss.backward()
    assert logs["loss"] == pytest.approx(logs["order"], rel=1e-5)
    assert all(p.grad is not None for p in model.unet.parameters())


def test_an_order_checkpoint_round_trips_and_an_old_one_loads_without_the_head(tmp_path: Path):
    model = SASModel(small_order_config()).eval()
    save_checkpoint(tmp_path / "new", model, write_ema=False)
    assert not (tmp_path / "new" / "ema.safetensors").exists()
    back = load_model(tmp_path / "new")
    image = torch.from_numpy(np.stack([s.image for s in render_scenes(0, 0, 2, family_config("flat", SIZE))]))
    assert torch.equal(model.visible_layers(image)[0], back.visible_layers(image)[0])
    old_cfg = ModelConfig.preset("tiny").replace(**{"order.enabled": False, "cues.enabled": True})
    save_checkpoint(tmp_path / "old", SASModel(old_cfg))
    config = (tmp_path / "old" / "config.json").read_text()
    import json

    data = json.loads(config)
    del data["order"]  # written before the order head existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(data))
    assert load_model(tmp_path / "old").order is None


class OracleModel:
    """Stands in for an order model with perfect nets: ``visible_layers`` returns the scenes' true
    ``V`` and ``predict_x0`` the true hidden part of the layer whose visible part it is given."""

    def __init__(self, scenes: list) -> None:
        self.cfg = ModelConfig.preset("tiny").replace(**{"image_size": 64, "sampler.steps": 2})
        self.schedule = NoiseSchedule(self.cfg.diffusion)
        self.scenes = {s.image.tobytes(): s for s in scenes}
        self.order = object()  # the segmenter's marker of an order model

    def _scene(self, image: torch.Tensor):
        return self.scenes[image.to(torch.uint8).numpy().tobytes()]

    def visible_layers(self, images: torch.Tensor):
        v = torch.from_numpy(np.stack([visible_layer_map(self._scene(im)) for im in images]))
        p = torch.zeros(len(images), 7, *v.shape[1:])
        p.scatter_(1, (v + 1).unsqueeze(1), 1.0)
        return v, p

    def condition(self, image, cumulative_mask, visible=None):
        self.last_images = image
        return torch.cat(
            [normalise_image(image), mask_to_unit(cumulative_mask), mask_to_unit(visible)], dim=1
        )

    def predict_x0(self, cond, x_t, t, self_cond=None):
        out = []
        for image, row in zip(self.last_images, cond, strict=True):
            scene = self._scene(image)
            visible = row[4].numpy() > 0
            k = int(visible_layer_map(scene)[visible][0])
            out.append(torch.from_numpy(scene.layer_masks[k] & (row[3].numpy() > 0)).float() * 2 - 1)
        return torch.stack(out)[:, None]


def test_segmenting_from_a_perfect_order_map_and_completion_gives_the_true_layers():
    scenes = render_scenes(3, 0, 12, family_config("flat", 64))
    segmenter = SequentialSegmenter(OracleModel(scenes))
    images = np.stack([s.image for s in scenes])
    results = segmenter.segment(images, seed=0, min_region_area=1)  # no speckle clean-up: V is exact
    for scene, result in zip(scenes, results, strict=True):
        assert result.stop_reason == "order_map"
        np.testing.assert_array_equal(result.layer_masks, scene.layer_masks)
        hits = lm.edge_order_hits(result.layer_masks, scene.visible_masks, scene.occlusion_edges)
        assert hits.all()
    k = np.array([min(1, s.num_layers - 1) for s in scenes])
    given = np.stack([s.cumulative_masks[i] for s, i in zip(scenes, k, strict=True)])
    tf = segmenter.predict_layer(images, given, 0, k, min_region_area=1)
    for scene, i, mask in zip(scenes, k, tf.layer_mask, strict=True):
        np.testing.assert_array_equal(mask, scene.layer_masks[i])


def test_speckle_in_the_order_map_takes_the_layer_around_it():
    from sas_model.order import absorb_small_regions

    v = np.full((12, 12), -1)
    v[2:10, 2:10] = 0
    v[4, 4] = 2  # one pixel of another layer inside an object
    v[0, 11] = 1  # a lone speck on the background
    v[6:10, 6:10] = 1  # a real region (16 px)
    out = absorb_small_regions(v, 8)
    assert out[4, 4] == 0 and out[0, 11] == -1
    assert (out[6:10, 6:10] == 1).all() and (out[2:6, 2:6] == 0).all()
    assert np.array_equal(absorb_small_regions(v, 1), v)
