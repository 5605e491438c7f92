"""Command-line flags declared on the request dataclasses themselves, so each default has one home.

A request field that is also a flag is declared with ``option``::

    @dataclass(frozen=True, kw_only=True)
    class ServeOptions:
        port: int = option(7860, "port on 127.0.0.1", parse=int)
        share: bool = option(False, "also print the public URL")

``add_flags(parser, ServeOptions)`` adds ``--port`` (default 7860, ``(default 7860)`` appended to its
help) and ``--share``; a ``bool`` field that defaults to True becomes ``--no-<name>``.
``from_flags(ServeOptions, vars(args))`` builds the request from the parsed flags (fields given as
keywords win) and calls its ``validate()`` when it has one. ``flag_defaults(parser)`` /
``field_defaults(cls)`` let a test check that the two agree for every flag.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
FLAG = "flag"  # the dataclasses.field metadata key


@dataclass(frozen=True)
class FlagSpec:
    """How one field appears on the command line."""

    help: str
    flag: str | None = None  # the flag's name without dashes (default: the field's, _ → -)
    parse: Callable[[str], Any] | None = None  # argparse ``type``
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    hidden: bool = False  # a test hook: parsed, not shown by --help
    show_default: bool = True


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: Iterable[Any] | None = None,
    metavar: str | None = None,
    hidden: bool = False,
    show_default: bool = True,
) -> Any:
    """A dataclass field with ``default`` that is also the flag ``--<flag or name>``."""
    spec = FlagSpec(
        help, flag, parse, tuple(choices) if choices is not None else None, metavar, hidden, show_default
    )
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={FLAG: spec})
    return dataclasses.field(default=default, metadata={FLAG: spec})


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` declared with ``option``, in order."""
    return [f for f in dataclasses.fields(cls) if FLAG in f.metadata]


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"field {f.name} has no default")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
) -> None:
    """Add a flag for each ``option`` field of ``cls`` (those in ``only`` when given, none in ``skip``)."""
    wanted = set(only) if only is not None else None
    for f in flag_fields(cls):
        if f.name in skip or (wanted is not None and f.name not in wanted):
            continue
        spec: FlagSpec = f.metadata[FLAG]
        default = field_default(f)
        name = spec.flag or f.name.replace("_", "-")
        help_text = argparse.SUPPRESS if spec.hidden else spec.help
        if isinstance(default, bool):
            flag = f"--no-{name}" if default else f"--{name}"
            action = "store_false" if default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=default, help=help_text)
            continue
        if not spec.hidden and spec.show_default and default is not None:
            help_text = f"{help_text} (default %(default)s)"
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if spec.parse is not None:
            kwargs["type"] = spec.parse
        if isinstance(default, list):
            kwargs["action"] = "append"  # repeatable; argparse appends to a copy of the default
        if spec.choices is not None:
            kwargs["choices"] = spec.choices
        if spec.metavar is not None or spec.choices is None:
            kwargs["metavar"] = spec.metavar or name.upper().replace("-", "_")
        parser.add_argument(f"--{name}", **kwargs)


def from_flags(cls: type[T], flags: Mapping[str, Any], **values: Any) -> T:
    """A ``cls`` whose ``option`` fields come from the same-named ``flags`` (``vars(args)``) and the
    rest from ``values`` (which also win over ``flags``); validated when ``cls`` has ``validate()``
    (which returns the request)."""
    taken = {f.name: flags[f.name] for f in flag_fields(cls) if f.name in flags and f.name not in values}
    request = cls(**taken, **values)
    validate = getattr(request, "validate", None)
    return validate() if callable(validate) else request


def flag_defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``dest`` → default of every flag of ``parser`` (help excluded)."""
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def field_defaults(cls: type) -> dict[str, Any]:
    """field name → default for every field of dataclass ``cls`` that has one."""
    out = {}
    for f in dataclasses.fields(cls):
        try:
            out[f.name] = field_default(f)
        except KeyError:
            continue
    return out


def mismatched_defaults(parser: argparse.ArgumentParser, *classes: type) -> list[str]:
    """The flags of ``parser`` for an ``option`` field of one of ``classes`` whose default differs
    from the field's (empty when each default has one home). A flag named like a plain field (the
    ``--sampler`` name beside ``EvalRequest.sampler``, the overrides dict) is another thing."""
    fields: dict[str, Any] = {}
    for cls in classes:
        fields.update({f.name: field_default(f) for f in flag_fields(cls)})
    return sorted(
        f"--{dest}: flag {value!r} != field {fields[dest]!r}"
        for dest, value in flag_defaults(parser).items()
        if dest in fields and not _same(value, fields[dest])
    )


def _same(flag: Any, field: Any) -> bool:
    """Equal, or equal once the flag's value takes the field's container type (``--set`` pairs
    collected in a list become a dict, repeated ``--model`` a tuple)."""
    if flag == field:
        return True
    try:
        return isinstance(field, (dict, tuple)) and type(field)(flag) == field
    except (TypeError, ValueError):
        return False
