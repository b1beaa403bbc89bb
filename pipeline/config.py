"""params.yaml loading: every section maps onto a dataclass of defaults that lives
beside the code using it. An override must name an existing key (minGPT style), so a
typo such as `train.lrr` fails loudly instead of silently training with the default."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# Top-level sections params.yaml may contain; anything else is a typo.
KNOWN_SECTIONS = ("scenes", "data", "encoder", "features", "vocab", "train", "evaluate", "caption")


class ParamsError(ValueError):
    """A params file names a key that does not exist or has a value of the wrong type."""


def read_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    unknown = sorted(set(params) - set(KNOWN_SECTIONS))
    if unknown:
        raise ParamsError(
            f"{path}: unknown section(s) {', '.join(map(repr, unknown))}; "
            f"known sections: {', '.join(KNOWN_SECTIONS)}"
        )
    return params


def build(cls: type[T], values: dict[str, Any] | None, where: str) -> T:
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys and coercing
    the YAML scalars into the declared field types (so `lr: 3e-4` as a string still works)."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamsError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"valid keys in '{where}': {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**values)


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Read one section of a params file into its defaults dataclass."""
    params = read_params(path)
    return build(cls, params.get(section), section)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ParamsError:
                continue
        raise ParamsError(f"{key}: {value!r} does not fit {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return origin(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"{key}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        try:
            number = hint(value) if hint is float else int(str(value)) if isinstance(value, str) else value
        except ValueError:
            raise ParamsError(f"{key}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and not isinstance(number, int):
            if isinstance(number, float) and number.is_integer():
                return int(number)
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value
