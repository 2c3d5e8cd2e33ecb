"""Settings from text and YAML values: ``section.key`` paths, declared types, ranges and durations."""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from ddlm.errors import DDLMError
from ddlm.training.config.ranges import BOUNDS, DURATION_KEYS


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1, "c": {"d": 2}}} -> {"a.b": 1, "a.c": {"d": 2}}: sections to ``section.key``
    (a mapping setting such as process.schedule stays whole)."""
    flat: dict[str, Any] = {}
    for section, entries in values.items():
        if not isinstance(entries, dict):
            raise DDLMError(f"config section {section!r} must be a mapping of keys, got {entries!r}")
        flat.update({f"{section}.{key}": value for key, value in entries.items()})
    return flat


def set_value(config: Any, dotted_key: str, value: Any, filled: Mapping[str, str]) -> None:
    """Set ``section.key`` (or one entry, ``section.key.entry``, of a mapping setting) on ``config``, a
    dataclass of dataclass sections, checking that the key exists and the type and range fit. ``filled``
    maps the ``section.key``s that may not be set to what fills them."""
    section_name, _, key = dotted_key.partition(".")
    key, _, entry = key.partition(".")
    section = getattr(config, section_name, None)
    if not is_dataclass(section) or not key:
        valid = [f.name for f in fields(config)]
        raise DDLMError(f"unknown config key {dotted_key!r}; keys look like section.key with section in {valid}")
    if f"{section_name}.{key}" in filled:
        raise DDLMError(f"{section_name}.{key} is taken from {filled[f'{section_name}.{key}']}; "
                        f"leave it out of the {section_name} section")
    names = [f.name for f in fields(section) if f"{section_name}.{f.name}" not in filled]
    if key not in names:
        raise DDLMError(f"unknown config key {dotted_key!r}; {section_name} has {sorted(names)}")
    declared = setting_type(section, key)
    if entry:
        if not is_mapping(declared[0]):
            raise DDLMError(f"{section_name}.{key} is not a mapping; write {section_name}.{key}=VALUE")
        value = {**(getattr(section, key) or {}), entry: value}
    setattr(section, key, coerce(f"{section_name}.{key}", declared, value))


def is_mapping(kind: Any) -> bool:
    return kind is dict or typing.get_origin(kind) is dict


def setting_type(section: Any, key: str) -> tuple[type, bool]:
    """The declared type of ``section.key`` and whether it may be null (``int | None``)."""
    declared = typing.get_type_hints(type(section))[key]
    if isinstance(declared, types.UnionType) or typing.get_origin(declared) is typing.Union:
        (base,) = [arg for arg in typing.get_args(declared) if arg is not type(None)]
        return base, True
    return declared, False


def coerce(dotted_key: str, declared: tuple[type, bool], value: Any) -> Any:
    """``value`` converted to the declared type of the setting and checked against its range, or a clear error."""
    kind, nullable = declared
    if value is None:
        if nullable:
            return None
        raise DDLMError(f"{dotted_key} must be set (got null)")
    if kind is bool:
        if not isinstance(value, bool):
            raise DDLMError(f"{dotted_key} must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise DDLMError(f"{dotted_key} must be text, got {value!r}")
        return value
    if is_mapping(kind):  # a mapping setting with a name, such as process.schedule: the bare name will do
        if isinstance(value, str):
            return {"name": value}
        if not isinstance(value, dict) or not all(isinstance(entry, str) for entry in value):
            raise DDLMError(f"{dotted_key} must be a name or a mapping {{name: ..., key: value}}, got {value!r}")
        return dict(value)
    number = to_number(dotted_key, kind, value)
    bounds = BOUNDS.get(dotted_key)
    if bounds is not None and not bounds.contains(number):
        raise DDLMError(f"{dotted_key} must be {bounds.describe()}, got {value!r}")
    return number


def to_number(dotted_key: str, kind: type, value: Any) -> int | float:
    """An int or finite float from a number or its text ("1e-3", and durations such as "10m" where allowed)."""
    if isinstance(value, str) and dotted_key in DURATION_KEYS:
        value = duration_seconds(value, dotted_key)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DDLMError(f"{dotted_key} must be a number, got {value!r}")
    if kind is int and isinstance(value, int):
        return value
    try:
        number = float(value)  # YAML reads 1e-3 as a string
    except ValueError:
        raise DDLMError(f"{dotted_key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DDLMError(f"{dotted_key} must be a finite number, got {value!r}")
    if kind is int:
        if not number.is_integer():
            raise DDLMError(f"{dotted_key} must be a whole number, got {value!r}")
        return int(number)
    return number


DURATION = re.compile(r"\s*(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([smh]?)\s*")  # a plain number may use an exponent


def duration_seconds(text: str, what: str = "duration") -> float:
    """Seconds in '600', '90s', '10m', '1.5h'."""
    match = DURATION.fullmatch(text)
    if not match:
        raise DDLMError(f"invalid {what} {text!r}; write e.g. 600, 90s, 10m or 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
