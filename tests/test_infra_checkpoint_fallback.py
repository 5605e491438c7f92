"""Resume with a corrupt newest checkpoint falls back to the newest older one that loads (no Ray cluster).

The slow stack test repeats this end to end: checkpoints on S3, a Ray job, a rerun that resumes.
"""

from __future__ import annotations

import pytest


def _model_and_optimizer():
    import torch

    from pipelines.training.optim import EMA
    from sas_model.config import ModelConfig
    from sas_model.model import SASModel

    model = SASModel(ModelConfig.preset("tiny"))
    return model, EMA(model, 0.99), torch.optim.AdamW(model.parameters(), lr=1e-3)


def _checkpoint_dirs(root, steps):
    from pipelines.training.optim import TrainerState
    from pipelines.training.worker import _save

    model, ema, optimizer = _model_and_optimizer()
    paths = []
    for i, step in enumerate(steps):
        path = root / f"checkpoint_2026-01-01_00-00-0{i}.000000"  # Ray's naming: time order = name order
        path.mkdir()
        _save(str(path), model, ema, optimizer, TrainerState(step=step))
        paths.append(path)
    return paths


def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
    from ray.train import Checkpoint

    from pipelines.training.resume import checkpoint_candidates
    from pipelines.training.worker import _restore_newest_readable

    paths = _checkpoint_dirs(tmp_path, [2, 4, 6])
    (paths[-1] / "model.safetensors").write_bytes(b"truncated upload")
    newest = Checkpoint(str(paths[-1]))
    assert [c.path for c in checkpoint_candidates(newest)] == [str(p) for p in reversed(paths)]

    model, ema, optimizer = _model_and_optimizer()
    state = _restore_newest_readable(newest, model, ema, optimizer, rank=0)
    assert state.step == 4
    assert f"{paths[-1]} unreadable" in capsys.readouterr().out


def test_no_readable_checkpoint_is_an_error_naming_what_to_do(tmp_path):
    from ray.train import Checkpoint

    from pipelines.training.worker import _restore_newest_readable

    paths = _checkpoint_dirs(tmp_path, [2])
    (paths[0] / "trainer_state.pt").write_bytes(b"")
    model, ema, optimizer = _model_and_optimizer()
    with pytest.raises(RuntimeError, match="start a new run with another --name"):
        _restore_newest_readable(Checkpoint(str(paths[0])), model, ema, optimizer, rank=0)
