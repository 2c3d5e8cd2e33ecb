"""Options declared once: a dataclass field whose metadata carries its help text, range and choices.

:func:`option` declares a field; :func:`check_fields` validates an instance against every declared
field and raises :class:`~ddlm.errors.DDLMError` carrying the field's name. The command line
(:mod:`ddlm.cli`), the API's request body (:mod:`ddlm.app.api`) and the web page's controls
(:mod:`ddlm.app.ui`) are generated from the same declarations, so their names, ranges and help
texts cannot drift apart. This module imports nothing heavy (the CLI reads it before torch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from ddlm.errors import DDLMError

OPTION_KEY = "ddlm.option"


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric setting: ``low``/``high`` included unless marked open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        low, high = number_text(self.low), number_text(self.high)
        if self.high is None:
            return f"{'greater than' if self.low_open else 'at least'} {low}"
        if self.low is None:
            return f"{'below' if self.high_open else 'at most'} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def json_schema(self) -> dict[str, float]:
        """The range as JSON Schema keywords (``minimum``, ``exclusiveMaximum``, ...)."""
        schema = {}
        if self.low is not None:
            schema["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            schema["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return schema


def number_text(value: float | None) -> str:
    """A bound as people write it: 0.05, 1, 2**63."""
    if isinstance(value, int) and value >= 2**32 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Option:
    """What the front ends need to know of one option besides its name, type and default.

    ``flag``: the command-line spelling when it is not ``--name-with-dashes`` (``--no-cache``).
    ``off``: for an option whose default is None (off), the value a web control shows for 'off'.
    ``slider_max`` / ``slider_step``: a web slider's end for a range open above, and its step.
    """

    help: str
    bounds: Bounds | None = None
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    off: Any = None
    slider_max: float | None = None
    slider_step: float | None = None


def option(default: Any = None, help: str = "", *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, choices: tuple[str, ...] | None = None,
           flag: str | None = None, off: Any = None, slider_max: float | None = None,
           slider_step: float | None = None) -> Any:
    """A dataclass field declared with its help text, range and choices (see :class:`Option`)."""
    bounds = Bounds(low, high, low_open, high_open) if low is not None or high is not None else None
    metadata = {OPTION_KEY: Option(help, bounds, choices, flag, off, slider_max, slider_step)}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DeclaredOption:
    """One declared field as the front ends read it: name, base type, default, and its :class:`Option`."""

    name: str
    kind: type  # int, float, bool or str
    nullable: bool
    default: Any
    option: Option

    @property
    def help(self) -> str:
        return self.option.help

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """The help text with the range, the choices and the default: what every front end shows."""
        notes = []
        if self.option.bounds is not None:
            notes.append(self.option.bounds.describe())
        if self.kind is bool:
            notes.append("on by default" if self.default else "off by default")
        elif self.default is not None:
            notes.append(f"default {self.default}")
        return f"{self.help} ({'; '.join(notes)})" if notes else self.help


@functools.cache
def declared_options(cls: type) -> tuple[DeclaredOption, ...]:
    """The fields of dataclass ``cls`` declared with :func:`option`, in declaration order."""
    hints = typing.get_type_hints(cls)
    declared = []
    for item in dataclasses.fields(cls):
        if OPTION_KEY in item.metadata:
            kind, nullable = base_type(hints[item.name])
            declared.append(DeclaredOption(item.name, kind, nullable, item.default, item.metadata[OPTION_KEY]))
    return tuple(declared)


def base_type(hint: Any) -> tuple[type, bool]:
    """(the type, whether None is allowed) of a hint such as ``int | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (base,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return base, True
    return hint, False


def check_value(declared: DeclaredOption, value: Any) -> None:
    """Raise a DDLMError carrying ``declared.name`` unless ``value`` has its type, range and choices."""
    name, kind = declared.name, declared.kind
    if value is None:
        if declared.nullable:
            return
        raise DDLMError(f"{name} must be set", field=name)
    if kind is bool and not isinstance(value, bool):
        raise DDLMError(f"{name} must be true or false, got {value!r}", field=name)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise DDLMError(f"{name} must be an integer, got {value!r}", field=name)
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        rule = f" {declared.option.bounds.describe()}" if declared.option.bounds is not None else ""
        raise DDLMError(f"{name} must be a finite number{rule}, got {value!r}", field=name)
    if kind is str and not isinstance(value, str):
        raise DDLMError(f"{name} must be text, got {value!r}", field=name)
    bounds, choices = declared.option.bounds, declared.option.choices
    if bounds is not None and not bounds.contains(value):
        raise DDLMError(f"{name} must be {bounds.describe()}, got {value}", field=name)
    if choices is not None and value not in choices:
        raise DDLMError(f"unknown {name} {value!r}; choose one of {list(choices)}", field=name)


def check_fields(instance: Any) -> None:
    """Validate every declared field of dataclass ``instance`` (raises DDLMError with the field)."""
    for declared in declared_options(type(instance)):
        check_value(declared, getattr(instance, declared.name))


def check_integer(name: str, value: Any, minimum: int) -> None:
    """Raise a DDLMError carrying ``name`` unless ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DDLMError(f"{name} must be an integer, got {value!r}", field=name)
    if value < minimum:
        raise DDLMError(f"{name} must be at least {minimum}, got {value}", field=name)
