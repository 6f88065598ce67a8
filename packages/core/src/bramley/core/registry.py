"""Model registry: every method package registers its variants here.

``create_model(name, **kwargs)`` builds a registered model and records how it was built (``model.model_config``)
so that :func:`bramley.core.checkpoint.save_pretrained` can rebuild it later. Every entry also knows how to make
small example inputs for itself (:meth:`ModelEntry.make_example_inputs`), which the shared model suite in ``tests/``
uses to check every registered model. Registration under timm is opt-in (:func:`register_timm`): timm already owns
names such as ``mobileone_s0``, so ours are prefixed ``bramley_``.
"""

from __future__ import annotations

import fnmatch
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "ExampleInputs",
    "ModelEntry",
    "create_model",
    "get_model_entry",
    "list_models",
    "register_model",
    "register_timm",
]

TIMM_PREFIX = "bramley_"

#: ``(channels, height, width)`` of the default example input: an RGB image classifier at ImageNet resolution.
DEFAULT_INPUT_SIZE = (3, 224, 224)

#: ``(args, kwargs)`` for one forward call: ``model(*args, **kwargs)``.
ExampleInputs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model variant.

    ``example_inputs`` is the factory's custom input maker (``None`` for image models, which get
    ``(2, *input_size)`` random images); use :meth:`make_example_inputs` rather than calling it directly.
    """

    name: str
    fn: Callable[..., nn.Module]
    package: str
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    example_inputs: Callable[[], ExampleInputs] | None = None
    input_size: tuple[int, int, int] | None = DEFAULT_INPUT_SIZE

    def make_example_inputs(self, image_size: int | tuple[int, int] | None = None) -> ExampleInputs:
        """Small CPU inputs for one forward pass: ``model(*args, **kwargs)`` with ``(args, kwargs)`` returned.

        Args:
            image_size: for image models only (no custom ``example_inputs``): the ``H`` / ``(H, W)`` to use instead
                of the registered ``input_size``, e.g. a smaller size for fast tests. Channels stay as registered.

        Returns:
            The custom ``example_inputs()`` result (checked to be ``(tuple, dict)``), or
            ``((images,), {})`` with ``images`` a ``(2, C, H, W)`` float32 tensor from ``torch.randn``.
        """
        if self.example_inputs is not None:
            if image_size is not None:
                raise ValueError(f"model {self.name!r} has custom example_inputs; image_size applies to image models")
            out = self.example_inputs()
            if not (
                isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], tuple) and isinstance(out[1], dict)
            ):
                raise TypeError(
                    f"example_inputs of model {self.name!r} must return (args: tuple, kwargs: dict), "
                    f"got {type(out).__name__}"
                )
            return out
        channels, height, width = self.input_size or DEFAULT_INPUT_SIZE
        if image_size is not None:
            height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        return (torch.randn(2, channels, height, width),), {}


_REGISTRY: dict[str, ModelEntry] = {}


def _package_of(module_name: str) -> str:
    parts = module_name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bramley" else parts[0]


def _origin(fn: Callable) -> tuple[str, str]:
    return fn.__module__, fn.__qualname__


def _check_input_size(model_name: str, input_size: Any) -> tuple[int, int, int]:
    size = (DEFAULT_INPUT_SIZE[0], input_size, input_size) if isinstance(input_size, int) else input_size
    if not (
        isinstance(size, tuple | list)
        and len(size) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(
            f"register_model({model_name!r}): input_size must be a positive int S (meaning (3, S, S)) or a "
            f"(channels, height, width) tuple of positive ints, got {input_size!r}"
        )
    return tuple(size)


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    name: str | None = None,
    description: str = "",
    tags=(),
    example_inputs: Callable[[], ExampleInputs] | None = None,
    input_size: int | tuple[int, int, int] | None = None,
):
    """Register a model factory (usable bare, ``@register_model``, or with arguments).

    The factory's name is the model name unless ``name`` is given. Registering a name twice from different
    functions is an error: two packages must never silently shadow each other.

    Example inputs (the contract the shared model suite ``tests/test_model_suite.py`` relies on):

    - Image models (the default) take one float tensor ``(N, C, H, W)``. ``input_size`` is the model's native
      ``(C, H, W)`` (an int ``S`` means ``(3, S, S)``; default ``(3, 224, 224)``). The suite may run them at a
      smaller ``H, W`` (see :meth:`ModelEntry.make_example_inputs`).
    - Any other model passes ``example_inputs``: a zero-argument callable returning ``(args, kwargs)`` such that
      ``model(*args, **kwargs)`` runs a forward pass. Rules: small CPU tensors (batch 2 or a few short sequences;
      at least 2 samples so BatchNorm works in train mode); they must fit the model built with the factory's
      default arguments and with any arguments that leave input shapes alone (e.g. ``num_classes``); random values
      come from ``torch``'s global generator (the suite seeds it), so a call is reproducible; tensors may be any
      dtype (token ids as int64, packed ``cu_seqlens`` as int32, ...) and non-tensor values are allowed in
      ``kwargs`` (``max_seqlen=7``). Every call returns fresh tensors (the suite may modify them). For example::

          def _packed_bytes() -> tuple[tuple, dict]:
              tokens = torch.randint(0, 256, (11,))
              return (tokens,), {"cu_seqlens": torch.tensor([0, 4, 11], dtype=torch.int32), "max_seqlen": 7}

          @register_model(example_inputs=_packed_bytes)
          def byteformer_tiny(**kwargs) -> ByteFormer: ...

    - The forward's output may be a tensor or a (nested) tuple / list / dict of tensors; the suite checks every
      floating-point tensor in it (finite values, gradients, save/load equality).
    - Register on import of the method package (its ``__init__`` imports the module holding the factories): the
      suite finds models by importing every package of the ``bramley.cli`` entry-point group.

    Args:
        fn: the factory (when used bare).
        name: registry name; defaults to the factory's ``__name__``.
        description: one line; defaults to the first line of the factory's docstring.
        tags: free-form labels (``"image-classification"``, the family name, ...).
        example_inputs: custom example inputs (see above); give either this or ``input_size``, not both.
        input_size: native input size of an image model (see above).
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
        if example_inputs is not None and not callable(example_inputs):
            raise TypeError(
                f"register_model({model_name!r}): example_inputs must be a zero-argument callable returning "
                f"(args, kwargs), got {type(example_inputs).__name__}"
            )
        if example_inputs is not None and input_size is not None:
            raise ValueError(
                f"register_model({model_name!r}): give example_inputs or input_size, not both "
                "(input_size describes the default image input only)"
            )
        size = (
            None
            if example_inputs is not None
            else _check_input_size(model_name, DEFAULT_INPUT_SIZE if input_size is None else input_size)
        )
        doc = description or (f.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[model_name] = ModelEntry(
            model_name, f, _package_of(f.__module__), doc, tuple(tags), example_inputs=example_inputs, input_size=size
        )
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

    Needs timm, the ``vision`` extra of bramley-core.

    Args:
        names: models to register; default all models of ``package`` (or every registered model).
        package: restrict the default selection to one method package.

    Returns:
        The timm names registered. ``features_only=True`` is supported for models that implement
        ``forward_intermediates`` and ``feature_info`` (see :class:`bramley.core.features.FeatureExtractor`).
    """
    from ._optional import optional_import
    from .features import FeatureExtractor

    with optional_import("vision", "bramley.core.registry.register_timm"):
        from timm.models import is_model, model_entrypoint
        from timm.models import register_model as timm_register

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
