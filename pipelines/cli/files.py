"""Files the commands write: atomically (a temporary sibling, then a rename, so readers never see half
a file), to local paths or ``scheme://`` URIs, and figures as PNG bytes."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (parents created) via ``<dir>/.<name>.<random>`` + ``os.replace``.

    The file gets the mode a plain ``open()`` would give (0666 less the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def replace_dir_atomic(staging: str | Path, target: str | Path) -> Path:
    """Move the finished directory ``staging`` to ``target`` (an old ``target`` is replaced).

    The new folder appears in one rename; an old one is first renamed aside and then deleted, so a
    reader sees either the old or the new complete folder.
    """
    staging, target = Path(staging), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def resolve_local_or_remote(path: str) -> str:
    """Absolute local path (``~`` and relative resolved) or an unchanged ``scheme://`` URI."""
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (tight layout); the figure is closed."""
    import matplotlib.pyplot as plt  # only when plotting

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
