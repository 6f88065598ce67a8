"""Run configuration: YAML/JSON files, ``key=value`` overrides on the command line, the resolved copy on disk."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "build_section",
    "load_config",
    "parse_overrides",
    "recipe_path",
    "save_config",
    "section_dict",
]


#: Bounds on what a config file or an override may expand to (YAML aliases can nest references exponentially).
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 32


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``1e-3`` / ``5E4`` as floats (YAML 1.2 does; PyYAML wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def _load_yaml(text: str, source: str = "config"):
    """Parse YAML safely, refusing documents nested too deeply or expanding (through aliases) to too many values."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no object construction
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply (more than {MAX_CONFIG_DEPTH} levels)") from None
    _check_bounded(data, source)
    return data


def _check_bounded(data: Any, source: str) -> None:
    """Count values the way a copy or a dump would see them (aliases expanded) and stop at the bounds."""
    count = 0
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{source} expands to more than {MAX_CONFIG_VALUES} values (YAML aliases referencing aliases?)"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source} is nested too deeply (more than {MAX_CONFIG_DEPTH} levels)")
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


_RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def recipe_path(package: str, name: str | os.PathLike) -> Path:
    """The recipe file ``name`` stands for: a method package's bundled ``recipes/<name>.yaml``, or a file path.

    A bare name (letters, digits, ``_``, ``-``) resolves only inside the package's ``recipes`` folder; anything with a
    path separator or a ``.yaml`` / ``.yml`` / ``.json`` suffix is a file path, which must exist.
    """
    text = str(name)
    if "/" in text or os.sep in text or Path(text).suffix in _RECIPE_SUFFIXES:
        path = Path(text)
        if path.suffix not in _RECIPE_SUFFIXES:
            raise ConfigError(f"recipe file {path} must end in .yaml, .yml or .json")
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path
    from importlib.resources import files

    root = Path(str(files(f"bramley.{package.replace('-', '_')}") / "recipes"))
    packaged = root / f"{text}.yaml"
    if not _RECIPE_NAME.fullmatch(text) or not packaged.is_file():
        known = ", ".join(sorted(p.stem for p in root.glob("*.yaml"))) or "none"
        raise ConfigError(f"unknown recipe {text!r}; bundled recipes: {known} (or give a .yaml file path)")
    return packaged


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (or JSON) mapping from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _load_yaml(path.read_text(), f"config file {path}")
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def parse_overrides(items: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse ``a.b=value`` strings; values are read as YAML scalars/lists (``lr=1e-3``, ``sizes=[8,16]``).

    Types are checked against the recipe's declared types (:func:`build_section`): ``epochs=ten`` is an error there.
    """
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form key=value (nested keys as a.b.c=value)")
        try:
            value = _load_yaml(raw, f"override {item!r}") if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
        parsed.append((key.split("."), value))
    return parsed


def save_config(config: Mapping[str, Any], directory: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config beside a run's outputs so the run can be repeated exactly."""
    from .checkpoint import atomic_write

    text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
    return atomic_write(Path(directory) / name, lambda tmp: Path(tmp).write_text(text))


# ---------------------------------------------------------------------------------------------------- typed sections
def build_section(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """A dataclass instance from a mapping, every value checked against the field's type annotation.

    Unknown keys are errors listing the known ones; a structure where a scalar belongs, a float that is not finite,
    a value outside a ``Literal``'s choices are errors naming the key (``prefix`` + field name). Fields typed as a
    dataclass are built recursively; ``dict[str, Any]`` fields are free-form.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.') or 'top level'!r} must be a section (a mapping)")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"unknown config key {prefix + str(unknown[0])!r} ({where} has: {', '.join(fields) or 'no keys'})"
        )
    hints = typing.get_type_hints(cls)
    values = {name: _check_type(prefix + name, value, hints[name]) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as e:  # a required field without a value
        raise ConfigError(f"section {prefix.rstrip('.') or 'top level'!r}: {e}") from None


def section_dict(section: Any) -> dict[str, Any]:
    """A dataclass section as plain YAML/JSON-ready values (tuples become lists), recursively."""
    return _plain(dataclasses.asdict(section))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` wants it (ints widen to floats, lists to tuples), or a ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own, more specific message
            return _check_type(key, value, options[0])
        for option in options:
            try:
                return _check_type(key, value, option)
            except ConfigError:
                continue
        raise _type_error(key, value, hint)
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"config key {key!r} must be one of {_type_name(hint)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, key + ".")
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, hint)
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(key, value, hint)
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _type_error(key, value, hint)
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _type_error(key, value, hint)
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _type_error(key, value, hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r} must hold {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_check_type(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        checked = [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, value, hint)
        return dict(value)
    raise TypeError(f"config key {key!r}: annotation {hint!r} is not supported by bramley.core.config")


def _type_error(key: str, value: Any, hint: Any) -> ConfigError:
    hint_text = _type_name(hint)
    quote = " (quote it to pass a string: key='...')" if "str" in hint_text and not isinstance(value, str) else ""
    return ConfigError(f"config key {key!r} must be {hint_text}, got {type(value).__name__} {value!r}"[:300] + quote)
