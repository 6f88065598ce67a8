"""Model registry: every method package registers its variants here.

``create_model(name, **kwargs)`` builds a registered model and records how it was built (``model.model_config``)
so that :func:`bramley.core.checkpoint.save_pretrained` can rebuild it later. Registration under timm is opt-in
(:func:`register_timm`): timm already owns names such as ``mobileone_s0``, so ours are prefixed ``bramley_``.
"""

from __future__ import annotations

import fnmatch
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model", "register_timm"]

TIMM_PREFIX = "bramley_"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model variant."""

    name: str
    fn: Callable[..., nn.Module]
    package: str
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelEntry] = {}


def _package_of(module_name: str) -> str:
    parts = module_name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bramley" else parts[0]


def _origin(fn: Callable) -> tuple[str, str]:
    return fn.__module__, fn.__qualname__


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, description: str = "", tags=()
):
    """Register a model factory (usable bare, ``@register_model``, or with arguments).

    The factory's name is the model name unless ``name`` is given. Registering a name twice from different
    functions is an error: two packages must never silently shadow each other.
    """

    def decorator(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        model_name = name or f.__name__
        existing = _REGISTRY.get(model_name)
        # re-registering one function (a reloaded module) is fine; another function under the same name is not
        if existing is not None and _origin(existing.fn) != _origin(f):
            raise ValueError(
                f"model name {model_name!r} is already registered by package {existing.package!r} "
                f"({existing.fn.__module__}.{existing.fn.__qualname__})"
            )
        doc = description or (f.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[model_name] = ModelEntry(model_name, f, _package_of(f.__module__), doc, tuple(tags))
        return f

    return decorator(fn) if fn is not None else decorator


def list_models(pattern: str = "*", package: str | None = None) -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern``, optionally of one package.

    ``package`` is the method's name as installed (``dataset-decomposition``) or imported (``dataset_decomposition``).
    """
    package = package.replace("-", "_") if package is not None else None
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (package is None or e.package == package)
    )


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; a clear error with close matches when it is unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        known = "none registered (is the method package installed and imported?)" if not _REGISTRY else ""
        raise KeyError(f"unknown model {name!r}.{hint} {known}".rstrip()) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` passed to its factory.

    The returned module carries ``model_config = {"name": name, "kwargs": kwargs}``, the recipe to rebuild it.
    """
    entry = get_model_entry(name)
    model = entry.fn(**kwargs)
    model.model_config = {"name": name, "kwargs": dict(kwargs)}
    return model


_TIMM_DROPPED = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
_TIMM_MODULE = "bramley.core.timm_models"


def register_timm(names: list[str] | None = None, package: str | None = None) -> list[str]:
    """Register bramley models with timm as ``bramley_<name>`` so ``timm.create_model`` finds them.

    Args:
        names: models to register; default all models of ``package`` (or every registered model).
        package: restrict the default selection to one method package.

    Returns:
        The timm names registered. ``features_only=True`` is supported for models that implement
        ``forward_intermediates`` and ``feature_info`` (see :class:`bramley.core.features.FeatureExtractor`).
    """
    from timm.models import is_model, model_entrypoint
    from timm.models import register_model as timm_register

    from .features import FeatureExtractor

    selected = names if names is not None else list_models(package=package)
    registered = []
    for model_name in selected:
        entry = get_model_entry(model_name)  # fail early on unknown names
        timm_name = TIMM_PREFIX + model_name
        if is_model(timm_name):
            owner = model_entrypoint(timm_name).__module__
            if not owner.startswith(_TIMM_MODULE + "."):
                raise ValueError(f"timm already has a model {timm_name!r} (from {owner}); not overwriting it")
            registered.append(timm_name)  # registered by an earlier call: nothing to do
            continue
        # timm groups models by the last part of the module name: bramley_<package> keeps ours apart from its own
        # `mobileone` / `fastvit` modules in timm.list_models(module=...)
        module_name = f"{_TIMM_MODULE}.bramley_{entry.package}"
        if module_name not in sys.modules:
            sys.modules[module_name] = types.ModuleType(module_name)

        def entrypoint(pretrained: bool = False, _name: str = model_name, **kwargs: Any) -> nn.Module:
            if pretrained:
                raise ValueError(
                    f"{TIMM_PREFIX}{_name}: bramley ships no pretrained weights; build the model and load a local "
                    "checkpoint with bramley.core.checkpoint.load_checkpoint (or `convert` an official one)."
                )
            for key in _TIMM_DROPPED:
                kwargs.pop(key, None)
            features_only = kwargs.pop("features_only", False)
            out_indices = kwargs.pop("out_indices", None)
            feature_kwargs = {k: kwargs.pop(k) for k in ("feature_cfg", "output_stride") if k in kwargs}
            if feature_kwargs:
                raise ValueError(f"{TIMM_PREFIX}{_name}: unsupported feature options {sorted(feature_kwargs)}")
            model = create_model(_name, **kwargs)
            return FeatureExtractor(model, out_indices) if features_only else model

        entrypoint.__name__ = entrypoint.__qualname__ = timm_name
        entrypoint.__module__ = module_name
        timm_register(entrypoint)
        registered.append(timm_name)
    return registered
