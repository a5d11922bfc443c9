"""Typed `--set a.b=value` overrides and Python config files for nested frozen dataclasses.

A run's configuration is one tree of frozen, keyword-only dataclasses. This module changes single
leaves of such a tree from strings (the command line), parsing each value with the type annotation
of the field it replaces, and loads config files: Python files exposing `get_config()`.

Nothing here knows which dataclasses exist; the schema is the dataclass tree itself, so a new field
is overridable the moment it is declared. Errors name the offending dotted path and list the valid
alternatives, so that a typo never silently trains with the default.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import pathlib
import types
import typing
from typing import Any, Sequence


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the field (dotted path)."""


def _field_types(cls: type) -> dict[str, Any]:
  # `from __future__ import annotations` turns annotations into strings; resolve them once.
  return typing.get_type_hints(cls)


def parse_value(text: str, annotation: Any, *, path: str) -> Any:
  """Parses `text` as a value of type `annotation`.

  Supported: bool, int, float, str, pathlib.Path, Enum (by member name, case-insensitive, or by
  value), `X | None` ("none"/"null" → None), tuple[X, ...] / tuple[X, Y] / list[X] (comma
  separated, optional surrounding brackets), typing.Literal.

  Args:
    text: the raw string from the command line.
    annotation: the field's resolved type annotation.
    path: the dotted field path, used in error messages.

  Returns:
    The parsed value.

  Raises:
    ConfigError: naming `path` when the string does not parse as the type.
  """
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType):
    non_none = [a for a in args if a is not type(None)]
    if len(non_none) < len(args) and text.strip().lower() in ("none", "null"):
      return None
    errors = []
    for option in non_none:
      try:
        return parse_value(text, option, path=path)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"{path}: cannot parse {text!r} as {annotation}: " + "; ".join(errors))
  if origin is typing.Literal:
    for option in args:
      if str(option) == text:
        return option
    raise ConfigError(f"{path}: {text!r} is not one of {list(args)}")
  if origin in (tuple, list):
    body = text.strip()
    if body[:1] in "([" and body[-1:] in ")]":
      body = body[1:-1]
    items = [s.strip() for s in body.split(",") if s.strip()]
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
      if len(items) != len(args):
        raise ConfigError(f"{path}: expected {len(args)} comma-separated values, got {text!r}")
      return tuple(parse_value(s, a, path=path) for s, a in zip(items, args))
    item_type = args[0] if args else str
    parsed = [parse_value(s, item_type, path=path) for s in items]
    return tuple(parsed) if origin is tuple else parsed
  if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
    for member in annotation:
      if member.name.lower() == text.lower() or str(member.value) == text:
        return member
    raise ConfigError(
        f"{path}: {text!r} is not a {annotation.__name__}; known: "
        + ", ".join(m.name.lower() for m in annotation))
  if annotation is bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise ConfigError(f"{path}: {text!r} is not a boolean (true/false)")
  if annotation in (int, float):
    try:
      # Accept "1e3" for int fields only when it is integral, so `steps=1e3` works.
      value = float(text) if annotation is float else _parse_int(text)
    except ValueError:
      raise ConfigError(f"{path}: {text!r} is not a valid {annotation.__name__}") from None
    return value
  if annotation is str:
    return text
  if annotation is pathlib.Path:
    return pathlib.Path(text)
  if dataclasses.is_dataclass(annotation):
    raise ConfigError(f"{path}: is a config section; set one of its fields, e.g. {path}.<field>=...")
  raise ConfigError(f"{path}: fields of type {annotation} cannot be set from the command line")


def _parse_int(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    as_float = float(text)
    if not as_float.is_integer():
      raise
    return int(as_float)


def _replace_path(node: Any, parts: Sequence[str], raw: str, *, prefix: str) -> Any:
  head = parts[0]
  if isinstance(node, tuple) and all(dataclasses.is_dataclass(v) for v in node):
    # A tuple of sections (e.g. training phases) is indexed by position: `phases.1.steps=5`.
    path = f"{prefix}.{head}"
    if not head.isdigit() or int(head) >= len(node):
      raise ConfigError(f"{path}: {prefix} has {len(node)} entries, index with 0..{len(node) - 1}")
    if len(parts) == 1:
      raise ConfigError(f"{path}: is a config section; set one of its fields, e.g. {path}.<field>=...")
    items = list(node)
    items[int(head)] = _replace_path(node[int(head)], parts[1:], raw, prefix=path)
    return tuple(items)
  if not dataclasses.is_dataclass(node):
    raise ConfigError(f"{prefix}: is not a config section, cannot set {'.'.join(parts)} inside it")
  names = [f.name for f in dataclasses.fields(node)]
  rest = parts[1:]
  path = f"{prefix}.{head}" if prefix else head
  if head not in names:
    raise ConfigError(f"unknown config field {path!r}; fields here: {', '.join(names)}")
  current = getattr(node, head)
  if rest:
    return dataclasses.replace(node, **{head: _replace_path(current, rest, raw, prefix=path)})
  annotation = _field_types(type(node))[head]
  return dataclasses.replace(node, **{head: parse_value(raw, annotation, path=path)})


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
  """Returns `config` with each `dotted.path=value` override applied, in order.

  Args:
    config: a frozen dataclass tree.
    overrides: strings like "optim.lr=1e-6" or "sampling.temperature=0.6".

  Raises:
    ConfigError: for a malformed override, an unknown field (named, with the valid ones listed)
      or a value that does not parse as the field's type. Dataclass `__post_init__` validation
      errors are re-raised as ConfigError naming the override.
  """
  for item in overrides:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(f"override {item!r} is not of the form dotted.field=value")
    try:
      config = _replace_path(config, key.split("."), raw.strip(), prefix="")
    except ConfigError:
      raise
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{key}: {e}") from e
  return config


def load_config_file(path: str | pathlib.Path) -> Any:
  """Imports a Python config file and returns its `get_config()`.

  Raises:
    ConfigError: naming the file when it is missing or has no `get_config`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config: file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_hpt_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config: {str(path)!r} defines no get_config() function")
  return get_config()


def to_dict(config: Any) -> Any:
  """A JSON-able view of a config tree (enums by name, paths as strings) for logs and metadata."""
  if dataclasses.is_dataclass(config):
    return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
  if isinstance(config, enum.Enum):
    return config.name.lower()
  if isinstance(config, (tuple, list)):
    return [to_dict(v) for v in config]
  if isinstance(config, dict):
    return {str(k): to_dict(v) for k, v in config.items()}
  if isinstance(config, pathlib.PurePath):
    return str(config)
  if isinstance(config, (bool, int, float, str)) or config is None:
    return config
  return repr(config)
