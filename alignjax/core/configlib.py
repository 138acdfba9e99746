"""YAML configs with `key=value` overrides, validated into typed dataclasses.

One mechanism for every section: a dataclass declares the keys and their types; a
mapping is checked against it recursively, so a misspelt key fails with its full dotted
name and the closest valid key, and a wrongly typed value names the key and the type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

import yaml

from alignjax.core import paths

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-5 as a string
        except ValueError:
            pass
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # A class with open sections takes extra keys whose types a registry declares (a
    # method's `loss.<name>` section), collected into its `sections` field.
    open_sections = cls.__open_sections__() if hasattr(cls, "__open_sections__") else {}
    valid = [k for k in fields if not (open_sections and k == "sections")] + list(open_sections)
    kwargs, sections = {}, {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key in open_sections:
            sections[key] = _coerce(value, open_sections[key], dotted)
        elif key not in valid:
            raise ConfigError(f"unknown config key {dotted!r}{_suggest(key, valid)}")
        else:
            kwargs[key] = _coerce(value, hints[key], dotted)
    if sections:
        kwargs["sections"] = sections
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if hasattr(obj, "__open_sections__"):
            out.update(out.pop("sections"))  # back to the keys they were given as
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_override(tree: dict[str, Any], override: str) -> None:
    """`a.b.c=value`: value parsed as YAML; `null` unsets the key (back to its default).

    A number steps into a list, and the rest of the key is then one dotted key of that
    item: `stages.1.train.steps=50` sets `train.steps` in the second stage's overrides.
    """
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override {override!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})"
        ) from None
    parts = key.strip().split(".")
    node = tree
    i = 0
    while i < len(parts) - 1:
        part = parts[i]
        child = node.setdefault(part, {})
        if isinstance(child, list) and parts[i + 1].isdigit():
            index = int(parts[i + 1])
            if index >= len(child) or not isinstance(child[index], dict):
                raise ConfigError(f"override {key!r}: {part} has no mapping at index {index}")
            node, parts, i = child[index], [*parts[: i + 2], ".".join(parts[i + 2 :])], i + 2
            continue
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")
        node = child
        i += 1
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with paths.open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load(cls: type[T], path: str, overrides: list[str] = ()) -> T:
    tree = load_yaml(path)
    for override in overrides:
        apply_override(tree, override)
    try:
        return from_dict(cls, tree)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
