"""Recipes: the one schema of every bramley training run, and how a run folder is laid out.

A recipe has six sections, the same in every package::

    model:  {name: mobileone_s0, kwargs: {...}}   a registered model and its factory arguments (free-form)
    data:   the package's data section             (a dataclass the package declares)
    loss:   the package's loss section             (a dataclass the package declares)
    optim:  optimizer and learning-rate schedule   (TrainConfig's optimizer fields: optimizer, lr, schedule, ...)
    train:  budget, batch, numerics, runtime       (TrainConfig's other fields: epochs, batch_size, amp, seed, ...)
    eval:   evaluation during training             (every, batch_size; a package may add keys)

:func:`load_recipe` reads a bundled recipe by name (``recipes/<name>.yaml`` of the package) or a YAML file by path,
applies ``key=value`` overrides in order, and checks every value against its declared type: unknown keys, a structure
where a scalar belongs, non-finite numbers and values outside their choices are one-line :class:`ConfigError` naming
the key and where it came from. The run writes the resolved recipe as ``<out>/recipe.yaml``, which re-runs as given.

A run folder (``train --out DIR``) holds::

    recipe.yaml          the resolved recipe            metrics.jsonl   one JSON line per log / eval
    config.json          the model's build config       checkpoint.pt   the resume state (exact resume)
    model.safetensors    the final weights              ema.safetensors the EMA weights (when train.ema_decay is set)
    results.json         the final metrics and what the package adds

``config.json`` + ``model.safetensors`` make the folder a ``save_pretrained`` folder:
``bramley.core.checkpoint.load_model(DIR)`` rebuilds the trained model.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from .config import build_section, load_config, parse_overrides, recipe_path, save_config, section_dict
from .errors import ConfigError
from .run import RECIPE_NAME, RESULTS_NAME
from .train.config import TrainConfig

__all__ = [
    "EVAL_FIELDS",
    "OPTIM_FIELDS",
    "RECIPE_NAME",
    "RESULTS_NAME",
    "EvalSection",
    "ModelSection",
    "NoSettings",
    "OptimSection",
    "Recipe",
    "RecipeSchema",
    "TrainSection",
    "build_model",
    "load_recipe",
]


#: TrainConfig fields that form the recipe's ``optim`` section.
OPTIM_FIELDS = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "betas",
    "eps",
    "weight_decay",
    "weight_decay_end",
    "decay_norm_and_bias",
    "clip_grad_norm",
    "schedule",
    "warmup_epochs",
    "warmup_steps",
    "warmup_start_factor",
    "min_lr_ratio",
)
#: The recipe's ``eval`` keys and the TrainConfig fields they set.
EVAL_FIELDS = {"every": "eval_every", "batch_size": "eval_batch_size"}
# set by the command line (--out), never by a recipe
_RUN_FIELDS = ("out_dir",)


@dataclass
class ModelSection:
    """``model``: a registered model name and the keyword arguments of its factory (any the factory takes)."""

    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoSettings:
    """A section a package does not use (it must stay empty)."""


@dataclass
class EvalSection:
    """``eval``: how often (in epochs) and at what batch size the trainer evaluates (default: train.batch_size)."""

    every: int = 1
    batch_size: int | None = None


def _train_config_section(name: str, doc: str, keep) -> type:
    """A dataclass holding the TrainConfig fields that ``keep(field_name)`` selects, with their types and defaults."""
    hints = typing.get_type_hints(TrainConfig)
    fields = []
    for f in dataclasses.fields(TrainConfig):
        if keep(f.name):
            factory = f.default_factory
            default = f.default if factory is dataclasses.MISSING else field(default_factory=factory)
            fields.append((f.name, hints[f.name], default))
    cls = dataclasses.make_dataclass(name, fields)
    cls.__module__, cls.__doc__ = __name__, doc
    return cls


OptimSection = _train_config_section(
    "OptimSection",
    "``optim``: optimizer and learning-rate schedule (see :class:`bramley.core.train.TrainConfig`).",
    lambda name: name in OPTIM_FIELDS,
)
TrainSection = _train_config_section(
    "TrainSection",
    "``train``: budget, batch, numerics, checkpoints, seed and device (see :class:`bramley.core.train.TrainConfig`).",
    lambda name: name not in OPTIM_FIELDS and name not in EVAL_FIELDS.values() and name not in _RUN_FIELDS,
)


@dataclass(frozen=True)
class RecipeSchema:
    """What a package's recipes may hold: its data, loss and eval sections, and where its bundled recipes live.

    Args:
        package: the method's name (``"mobileone"``); bundled recipes are ``bramley/<package>/recipes/*.yaml``.
        data: dataclass of the ``data`` section.
        loss: dataclass of the ``loss`` section.
        eval: dataclass of the ``eval`` section (:class:`EvalSection` or a subclass adding keys).
        default_recipe: the recipe ``train`` uses when ``--recipe`` is not given.
    """

    package: str
    data: type = NoSettings
    loss: type = NoSettings
    eval: type = EvalSection
    default_recipe: str | None = None

    def defaults(self) -> dict[str, Any]:
        """Every key of the schema with its default value (what an empty recipe resolves to)."""
        return Recipe.build(self, {}).to_dict()


@dataclass
class Recipe:
    """A resolved recipe: six typed sections (see the module docstring) and the file it came from."""

    model: ModelSection
    data: Any
    loss: Any
    optim: Any
    train: Any
    eval: Any
    source: str | None = None

    @classmethod
    def build(cls, schema: RecipeSchema, config: Mapping[str, Any], source: str | None = None) -> Recipe:
        """Check ``config`` (a nested mapping) against ``schema``; every error names the key."""
        sections = {
            "model": ModelSection,
            "data": schema.data,
            "loss": schema.loss,
            "optim": OptimSection,
            "train": TrainSection,
            "eval": schema.eval,
        }
        if not isinstance(config, Mapping):
            raise ConfigError(f"a recipe must be a mapping of sections ({', '.join(sections)})")
        unknown = sorted(set(config) - set(sections))
        if unknown:
            raise ConfigError(f"unknown recipe section {unknown[0]!r} (sections: {', '.join(sections)})")
        built = {name: build_section(kind, config.get(name), name + ".") for name, kind in sections.items()}
        recipe = cls(**built, source=source)
        recipe.train_config(out_dir=".")  # TrainConfig's own checks, reported with recipe keys (--out comes later)
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """The six sections as plain values (what ``recipe.yaml`` holds)."""
        return {f.name: section_dict(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "source"}

    def train_config(self, out_dir: str | os.PathLike | None = None, **changes: Any) -> TrainConfig:
        """The trainer's settings: ``optim`` + ``train`` + ``eval``, writing to ``out_dir``."""
        values = {**section_dict(self.optim), **section_dict(self.train), **changes}
        values.update({field_name: getattr(self.eval, key) for key, field_name in EVAL_FIELDS.items()})
        values["out_dir"] = None if out_dir is None else str(out_dir)
        try:
            return TrainConfig.from_dict(values)
        except ConfigError as e:
            raise ConfigError(_recipe_keys(str(e))) from None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<directory>/recipe.yaml``: the resolved recipe, which ``--recipe <that file>`` re-runs."""
        return save_config(self.to_dict(), directory, name=RECIPE_NAME)


def _recipe_keys(message: str) -> str:
    """TrainConfig's messages say ``TrainConfig.lr``; a recipe user knows that key as ``optim.lr``."""
    sections = {**{n: f"optim.{n}" for n in OPTIM_FIELDS}, **{v: f"eval.{k}" for k, v in EVAL_FIELDS.items()}}
    return re.sub(r"TrainConfig\.(\w+)", lambda m: sections.get(m.group(1), f"train.{m.group(1)}"), message)


