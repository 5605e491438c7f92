"""Storage writes made while training runs, retried with exponential backoff.

A transient storage error (an S3 503, a dropped connection) during a checkpoint upload would
otherwise fail the worker and spend one of Ray Train's ``FailureConfig.max_failures`` restarts. The
workers' checkpoint uploads (``pipelines.training.worker.upload_checkpoint``) go through ``with_retries``:
at most ``attempts`` tries, waiting ``base_delay_s * 2**k`` seconds (capped at ``max_delay_s``) after
the k-th failure, one ``[train] warning:`` line per retry naming the write and the error
(credentials stripped by ``redact``), and a ``StorageWriteError`` naming the write and the number of
tries after the last one.

The checks before training starts (``pipelines.training.data``: is the data there, is
the storage reachable) stay fail-fast on purpose: a mistyped bucket is reported in a second, not
after a minute of retries.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import TypeVar

from pipelines.training.worker_log import say

T = TypeVar("T")

ATTEMPTS = 5  # 1 + 2 + 4 + 8 = 15 s of waiting before giving up
BASE_DELAY_S = 1.0
MAX_DELAY_S = 30.0
SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "RAY_AUTH_TOKEN",
)
_USERINFO = re.compile(r"(://)[^/@\s]+@")
_SECRET_QUERY = re.compile(
    r"([?&][\w.-]*(?:signature|credential|token|secret|password|key)[\w.-]*=)[^&\s]+", re.IGNORECASE
)


class StorageWriteError(OSError):
    """A storage write that still failed after every retry."""


def redact(text: str) -> str:
    """``text`` without credentials: URL user-info, signed-URL query values (``X-Amz-Signature=...``)
    and the values of the secret environment variables in ``SECRET_ENV_VARS``."""
    text = _USERINFO.sub(r"\1***@", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def backoff_delays(attempts: int, base_delay_s: float, max_delay_s: float) -> list[float]:
    """Seconds to wait after each failed try but the last: ``base * 2**k``, capped at ``max_delay_s``."""
    return [min(max_delay_s, base_delay_s * 2**k) for k in range(max(0, attempts - 1))]


def with_retries(
    write: Callable[[], T],
    what: str,
    attempts: int = ATTEMPTS,
    base_delay_s: float = BASE_DELAY_S,
    max_delay_s: float = MAX_DELAY_S,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Return ``write()``, calling it again after an error in ``retry_on`` (at most ``attempts`` calls).

    ``write`` must be safe to repeat (it overwrites what a failed try left). Other exceptions pass
    through at once; after the last failed try a ``StorageWriteError`` chained to the error is raised.
    ``sleep`` (default ``time.sleep``) is there for tests.
    """
    delays = backoff_delays(attempts, base_delay_s, max_delay_s)
    for attempt in range(1, len(delays) + 2):
        try:
            return write()
        except retry_on as exc:
            reason = redact(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]
            if attempt > len(delays):
                raise StorageWriteError(
                    f"{what} failed after {attempt} tries ({reason}); check the storage and rerun "
                    "the same command to resume from the last checkpoint"
                ) from exc
            delay = delays[attempt - 1]
            say(f"[train] warning: {what} failed (try {attempt}/{attempts}: {reason}); retry in {delay:g} s")
            (sleep or time.sleep)(delay)
    raise AssertionError("unreachable")
