"""Argument pieces the training command lines share: ``--set key.sub=value`` parsing and the parser
``train.py`` and ``tune.py`` start from. Numbers and one-line errors are ``synth.cli``'s.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def parse_value(raw: str) -> Any:
    """Parse a ``--set`` value: JSON (``3``, ``1e-4``, ``[1,2]``, ``"x"``), ``true/false/none``,
    ``1,2,3`` as a list, else the raw string. ``1e5`` (no decimal point) becomes the int 100000."""
    text = raw.strip()
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        if lowered in ("true", "false", "none", "null"):
            return {"true": True, "false": False}.get(lowered)
        if "," in text:
            return [parse_value(part) for part in text.split(",")]
        return text
    if isinstance(value, float) and value.is_integer() and "." not in text:
        return int(value)
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key.sub=value`` into ``("key.sub", value)``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    return key.strip(), parse_value(raw)


def training_parser(doc: str, preset_help: str, set_help: str) -> argparse.ArgumentParser:
    """The parser train.py and tune.py share: description from ``doc``; --data, --preset, --set."""
    summary, _, details = doc.partition("\n\n")
    p = argparse.ArgumentParser(
        description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="dataset directory or s3:// URI written by synth")
    p.add_argument("--preset", default="tiny", help=preset_help)
    p.add_argument(
        "--result",
        metavar="FILE",
        help="also write the outcome as JSON to FILE (what a pipeline such as main_job reads)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=parse_override,
        metavar="KEY=VALUE",
        help=set_help,
    )
    return p
