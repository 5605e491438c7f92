"""pipelines/train.py refuses bad input with one line on stderr and exit status 2, before starting Ray."""

from __future__ import annotations

import json
import shutil

import pytest
from train_support import make_dataset

from pipelines.train import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "scenes", n=24, shard_size=12)


def _run_expecting_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_missing_dataset_is_one_line_error(tmp_path, capsys):
    err = _run_expecting_error(capsys, ["--data", str(tmp_path / "nowhere"), "--storage", str(tmp_path)])
    assert "manifest.json" in err


def test_empty_dataset_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.json").write_text(json.dumps({"schema_version": 1, "num_scenes": 0}))
    err = _run_expecting_error(capsys, ["--data", str(tmp_path / "empty"), "--storage", str(tmp_path)])
    assert "empty" in err


def test_unknown_schema_version_is_one_line_error(dataset, tmp_path, capsys):
    copy = shutil.copytree(dataset, tmp_path / "v99")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    err = _run_expecting_error(capsys, ["--data", str(copy), "--storage", str(tmp_path)])
    assert "schema version" in err and "99" in err


def test_corrupt_shard_error_names_the_file(dataset, tmp_path, capsys):
    copy = shutil.copytree(dataset, tmp_path / "corrupt")
    shard = copy / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    err = _run_expecting_error(capsys, ["--data", str(copy), "--storage", str(tmp_path)])
    assert "shard-00001.parquet" in err


def test_bad_config_override_is_one_line_error(dataset, tmp_path, capsys):
    err = _run_expecting_error(
        capsys, ["--data", str(dataset), "--storage", str(tmp_path), "--set", "unet.no_such_field=3"]
    )
    assert "no_such_field" in err


def test_batch_not_divisible_by_workers_is_one_line_error(dataset, tmp_path, capsys):
    err = _run_expecting_error(
        capsys, ["--data", str(dataset), "--storage", str(tmp_path), "--workers", "3", "--batch", "32"]
    )
    assert "divisible" in err


def test_incompatible_resume_is_refused_before_touching_the_run(dataset, tmp_path, capsys):
    from pipelines.training import resume
    from sas_model.config import ModelConfig

    run_dir = tmp_path / "runs" / "sas-tiny"
    resume.save_run_config(str(run_dir), ModelConfig.preset("tiny"))
    (run_dir / "checkpoint_2026-01-01_00-00-00.000000").mkdir()
    before = sorted(p.name for p in run_dir.iterdir())
    err = _run_expecting_error(
        capsys,
        [
            "--data",
            str(dataset),
            "--storage",
            str(tmp_path / "runs"),
            "--set",
            "unet.base_channels=16",
        ],
    )
    assert "cannot resume" in err and "unet.base_channels" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before
    # schedule changes are compatible; a checkpoint folder Ray Train never reported is no run to resume
    assert (
        resume.check_compatible(str(run_dir), ModelConfig.preset("tiny").replace(**{"train.lr": 1e-4}))
        is None
    )
