"""`pipelines/predict.py` end to end on local Ray: images of any size, bad files skipped, Parquet input.

The model is an untrained `tiny` checkpoint that predicts the full frame for each of its
``max_layers = 3`` layers (``eval_support.make_checkpoint(head_bias=1)``), so the outputs are known:
three full-frame layers, one object per layer, edges 0→1→2, and every mask resized back to the
input's size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_support import FAST_SAMPLER, make_checkpoint
from PIL import Image
from train_support import make_dataset

_HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    model = make_checkpoint(root / "model", head_bias=1.0)
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)).save(images / "wide.png")
    Image.fromarray(rng.integers(0, 255, (130, 70), dtype=np.uint8)).save(images / "nested" / "grey.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)).save(images / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / "wide.bmp")  # same stem
    good = (images / "wide.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 3])
    (images / "notes.txt").write_text("not an image")
    (images / ".hidden.png").write_bytes(good)
    yield {"root": root, "model": str(model), "images": images}


def _predict(env, *extra: str) -> int:
    from pipelines.predict import main

    return main(["--model", env["model"], *FAST_SAMPLER, *extra])


def test_images_of_any_size_get_masks_objects_overlays_and_json(env, local_ray, capsys):
    out = env["root"] / "out"
    assert _predict(env, "--input", str(env["images"]), "--out", str(out), "--batch", "3") == 0
    printed = capsys.readouterr().out
    assert "4 images written" in printed and "2 skipped" in printed

    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["nested__grey", "rgba", "wide_bmp", "wide_png"]  # clashing stems keep the extension
    sizes = {"nested__grey": (130, 70), "rgba": (64, 64), "wide_bmp": (32, 32), "wide_png": (50, 90)}
    for name, (height, width) in sizes.items():
        folder = out / name
        result = json.loads((folder / "result.json").read_text())
        assert (result["height"], result["width"]) == (height, width)
        assert result["resized"] == ((height, width) != (64, 64))
        assert result["num_layers"] == 3 and [o["layer"] for o in result["objects"]] == [0, 1, 2]
        assert result["occlusion_edges"] == [[0, 1], [1, 2]]
        first = result["objects"][0]
        assert first["bbox"] == [0, 0, width, height] and first["area"] == height * width
        assert first["visible_fraction"] == 1.0 and result["objects"][1]["visible_fraction"] == 0.0
        for k in range(3):
            mask = np.asarray(Image.open(folder / f"layer_{k}.png"))
            assert mask.shape == (height, width) and mask.min() == 255
        for obj in result["objects"]:
            assert np.asarray(Image.open(folder / obj["mask"])).shape == (height, width)
        assert np.asarray(Image.open(folder / "uncertainty.png")).shape == (height, width, 3)
        assert np.asarray(Image.open(folder / "overlay.png")).shape == (height, 2 * width + 2, 3)

    report = json.loads((out / "report.json").read_text())
    skipped = {Path(s["source"]).name: s["error"] for s in report["skipped"]}
    assert set(skipped) == {"truncated.png", "notes.txt"}
    assert all(e.startswith("not a readable image") and "0x" not in e for e in skipped.values())
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no staging folders left"

    # a rerun replaces the folders in place (atomic rename), leaving nothing aside
    assert _predict(env, "--input", str(env["images"] / "rgba.png"), "--out", str(out)) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert (out / "rgba" / "result.json").is_file()


def test_synth_parquet_dataset_as_input(env, local_ray):
    data = make_dataset(env["root"] / "data", n=12, shard_size=6)
    out = env["root"] / "from_parquet"
    assert _predict(env, "--input", str(data), "--out", str(out), "--limit", "3") == 0
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 3 and all(f.startswith("scene_") for f in folders)
    result = json.loads((out / folders[0] / "result.json").read_text())
    assert (result["height"], result["width"]) == (64, 64) and result["resized"] is False


def test_no_readable_image_is_one_line_error(env, local_ray, capsys, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(SystemExit) as exit_info:
        _predict(env, "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # Ray may log before it
    assert err.startswith("error: none of the 1 inputs")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "does not exist"),
        (["--input", "/no/such/input"], "--input /no/such/input does not exist"),
        (["--steps", "0"], "sampler.steps must be in 1..1000"),
        pytest.param(
            ["--precision", "fp16"],
            "sampler.precision fp16 needs a CUDA device",
            marks=pytest.mark.skipif(_HAS_CUDA, reason="fp16 sampling is valid on a GPU"),
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(env, capsys, tmp_path, args, message):
    from pipelines.predict import main

    argv = {"--model": env["model"], "--input": str(env["images"]), "--out": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        argv[flag] = value
    with pytest.raises(SystemExit) as exit_info:
        main([item for pair in argv.items() for item in pair])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
