"""synth/generate.py input checking: every bad input gets one line, exit status 2, nothing destroyed.

These fail before Ray starts, so they run ``main()`` in-process (plus one real script run).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth.cli import parse_positive_number
from synth.generate import main

REPO = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "text,value", [("1e5", 100_000), ("100000", 100_000), ("100_000", 100_000), ("2.5e3", 2500)]
)
def test_n_accepts_scientific_and_underscored_counts(text, value):
    assert parse_positive_number(text) == value


@pytest.mark.parametrize("n", ["0", "-3", "abc", "1.5", "", "1e9999", "inf"])
def test_bad_n_is_one_line_exit_2(capsys, tmp_path, n):
    code, err = run_main(capsys, "--n", n, "--out", str(tmp_path / "o"))
    assert code == 2
    assert err.startswith("error:") and "--n" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", ["50", "16", "1024", "x"])
def test_unsupported_size_says_what_is_allowed(capsys, tmp_path, size):
    code, err = run_main(capsys, "--n", "10", "--size", size, "--out", str(tmp_path / "o"))
    assert code == 2 and "\n" not in err
    if size != "x":
        assert "multiple of 16 between 32 and 512" in err


def test_non_empty_output_is_refused_and_kept(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    code, err = run_main(capsys, "--n", "10", "--out", str(tmp_path))
    assert code == 2 and "not empty" in err and "--overwrite" in err and "\n" not in err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_other_config_in_output_is_refused(capsys, tmp_path):
    manifest = {"schema_version": 1, "config": {"seed": 123}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code, err = run_main(capsys, "--n", "10", "--out", str(tmp_path))
    assert code == 2 and "another config" in err
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_unwritable_output_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_main(capsys, "--n", "10", "--out", str(blocker / "sub"))
    assert code == 2 and err.startswith("error: cannot") and "\n" not in err
    code, err = run_main(capsys, "--n", "10", "--out", str(blocker))
    assert code == 2 and "is a file" in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_s3_endpoint_fails_fast(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    started = time.monotonic()
    code, err = run_main(
        capsys,
        "--n",
        "10",
        "--out",
        "s3://bucket/prefix",
        "--s3-endpoint",
        f"http://127.0.0.1:{_closed_port()}",
    )
    assert code == 2 and err.startswith("error: cannot access s3://bucket/prefix") and "\n" not in err
    assert "testing" not in err  # credentials are never printed
    assert time.monotonic() - started < 30


def test_script_entry_point_reports_one_line_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "synth/generate.py", "--n", "abc", "--out", str(tmp_path / "o")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    help_proc = subprocess.run(
        [sys.executable, "synth/generate.py", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert help_proc.returncode == 0 and "--s3-endpoint" in help_proc.stdout


def test_unknown_family_is_one_line_listing_the_families(capsys, tmp_path):
    code, err = run_main(capsys, "--n", "10", "--family", "nosuch", "--out", str(tmp_path / "o"))
    assert code == 2 and "\n" not in err.strip()
    assert "unknown --family 'nosuch'; choose one of flat2, flat, flat8, mixed, textured" in err
