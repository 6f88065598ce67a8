"""Run configuration: YAML/JSON files, ``key=value`` overrides on the command line, the resolved copy on disk."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "apply_overrides",
    "load_config",
    "parse_overrides",
    "recipe_path",
    "resolve_config",
    "save_config",
]


class ConfigError(ValueError):
    """A config file or override is malformed or names an unknown key."""


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


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def _typed(key: str, default: Any, value: Any) -> Any:
    """``value`` checked against the type of the ``default`` it replaces (numbers mix; None defaults take anything)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float))
        value = float(value) if ok and isinstance(default, float) else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    elif isinstance(default, Mapping):
        ok = isinstance(value, Mapping)
    else:
        ok = True
    if not ok:
        hint = " (quote it to pass a string: key='...')" if isinstance(default, str) else ""
        raise ConfigError(
            f"config key {key!r} expects {type(default).__name__} like its default {default!r}, "
            f"got {type(value).__name__} {value!r}{hint}"
        )
    return value


def recipe_path(package: str, name: str) -> Path:
    """A method package's bundled recipe ``bramley.<package>/recipes/<name>.yaml``, or ``name`` itself when it is a
    YAML path; an unknown name is a :class:`ConfigError` listing the bundled recipes."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    from importlib.resources import files

    root = Path(str(files(f"bramley.{package.replace('-', '_')}") / "recipes"))
    packaged = root / f"{name}.yaml"
    if not packaged.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml"))
        raise ConfigError(f"unknown recipe {name!r}; packaged recipes: {', '.join(known)}")
    return packaged


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (or JSON) mapping from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def parse_overrides(items: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse ``a.b=value`` strings; values are read as YAML scalars/lists (``lr=1e-3``, ``sizes=[8,16]``).

    Types are checked where the value replaces a default (:func:`apply_overrides`): ``epochs=ten`` is an error.
    """
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form key=value (nested keys as a.b.c=value)")
        try:
            value = _load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(
    config: Mapping[str, Any],
    overrides: Iterable[str | tuple[list[str], Any]],
    strict: bool = True,
    open_sections: Iterable[str] = (),
) -> dict[str, Any]:
    """Return a copy of ``config`` with overrides applied; with ``strict``, unknown keys are errors.

    ``open_sections`` (dotted paths such as ``"model.kwargs"``) are free-form: any key below them is accepted as given,
    untyped (e.g. factory keyword arguments that only the chosen model knows).
    """
    out = copy.deepcopy(dict(config))
    open_sections = set(open_sections)
    overrides = list(overrides)
    items = [o for o in overrides if not isinstance(o, str)]
    items += parse_overrides(o for o in overrides if isinstance(o, str))
    for path, value in items:
        node, free = out, False
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            free = free or ".".join(path[:depth]) in open_sections
            if strict and not free and part not in node:
                where = ".".join(path[:depth]) or "top level"
                known = ", ".join(sorted(node))
                raise ConfigError(f"unknown config key {'.'.join(path)!r}: {part!r} is not in {where} (known: {known})")
            if last:
                node[part] = _typed(".".join(path), node[part], value) if part in node and not free else value
            else:
                if not isinstance(node.setdefault(part, {}), dict):
                    raise ConfigError(f"config key {'.'.join(path[: depth + 1])!r} is a value, not a section")
                node = node[part]
    return out


def resolve_config(
    defaults: Mapping[str, Any],
    config_path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    open_sections: Iterable[str] = (),
) -> dict[str, Any]:
    """defaults <- config file <- command-line overrides; keys outside ``defaults`` are rejected, except below the
    free-form ``open_sections`` (see :func:`apply_overrides`)."""
    open_sections = tuple(open_sections)
    config = copy.deepcopy(dict(defaults))
    if config_path is not None:
        config = _merge(config, load_config(config_path), str(config_path), "", open_sections)
    return apply_overrides(config, list(overrides), open_sections=open_sections)


def _merge(
    base: dict[str, Any], update: Mapping[str, Any], source: str, prefix: str = "", open_sections: tuple[str, ...] = ()
) -> dict[str, Any]:
    if prefix[:-1] in open_sections:  # free-form: taken as given
        base.update(copy.deepcopy(dict(update)))
        return base
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"{source}: unknown config key {prefix + key!r} (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and isinstance(value, Mapping):
            base[key] = _merge(base[key], value, source, prefix + key + ".", open_sections)
        else:
            try:
                base[key] = _typed(prefix + key, base[key], value)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    return base


def save_config(config: Mapping[str, Any], directory: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config beside a run's outputs so the run can be repeated exactly."""
    from .checkpoint import atomic_write

    text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
    return atomic_write(Path(directory) / name, lambda tmp: Path(tmp).write_text(text))