def load_recipe(schema: RecipeSchema, recipe: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Recipe:
    """Resolve schema defaults <- the recipe (bundled name or file path) <- ``key=value`` overrides, in that order.

    Args:
        schema: the package's :class:`RecipeSchema`.
        recipe: a bundled recipe name, a ``.yaml`` path, or ``None`` for ``schema.default_recipe`` (none: defaults).
        overrides: ``section.key=value`` strings; values are YAML (``optim.lr=1e-3``, ``data.sizes=[8, 16]``);
            any key under ``model.kwargs`` is accepted (the factory checks them when the model is built).

    Raises:
        ConfigError: naming the recipe file or the override and the key at fault.
    """
    name = recipe if recipe is not None else schema.default_recipe
    config = Recipe.build(schema, {}).to_dict()
    source = None
    if name is not None:
        path = recipe_path(schema.package, name)
        source = str(path)
        _merge(config, load_config(path))
        try:
            Recipe.build(schema, config)
        except ConfigError as e:
            raise ConfigError(f"recipe {path}: {e}") from None
    overrides = list(overrides)
    for item in overrides:
        [(keys, value)] = parse_overrides([item])
        node = config
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: config key {'.'.join(keys[: depth + 1])!r} is a value")
        node[keys[-1]] = value
    try:  # checked once all overrides are in: checks across keys (a < b) see the final values, not a half-way state
        return Recipe.build(schema, config, source)
    except ConfigError as e:
        culprit = _culprit(str(e), overrides)
        raise ConfigError(f"override {culprit!r}: {e}" if culprit else str(e)) from None


def _culprit(message: str, overrides: list[str]) -> str | None:
    """The last override whose key (or section, for an unknown one) the error message names."""
    for item in reversed(overrides):
        key = item.partition("=")[0]
        if key in message or f"'{key.split('.')[0]}'" in message:
            return item
    return None


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Merge ``update`` into ``base`` in place: sections merge key by key, everything else is replaced."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


# ------------------------------------------------------------------------------------------------------ model
def build_model(name: str, kwargs: Mapping[str, Any] | None = None, where: str = "model") -> nn.Module:
    """``create_model(name, **kwargs)`` with the user's mistakes as one-line :class:`ConfigError`.

    An unknown name lists close matches; arguments the factory refuses (a wrong type or value) name the model and
    the argument; a model larger than this machine's memory is refused when its first allocation fails (at once:
    the allocator refuses a request beyond the machine's memory before anything is written).
    """
    from .registry import create_model, get_model_entry

    kwargs = dict(kwargs or {})
    if not name:
        raise ConfigError(f"{where}.name is not set: give a registered model name (`bramley list` shows them)")
    try:
        get_model_entry(name)
    except KeyError as e:
        raise ConfigError(f"{where}: {e.args[0]}") from None
    try:
        return create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {name}({_kwargs_text(kwargs)}) failed: {e}") from None
    except (MemoryError, RuntimeError) as e:  # an allocation larger than the machine fails at once, before any use
        if not isinstance(e, MemoryError) and "allocate" not in str(e):
            raise
        detail = str(e).splitlines()[0] if str(e) else "out of memory"
        raise ConfigError(f"{where}: {name}({_kwargs_text(kwargs)}) does not fit in memory ({detail})") from None


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())[:200]
