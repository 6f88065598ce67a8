"""Model registry: every method package registers its variants here.

``create_model(name, **kwargs)`` builds a registered model and records how it was built (``model.model_config``)
so that :func:`bramley.core.checkpoint.save_pretrained` can rebuild it later. Every entry also knows how to make
small example inputs for itself (:meth:`ModelEntry.make_example_inputs`), which the shared model suite in ``tests/``
uses to check every registered model. Registration under timm is opt-in (:func:`register_timm`): timm already owns
names such as ``mobileone_s0``, so ours are prefixed ``bramley_``. An image model may declare timm's data and head
config (``register_model(pretrained_cfg=...)``): it becomes ``model.pretrained_cfg`` (what
``timm.data.resolve_model_data_config`` reads) and the model's cfg in timm's registry.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
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

#: ImageNet's per-channel normalization, the ``mean`` / ``std`` of most image models' ``pretrained_cfg``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``(args, kwargs)`` for one forward call: ``model(*args, **kwargs)``.
ExampleInputs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model variant.

    ``example_inputs`` is the factory's custom input maker (``None`` for image models, which get
    ``(2, *input_size)`` random images); use :meth:`make_example_inputs` rather than calling it directly.
    ``pretrained_cfg`` is timm's data and head config of an image model (``input_size`` included), ``None`` when
    the package declares none.
    """

    name: str
    fn: Callable[..., nn.Module]
    package: str
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    example_inputs: Callable[[], ExampleInputs] | None = None
    input_size: tuple[int, int, int] | None = DEFAULT_INPUT_SIZE
    pretrained_cfg: Mapping[str, Any] | None = None

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


#: Where timm's cfgs name weights: bramley publishes none (a user gives a local file when creating the model).
_WEIGHT_SOURCES = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")


