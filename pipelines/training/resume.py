"""Resuming a training run: where it lives, which checkpoint it resumes from, and whether it may.

A run lives in ``<storage>/<name>/`` (Ray Train's run directory). Next to Ray's own files the driver
keeps ``sas_run.json`` with the model config the run was started with; a rerun whose model
architecture differs is refused with a one-line error before anything is touched, so saved
checkpoints are never overwritten by an incompatible model. Training-schedule fields (``train.*``,
``sampler.*``) and the config's ``name`` may change between reruns, e.g. more steps.

Which checkpoint a rerun resumes from is asked of Ray through its public ``Result.from_path``
(the same record Ray Train itself restores from), never by reading Ray's files; it works for runs
of every age, whatever their checkpoint folders are called.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipelines.cli.env import pretrained_path
from pipelines.tracking.store import flatten_dict
from sas_model.config import ModelConfig
from synth.cli import UserError
from synth.reader import open_filesystem

RUN_CONFIG_FILE = "sas_run.json"
MUTABLE_SECTIONS = ("name", "train", "sampler")


def run_dir(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}" if "://" in storage else str(Path(storage) / name)


def _filesystem(path: str) -> tuple[Any, str]:
    from pyarrow import fs

    if "://" in path:
        return open_filesystem(path)
    return fs.LocalFileSystem(), path


def read_storage_text(path: str) -> str | None:
    from pyarrow import fs

    filesystem, inner = _filesystem(path)
    if filesystem.get_file_info(inner).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_storage_text(path: str, text: str) -> None:
    filesystem, inner = _filesystem(path)
    filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(inner) as stream:
        stream.write(text.encode())


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields a checkpoint's tensors depend on (all but the training/sampling schedule)."""
    normalised = json.loads(json.dumps(config))  # tuples and lists compare equal
    return flatten_dict({k: v for k, v in normalised.items() if k not in MUTABLE_SECTIONS})


def architecture_difference(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Empty when two model configs (``to_dict`` form) build the same tensors, else the first differing
    field, ``key: old -> new`` (and how many more)."""
    old, new = architecture(before), architecture(after)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not changed:
        return ""
    first, more = changed[0], len(changed) - 1
    return f"{first}: {old.get(first)!r} -> {new.get(first)!r}" + (f" and {more} more" if more else "")


def resume_checkpoint(directory: str) -> Any | None:
    """The ``ray.train.Checkpoint`` Ray Train resumes the run in ``directory`` from (its newest
    reported one), or ``None`` when there is no run there to resume (or one without checkpoints)."""
    import ray.train

    filesystem, path = _filesystem(directory)
    ray_train_logger = logging.getLogger("ray.train")
    level = ray_train_logger.level
    ray_train_logger.setLevel(logging.WARNING)  # Ray says "a run snapshot was found" again in fit()
    try:
        return ray.train.Result.from_path(path, storage_filesystem=filesystem).checkpoint
    except RuntimeError:  # no such folder, or no Ray Train run in it
        return None
    finally:
        ray_train_logger.setLevel(level)


INIT_CHOICES = ("scratch", "pretrained")


def resolve_init(init: str) -> Path | None:
    """The checkpoint folder a new run starts from: None for ``scratch`` (or ""), the shipped model
    (``pipelines.cli.env.pretrained_path``) for ``pretrained``, else ``init`` itself (a checkpoint
    directory: ``config.json`` and weights)."""
    if init in ("", "scratch"):
        return None
    return pretrained_path() if init == "pretrained" else Path(init).expanduser()


def check_init(init: str, cfg: Any) -> Path | None:
    """:func:`resolve_init`, checked: the folder is a checkpoint and its architecture is ``cfg``'s
    (one-line ``UserError`` naming the first difference otherwise)."""
    path = resolve_init(init)
    if path is None:
        return None
    if not (path / "config.json").is_file():
        raise UserError(
            f"--init {init}: {path} is not a checkpoint folder (no config.json); pass --init scratch"
        )
    try:
        saved = ModelConfig.load(path / "config.json")
    except ValueError as exc:
        raise UserError(f"--init {init}: cannot read {path / 'config.json'} ({exc})") from None
    difference = architecture_difference(saved.to_dict(), cfg.to_dict())
    if difference:
        raise UserError(
            f"--init {init}: the checkpoint's architecture differs from this run's config ({difference}); "
            f"use its config (--preset {path / 'config.json'}) or --init scratch"
        )
    return path


def check_compatible(directory: str, cfg: Any) -> Any | None:
    """Return the checkpoint the run in ``directory`` resumes from (``None``: a new run); raise
    ``UserError`` if the saved run's model architecture differs from ``cfg``'s."""
    saved = read_storage_text(f"{directory}/{RUN_CONFIG_FILE}")
    if saved is None:
        return resume_checkpoint(directory)
    difference = architecture_difference(json.loads(saved)["model_config"], cfg.to_dict())
    if difference:
        raise UserError(
            f"cannot resume run {directory}: its model config differs ({difference}); "
            "use another --name or --storage for a new run"
        )
    return resume_checkpoint(directory)


def checkpoint_candidates(checkpoint: Any) -> list[Any]:
    """``checkpoint`` (the one Ray Train resumes from), then the older ``checkpoint_*`` folders of the
    same run, newest first, so a worker can fall back when the newest one is unreadable.

    They are named ``checkpoint_step<NNNNNNNN>`` (``train_loop.checkpoint_dir_name``); runs written
    before that have Ray's ``checkpoint_<YYYY-MM-DD_HH-MM-SS.ffffff>``, which sort before every step
    name, so in both (and mixed) runs name order is time order.
    """
    from pyarrow import fs
    from ray.train import Checkpoint

    filesystem = checkpoint.filesystem
    parent, _, current = checkpoint.path.rstrip("/").rpartition("/")
    try:
        entries = filesystem.get_file_info(fs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return [checkpoint]
    names = [e.base_name for e in entries if e.type == fs.FileType.Directory]
    older = sorted((n for n in names if n.startswith("checkpoint_") and n < current), reverse=True)
    return [checkpoint] + [Checkpoint(f"{parent}/{name}", filesystem=filesystem) for name in older]


def save_run_config(directory: str, cfg: Any) -> None:
    if read_storage_text(f"{directory}/{RUN_CONFIG_FILE}") is None:
        text = json.dumps({"model_config": cfg.to_dict()}, indent=2)
        write_storage_text(f"{directory}/{RUN_CONFIG_FILE}", text)
