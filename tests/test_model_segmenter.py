"""Sequential segmenter with a scripted fake denoiser: stop rules, consensus, merge rule, instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sas_model.config import ModelConfig
from sas_model.model import mask_to_unit, normalise_image
from sas_model.schedules import NoiseSchedule
from sas_model.segmenter import SequentialSegmenter

SIZE = 32


def box(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y1, x0:x1] = True
    return mask


class ScriptedModel:
    """Stands in for ``SASModel``: ``predict_x0`` answers from a script instead of a network.

    ``scenes[image_id]`` lists the true layer masks; the answer for a batch row is the first layer
    not yet covered by the row's cumulative mask (empty when all are), unless ``members`` scripts
    ``(image_id, layer, member) -> mask``. The image id is the image's pixel value; rows are
    image-major, member-minor. ``noise_block`` adds a 4×4 block at the corner to a non-empty answer
    whenever the row's x_t is positive there, so the output depends on each image's noise.
    """

    def __init__(
        self,
        scenes: dict[int, list[np.ndarray]],
        members: dict | None = None,
        noise_block: bool = False,
        **sampler: object,
    ) -> None:
        overrides = {"image_size": SIZE, "unet.stem_stride": 1, "sampler.steps": 3}
        overrides.update({f"sampler.{k}": v for k, v in sampler.items()})
        self.cfg = ModelConfig.preset("tiny").replace(**overrides)
        self.schedule = NoiseSchedule(self.cfg.diffusion)
        self.scenes, self.members, self.noise_block = scenes, members or {}, noise_block
        self.batch_sizes: list[int] = []

    def condition(self, image: torch.Tensor, cumulative_mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([normalise_image(image), mask_to_unit(cumulative_mask)], dim=1)

    def predict_x0(
        self, cond: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, self_cond=None
    ) -> torch.Tensor:
        self.batch_sizes.append(cond.shape[0])
        ensemble = self.cfg.sampler.ensemble_size
        out = []
        for row in range(cond.shape[0]):
            image_id = round((cond[row, 0, 0, 0].item() + 1) * 127.5)
            covered = cond[row, 3].numpy() > 0
            layers = self.scenes[image_id]
            k = next((i for i, m in enumerate(layers) if not (m <= covered).all()), len(layers))
            mask = layers[k] if k < len(layers) else np.zeros((SIZE, SIZE), bool)
            mask = self.members.get((image_id, k, row % ensemble), mask).copy()
            if self.noise_block and mask.any() and x_t[row, 0, 0, 0] > 0:
                mask[:4, :4] = True
            out.append(np.where(mask, 1.0, -1.0))
        return torch.as_tensor(np.stack(out)[:, None], dtype=torch.float32)


def images(*ids: int) -> np.ndarray:
    return np.stack([np.full((SIZE, SIZE, 3), i, np.uint8) for i in ids])


THREE_LAYERS = [box(2, 2, 12, 12), box(8, 8, 20, 20), box(16, 16, 28, 28)]


def test_perfect_denoiser_gives_the_true_layers_then_stops_when_no_sample_survives() -> None:
    model = ScriptedModel({1: THREE_LAYERS})
    (result,) = SequentialSegmenter(model).segment(images(1), seed=0)
    assert np.array_equal(result.layer_masks, np.stack(THREE_LAYERS))
    assert result.stop_reason == "no_sample"
    assert result.unet_passes == 4 * 3 * 3  # 3 layers + the stopping call, 3 steps, 3 members
    assert result.uncertainty.shape == (3, SIZE, SIZE) and result.uncertainty.max() == 0


def test_max_layers_stops_a_scene_with_more_layers() -> None:
    layers = [box(i, i, i + 6, i + 6) for i in range(0, 24, 3)]  # 8 overlapping layers
    (result,) = SequentialSegmenter(ScriptedModel({1: layers})).segment(images(1), seed=0, max_layers=6)
    assert result.num_layers == 6 and result.stop_reason == "max_layers"
    assert result.unet_passes == 6 * 3 * 3


def test_near_empty_samples_are_dropped_and_lower_the_score() -> None:
    speck = box(0, 0, 1, 2)  # 2 px < 0.25 % of 32×32 (2.56 px)
    model = ScriptedModel({1: THREE_LAYERS[:1]}, members={(1, 0, 0): speck})
    segmenter = SequentialSegmenter(model)
    (result,) = segmenter.segment(images(1), seed=0)
    assert np.array_equal(result.layer_masks[0], THREE_LAYERS[0])
    assert result.objects[0].score == pytest.approx(2 / 3)
    prediction = segmenter.predict_layer(images(1), np.zeros((1, SIZE, SIZE), bool), seed=0)
    assert prediction.kept.tolist() == [[False, True, True]]
    assert np.array_equal(prediction.layer_mask[0], THREE_LAYERS[0])


def test_consensus_empty_stops_the_scene() -> None:
    disjoint = {(1, 1, m): box(20, 4 + 9 * m, 28, 10 + 9 * m) for m in range(3)}  # no pixel has a majority
    model = ScriptedModel({1: THREE_LAYERS[:2]}, members=disjoint, consensus="vote")
    (result,) = SequentialSegmenter(model).segment(images(1), seed=0)
    assert result.num_layers == 1 and result.stop_reason == "empty"


def test_medoid_picks_a_member_while_vote_takes_the_pixel_majority() -> None:
    core = box(4, 4, 16, 16)
    extras = [box(20, 0, 30, 10), box(20, 12, 24, 16), box(20, 20, 30, 30)]  # the 2nd is the smallest
    members = {(1, 0, m): core | extra for m, extra in enumerate(extras)}
    scene = {1: [core]}
    medoid = SequentialSegmenter(ScriptedModel(scene, members=members, consensus="medoid", max_layers=1))
    vote = SequentialSegmenter(ScriptedModel(scene, members=members, consensus="vote", max_layers=1))
    assert np.array_equal(medoid.segment(images(1), seed=0)[0].layer_masks[0], core | extras[1])
    (voted,) = vote.segment(images(1), seed=0)
    assert np.array_equal(voted.layer_masks[0], core)
    assert np.allclose(voted.uncertainty[0][extras[0]], 2 / 9) and voted.uncertainty[0][core].max() == 0


@pytest.mark.parametrize("merge", [True, False])
def test_merge_rule_moves_parts_that_do_not_touch_the_previous_layer(merge: bool) -> None:
    front, behind, elsewhere = box(2, 2, 12, 12), box(8, 8, 16, 16), box(24, 24, 30, 30)
    model = ScriptedModel({1: [front, behind | elsewhere]}, merge_disconnected=merge)
    (result,) = SequentialSegmenter(model).segment(images(1), seed=0)
    if merge:
        assert np.array_equal(result.layer_masks, np.stack([front | elsewhere, behind]))
        assert [o.layer for o in result.objects] == [0, 0, 1]
    else:
        assert np.array_equal(result.layer_masks, np.stack([front, behind | elsewhere]))


def test_a_layer_that_lies_entirely_apart_is_merged_and_sampling_goes_on() -> None:
    front, apart = box(2, 2, 8, 8), box(20, 20, 26, 26)
    (result,) = SequentialSegmenter(ScriptedModel({1: [front, apart]})).segment(images(1), seed=0)
    assert result.num_layers == 1 and np.array_equal(result.layer_masks[0], front | apart)
    assert result.unet_passes == 3 * 3 * 3  # front, apart (merged), then the stopping call


def test_layers_split_into_objects_with_visible_masks_and_occlusion_edges() -> None:
    a, b = box(2, 2, 10, 10), box(2, 20, 10, 28)
    c, d = box(6, 6, 16, 14), box(6, 18, 16, 24)
    e = box(12, 8, 22, 14)
    speck = box(30, 30, 31, 32)  # 2 px: below min_object_area, part of the layer mask but no object
    model = ScriptedModel({1: [a | b | speck, c | d, e]}, merge_disconnected=False)
    (result,) = SequentialSegmenter(model).segment(images(1), seed=0)
    objects = result.objects
    assert [(o.layer, o.area) for o in objects] == [(0, 64), (0, 64), (1, 80), (1, 60), (2, 60)]
    assert sorted(result.occlusion_edges) == [(0, 2), (1, 3), (2, 4)]
    assert np.array_equal(objects[2].visible_mask, c & ~a)
    assert np.array_equal(objects[4].visible_mask, e & ~(a | b | speck | c | d))
    assert objects[0].bbox == (2, 2, 10, 10) and objects[0].score == 1.0
    overlay = result.render_overlay(images(1)[0])
    assert overlay.shape == (SIZE, 2 * SIZE + 2, 3) and overlay.dtype == np.uint8
    panels = result.comparison_panels(images(1)[0], result.layer_masks)  # one row of every overlay sheet
    assert [p.shape for p in panels] == [(SIZE, SIZE, 3)] * 4  # a sheet tiles W-wide panels: none cut off
    assert np.array_equal(overlay[:, :SIZE], panels[2]) and np.array_equal(overlay[:, SIZE + 2 :], panels[3])
    encoded = result.to_dict()
    assert (
        encoded["num_layers"] == 3 and len(encoded["objects"]) == 5 and isinstance(encoded["layers"][0], str)
    )


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_batching_with_early_stopping_images_equals_one_image_at_a_time(sampler: str) -> None:
    scenes = {1: THREE_LAYERS[:1], 2: THREE_LAYERS, 3: THREE_LAYERS[:2]}
    kwargs = {"name": sampler, "eta": 1.0, "merge_disconnected": False}
    batched_model = ScriptedModel(scenes, noise_block=True, **kwargs)
    batched = SequentialSegmenter(batched_model).segment(images(1, 2, 3), seed=7)
    assert batched_model.batch_sizes[0] == 9 and batched_model.batch_sizes[-1] < 9  # images left the batch
    for image_id, result in zip((1, 2, 3), batched, strict=True):
        (alone,) = SequentialSegmenter(ScriptedModel(scenes, noise_block=True, **kwargs)).segment(
            images(image_id), seed=7
        )
        assert np.array_equal(alone.layer_masks, result.layer_masks)
        assert alone.unet_passes == result.unet_passes and alone.occlusion_edges == result.occlusion_edges
    # the noise matters (the corner block appears in some results, not all) and the seed reproduces it
    again = SequentialSegmenter(ScriptedModel(scenes, noise_block=True, **kwargs)).segment(
        images(1, 2, 3), seed=7
    )
    assert all(np.array_equal(x.layer_masks, y.layer_masks) for x, y in zip(batched, again, strict=True))


def test_predict_layer_is_teacher_forced_on_the_given_cumulative_masks() -> None:
    segmenter = SequentialSegmenter(ScriptedModel({1: THREE_LAYERS, 2: THREE_LAYERS}))
    cumulative = np.stack([THREE_LAYERS[0], THREE_LAYERS[0] | THREE_LAYERS[1]])
    prediction = segmenter.predict_layer(images(1, 2), cumulative, seed=0)
    assert np.array_equal(prediction.layer_mask, np.stack(THREE_LAYERS[1:]))
    assert prediction.samples.shape == (2, 3, SIZE, SIZE) and prediction.unet_passes == 9


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, SIZE, SIZE, 4), np.uint8), "3 colour channels"),
        (np.zeros((1, SIZE, SIZE, 3), np.float32), "uint8"),
        (np.zeros((1, 30, 30, 3), np.uint8), "not divisible"),
        (np.zeros((1, 64, 64, 3), np.uint8), "does not match"),
        (np.zeros((SIZE, SIZE), np.uint8), "N×H×W×3"),
    ],
)
def test_bad_images_raise_one_line_errors(bad: np.ndarray, message: str) -> None:
    segmenter = SequentialSegmenter(ScriptedModel({0: []}))
    with pytest.raises(ValueError, match=message) as info:
        segmenter.segment(bad)
    assert "\n" not in str(info.value)


def test_bad_sampler_overrides_raise_one_line_errors() -> None:
    segmenter = SequentialSegmenter(ScriptedModel({0: []}))
    with pytest.raises(ValueError, match="unknown sampler option 'stepz'"):
        segmenter.segment(images(0), stepz=3)
    with pytest.raises(ValueError, match="sampler.steps"):
        segmenter.segment(images(0), steps=5000)
    with pytest.raises(ValueError, match="does not match"):
        segmenter.predict_layer(images(0), np.zeros((2, SIZE, SIZE), bool))


def test_the_batching_check_depends_on_the_noise() -> None:
    scenes = {1: THREE_LAYERS[:1], 2: THREE_LAYERS, 3: THREE_LAYERS[:2]}
    corners = set()
    for seed in range(4):
        results = SequentialSegmenter(ScriptedModel(scenes, noise_block=True, name="ddpm")).segment(
            images(1, 2, 3), seed=seed
        )
        corners |= {bool(r.layer_masks[:, 0, 0].any()) for r in results}
    assert corners == {True, False}


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_sampler_precision_autocasts_the_unet_passes(precision: str, dtype: torch.dtype) -> None:
    from sas_model.model import SASModel

    model = SASModel(ModelConfig.preset("tiny-sequential"))
    seen: list[torch.dtype] = []
    model.unet.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    prediction = SequentialSegmenter(model).predict_layer(
        np.zeros((2, 64, 64, 3), np.uint8), np.zeros((2, 64, 64), bool), seed=0, precision=precision, steps=2
    )
    assert seen == [dtype, dtype]  # one batched pass per sampler step
    assert prediction.uncertainty.dtype == np.float32  # the sampler's arithmetic stays fp32


def test_fp16_sampling_on_a_cpu_is_a_one_line_error() -> None:
    segmenter = SequentialSegmenter(ScriptedModel({0: []}))
    with pytest.raises(ValueError, match="sampler.precision fp16 needs a CUDA device") as info:
        segmenter.segment(images(0), precision="fp16")
    assert "\n" not in str(info.value)