def _check_pretrained_cfg(model_name: str, cfg: Any, image_model: bool) -> dict[str, Any]:
    where = f"register_model({model_name!r}): pretrained_cfg"
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{where} must be a mapping of timm PretrainedCfg fields, got {type(cfg).__name__}")
    if not image_model:
        raise ValueError(f"{where} describes image inputs; a model with custom example_inputs cannot have one")
    misplaced = sorted(set(cfg) & {"input_size", "architecture", "tag", *_WEIGHT_SOURCES})
    if misplaced:
        raise ValueError(
            f"{where} must not set {misplaced}: input_size is register_model's own argument, the name and tag are "
            "timm's, and bramley publishes no weights (users pass a local file when they create the model)"
        )
    return dict(cfg)


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    name: str | None = None,
    description: str = "",
    tags=(),
    example_inputs: Callable[[], ExampleInputs] | None = None,
    input_size: int | tuple[int, int, int] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
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

    An image model declares how its inputs are prepared and where its first conv and classifier are with
    ``pretrained_cfg``, the fields of timm's ``PretrainedCfg`` (as in timm's ``default_cfgs``), for instance::

        @register_model(input_size=256, pretrained_cfg=dict(
            pool_size=(8, 8), crop_pct=0.9, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
            num_classes=1000, first_conv="stem.0.conv", classifier="head.fc", license="apache-2.0",
            paper_ids="arXiv:2303.14189"))
        def fastvit_t8(**kwargs) -> FastVit: ...

    ``input_size`` comes from the argument of that name; weight locations (``url``, ``file``, ``hf_hub_id``, ...)
    are refused (bramley publishes no weights: a user loads a local file, see :func:`register_timm`). The cfg is set
    as ``model.pretrained_cfg`` (and timm's older alias ``default_cfg``) on every model :func:`create_model` builds,
    so ``timm.data.resolve_model_data_config(model)`` returns the model's own preprocessing, and it is the model's
    cfg in timm's registry after :func:`register_timm`. The shared suite ``tests/test_timm_contract.py`` checks it
    against the model (``first_conv`` and ``classifier`` name real modules, ``pool_size`` is the feature map at
    ``input_size``); unknown keys fail there, when timm reads the cfg.

    Args:
        fn: the factory (when used bare).
        name: registry name; defaults to the factory's ``__name__``.
        description: one line; defaults to the first line of the factory's docstring.
        tags: free-form labels (``"image-classification"``, the family name, ...).
        example_inputs: custom example inputs (see above); give either this or ``input_size``, not both.
        input_size: native input size of an image model (see above).
        pretrained_cfg: timm's data and head config of an image model (see above).
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
        cfg = None
        if pretrained_cfg is not None:
            cfg = {**_check_pretrained_cfg(model_name, pretrained_cfg, size is not None), "input_size": size}
        doc = description or (f.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[model_name] = ModelEntry(
            model_name,
            f,
            _package_of(f.__module__),
            doc,
            tuple(tags),
            example_inputs=example_inputs,
            input_size=size,
            pretrained_cfg=types.MappingProxyType(cfg) if cfg is not None else None,
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

    The returned module carries ``model_config = {"name": name, "kwargs": kwargs}``, the recipe to rebuild it, and,
    when the model declares one, ``pretrained_cfg`` / ``default_cfg`` (timm's data and head config).
    """
    entry = get_model_entry(name)
    model = entry.fn(**kwargs)
    model.model_config = {"name": name, "kwargs": dict(kwargs)}
    if entry.pretrained_cfg is not None:
        model.pretrained_cfg = model.default_cfg = {**entry.pretrained_cfg, "architecture": name}
    return model


_TIMM_MODULE = "bramley.core.timm_models"


def register_timm(names: list[str] | None = None, package: str | None = None) -> list[str]:
    """Register bramley image models with timm as ``bramley_<name>``, so timm's API and tools take them.

    Needs timm, the ``vision`` extra of bramley-core. Each model's ``pretrained_cfg`` (see :func:`register_model`)
    becomes its cfg in timm's registry (untagged, without weights), so ``timm.list_models(name_matches_cfg=True)``,
    ``timm.data.resolve_data_config`` / ``resolve_model_data_config`` and ``create_transform`` see bramley's
    preprocessing. ``timm.create_model("bramley_<name>", ...)`` then:

    - passes model arguments to the bramley factory (``num_classes=0`` pooled features, ``global_pool=""`` with
      it unpooled ones) and sets ``model.pretrained_cfg`` / ``default_cfg`` (with any ``pretrained_cfg_overlay``);
      timm's ``device`` / ``dtype`` place every parameter and buffer (built under ``torch.device(device)``, so
      ``device="meta"`` allocates nothing);
    - ``features_only=True`` returns timm's feature wrapper (``out_indices``, ``feature_cls``: ``FeatureListNet``
      by default, ``"getter"``, ``"hook"``, ``"dict"``, ``"fx"``; see :func:`bramley.core.features.features_only`);
    - ``pretrained=True`` loads local weights named the timm way, ``pretrained_cfg_overlay=dict(file=PATH)``: a
      bramley ``model.safetensors`` (or any ``.safetensors`` bramley wrote), a ``save_pretrained`` folder or a
      training run folder, through :func:`bramley.core.checkpoint.load_model` (safetensors only, checked strictly,
      fused checkpoints rebuild fused). A ``num_classes`` / ``global_pool`` other than the checkpoint's gives a new
      classifier, as timm does for fine-tuning. Without a file it is refused: bramley publishes no weights. (A plain
      state dict loads with timm's ``checkpoint_path=PATH``.)

    Args:
        names: models to register (image models only); default the image models of ``package`` (or of every
            installed package).
        package: restrict the default selection to one method package.

    Returns:
        The timm names registered (calling again is harmless; a name timm already has from elsewhere is an error).
    """
    from ._optional import optional_import

    with optional_import("vision", "bramley.core.registry.register_timm"):
        from timm.models import generate_default_cfgs, is_model, model_entrypoint
        from timm.models import register_model as timm_register

    if names is None:
        selected = [n for n in list_models(package=package) if get_model_entry(n).input_size is not None]
    else:
        selected = list(names)
    registered = []
    for model_name in selected:
        entry = get_model_entry(model_name)  # fail early on unknown names
        timm_name = TIMM_PREFIX + model_name
        if entry.input_size is None:
            raise ValueError(f"{model_name} is not an image model (it has custom example_inputs): timm takes images")
        if is_model(timm_name):
            owner = model_entrypoint(timm_name).__module__
            if not owner.startswith(_TIMM_MODULE + "."):
                raise ValueError(f"timm already has a model {timm_name!r} (from {owner}); not overwriting it")
            registered.append(timm_name)  # registered by an earlier call: nothing to do
            continue
        # timm groups models by the last part of the module name: bramley_<package> keeps ours apart from its own
        # `mobileone` / `fastvit` modules in timm.list_models(module=...); timm reads cfgs from its default_cfgs
        module_name = f"{_TIMM_MODULE}.bramley_{entry.package}"
        module = sys.modules.setdefault(module_name, types.ModuleType(module_name))
        if not hasattr(module, "default_cfgs"):
            module.default_cfgs = {}
        cfg = dict(entry.pretrained_cfg or {"input_size": entry.input_size})
        try:
            module.default_cfgs.update(generate_default_cfgs({timm_name: cfg}))
        except TypeError as e:  # a field PretrainedCfg does not have
            raise ValueError(f"register_model({model_name!r}): pretrained_cfg is not a timm PretrainedCfg: {e}") from e
        entrypoint = _timm_entrypoint(model_name, timm_name)
        entrypoint.__module__ = module_name
        timm_register(entrypoint)
        registered.append(timm_name)
    return registered


def _timm_entrypoint(model_name: str, timm_name: str) -> Callable[..., nn.Module]:
    """The function timm's ``create_model`` calls for ``timm_name`` (see :func:`register_timm`)."""

    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: str | Mapping[str, Any] | None = None,
        pretrained_cfg_overlay: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,  # timm passes it; nothing is downloaded
        features_only: bool = False,
        out_indices: int | tuple[int, ...] | None = None,
        feature_cls: str | type | None = None,
        feature_cfg: Mapping[str, Any] | None = None,
        output_stride: int | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        from timm.models import resolve_pretrained_cfg

        from .features import features_only as feature_wrapper

        if isinstance(pretrained_cfg, str):  # a tag: "bramley_fastvit_t8.<tag>"
            raise ValueError(f"{timm_name} has no pretrained tags (bramley publishes no weights): {pretrained_cfg!r}")
        if output_stride is not None:
            raise ValueError(f"{timm_name}: output_stride is not supported (the stage strides are fixed)")
        cfg = resolve_pretrained_cfg(timm_name, pretrained_cfg, pretrained_cfg_overlay).to_dict()
        # timm's factory arguments for where the weights live (timm's own models take them in __init__)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if pretrained:
            model = _load_timm_file(model_name, timm_name, cfg.get("file"), kwargs)
        else:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                model = create_model(model_name, **kwargs)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        model.pretrained_cfg = model.default_cfg = cfg
        if not features_only:
            return model
        feature_kwargs = dict(feature_cfg or {})
        out_indices = feature_kwargs.pop("out_indices", None) if out_indices is None else out_indices
        feature_cls = feature_kwargs.pop("feature_cls", None) if feature_cls is None else feature_cls
        return feature_wrapper(model, out_indices, feature_cls, **feature_kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name
    return entrypoint


def _load_timm_file(model_name: str, timm_name: str, file: Any, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(timm_name, pretrained=True)``: the bramley checkpoint at ``file``, in train mode."""
    from .checkpoint import CheckpointError, load_model

    if not file:
        raise ValueError(
            f"{timm_name}: bramley ships no pretrained weights; load a local bramley checkpoint with "
            "timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file='model.safetensors' or a "
            "save_pretrained / run folder)), or a plain state dict with checkpoint_path=..."
        )
    if not Path(file).exists():
        raise CheckpointError(f"{file} does not exist")
    head = {k: kwargs.pop(k) for k in ("num_classes", "global_pool") if k in kwargs}
    model = load_model(file, **kwargs)
    saved = model.model_config["name"]
    if saved != model_name:
        raise CheckpointError(f"{file} holds a {saved} model, not {model_name} ({timm_name})")
    if head and {k: getattr(model, k) for k in head} != head:  # a new head, as timm gives for fine-tuning
        model.reset_classifier(head.get("num_classes", model.num_classes), head.get("global_pool"))
    return model.train()
