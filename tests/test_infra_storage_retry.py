"""Storage writes during training are retried with exponential backoff (``pipelines.training.retry``)."""

from __future__ import annotations

import pytest

from pipelines.training.retry import StorageWriteError, backoff_delays, redact, with_retries


class FlakyWriter:
    """A write that raises ``error`` on its first ``failures`` calls, then returns ``"written"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "written"


def test_transient_errors_are_retried_with_doubling_waits_one_line_each(capsys):
    waits: list[float] = []
    writer = FlakyWriter(2, OSError("AWS Error NETWORK_CONNECTION during PutObject: connection reset"))
    assert (
        with_retries(writer, "checkpoint upload to checkpoint_step00000004", sleep=waits.append) == "written"
    )
    assert writer.calls == 3 and waits == [1.0, 2.0]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "[train] warning: checkpoint upload to checkpoint_step00000004 failed (try 1/5: "
    )
    assert "connection reset" in lines[0] and lines[0].endswith("retry in 1 s")
    assert "try 2/5" in lines[1] and lines[1].endswith("retry in 2 s")


def test_gives_up_after_the_last_try_with_an_error_naming_the_write(capsys):
    waits: list[float] = []
    writer = FlakyWriter(99, OSError("503 Slow Down"))
    with pytest.raises(
        StorageWriteError, match=r"checkpoint upload to x failed after 3 tries \(OSError: 503"
    ) as info:
        with_retries(writer, "checkpoint upload to x", attempts=3, sleep=waits.append)
    assert writer.calls == 3 and waits == [1.0, 2.0]
    assert "rerun the same command to resume" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert len(capsys.readouterr().out.splitlines()) == 2  # a line per retry, none for the final failure


def test_errors_that_are_not_storage_errors_are_not_retried():
    writer = FlakyWriter(1, ValueError("a bug, not a blip"))
    with pytest.raises(ValueError):
        with_retries(writer, "upload", sleep=lambda _: pytest.fail("must not wait"))
    assert writer.calls == 1


def test_waits_double_up_to_the_cap():
    assert backoff_delays(1, 1.0, 30.0) == []
    assert backoff_delays(7, 1.0, 30.0) == [1, 2, 4, 8, 16, 30]


def test_retry_lines_never_show_credentials(capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    error = OSError(
        "PUT https://minio:minio123@s3.local/runs/ckpt?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=abc123"
        "&part=2 failed; secret wJalrXUtnFEMI/K7MDENG"
    )
    with_retries(FlakyWriter(1, error), "upload", sleep=lambda _: None)
    out = capsys.readouterr().out
    for secret in ("minio123", "AKIAEXAMPLE", "abc123", "wJalrXUtnFEMI/K7MDENG"):
        assert secret not in out
    assert "https://***@s3.local/runs/ckpt?X-Amz-Credential=***&X-Amz-Signature=***&part=2" in out
    assert redact("s3://bucket/runs/checkpoint_step00000004") == "s3://bucket/runs/checkpoint_step00000004"


def test_checkpoint_upload_repeats_rays_copy_after_a_transient_error(monkeypatch, capsys):
    """``upload_checkpoint`` (the ``checkpoint_upload_fn`` of every report) retries Ray's own upload,
    so a blip costs seconds instead of a worker-group restart."""
    import types

    import ray.train

    from pipelines.training import retry
    from pipelines.training.worker import upload_checkpoint

    calls = []

    def persist_current_checkpoint(checkpoint, dir_name):
        calls.append(dir_name)
        if len(calls) == 1:
            raise OSError("When uploading part for key 'runs/x/model.safetensors': AWS Error SLOW_DOWN")
        return f"persisted {dir_name}"

    storage = types.SimpleNamespace(persist_current_checkpoint=persist_current_checkpoint)
    context = types.SimpleNamespace(get_storage=lambda: storage)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(retry.time, "sleep", lambda _: None)
    assert (
        upload_checkpoint("local checkpoint", "checkpoint_step00000006")
        == "persisted checkpoint_step00000006"
    )
    assert calls == ["checkpoint_step00000006"] * 2
    assert "checkpoint upload to checkpoint_step00000006 failed (try 1/5" in capsys.readouterr().out
