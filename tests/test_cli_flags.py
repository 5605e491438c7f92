"""Flags declared on request fields (``pipelines.cli.flags``): one home for each default, switches,
repeatable flags, validation on build, and the check that finds a flag whose default drifted."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from pipelines.cli.flags import add_flags, from_flags, mismatched_defaults, option
from synth.cli import UserError, parse_number


@dataclass(frozen=True, kw_only=True)
class Request:
    data: str
    steps: int = option(10, "steps", parse=parse_number)
    mode: str = option("a", "a or b", choices=("a", "b"))
    timeout_s: float = option(1.5, "seconds", flag="timeout", parse=float)
    check: bool = option(True, "skip the check")
    dry_run: bool = option(False, "only print")
    tag: list[str] = option([], "a tag (repeatable)")
    hook: int | None = option(None, "test hook", parse=int, hidden=True)

    def validate(self) -> Request:
        if self.steps < 1:
            raise UserError("--steps must be at least 1")
        return self


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_flags(parser, Request)
    return parser


def test_flags_come_from_the_fields_with_their_defaults_and_forms():
    parser = _parser()
    assert mismatched_defaults(parser, Request) == []
    assert from_flags(Request, vars(parser.parse_args([])), data="d") == Request(data="d")
    args = parser.parse_args(
        ["--steps", "1e2", "--timeout", "3", "--no-check", "--dry-run", "--tag", "x", "--tag", "y"]
    )
    request = from_flags(Request, vars(args), data="d")
    assert (request.steps, request.timeout_s, request.check, request.dry_run) == (100, 3.0, False, True)
    assert request.tag == ["x", "y"] and Request(data="e").tag == []  # the default list is not shared
    assert "--hook" not in parser.format_help() and "(default 10)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_a_request_is_validated_when_built_and_values_win_over_flags():
    parser = _parser()
    with pytest.raises(UserError, match="--steps must be at least 1"):
        from_flags(Request, vars(parser.parse_args(["--steps", "0"])), data="d")
    assert from_flags(Request, vars(parser.parse_args(["--steps", "5"])), data="d", steps=7).steps == 7


def test_a_flag_whose_default_drifted_from_its_field_is_found():
    parser = _parser()
    parser.set_defaults(steps=20)
    assert mismatched_defaults(parser, Request) == ["--steps: flag 20 != field 10"]
