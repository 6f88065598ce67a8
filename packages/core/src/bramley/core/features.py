"""timm's model interface for bramley's image models, and timm's ``features_only`` wrappers around them.

- :class:`ClassifierInterface`: the classifier part timm's tools rely on (``num_classes``, ``num_features``,
  ``head_hidden_size``, ``global_pool``, ``get_classifier``, ``reset_classifier``, ``set_grad_checkpointing``).
- :class:`StagedBackbone`: the whole interface for a model laid out ``stem -> stages -> final_conv -> pool ->
  classifier`` (MobileOne, FastViT, MobileCLIP's MCi towers): ``forward_features``, ``forward``,
  ``forward_intermediates``, ``prune_intermediate_layers``, gradient checkpointing that checkpoints, and an input
  check that steps aside under torch.fx / ``torch.jit.trace`` / TorchScript. A subclass sets its modules and calls
  :meth:`ClassifierInterface.init_classifier`; it writes only ``forward_head`` (its pooling and dropout order, so
  outputs stay what its checkpoints expect).
- :func:`features_only`: timm's feature wrappers (``FeatureListNet`` by default, ``FeatureGetterNet`` for
  ``feature_cls="getter"``, ...), which ``timm.create_model(name, features_only=True)`` returns for models
  registered with :func:`bramley.core.registry.register_timm`.

Only :func:`features_only` needs timm (the ``vision`` extra); the interface classes are plain PyTorch. (No
``from __future__ import annotations`` here: torch.fx copies ``forward``'s annotations into the code of its graph
modules, which TorchScript must then read as types, not strings.)
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .layers.checks import check_image_batch, is_traced

__all__ = ["GLOBAL_POOLS", "ClassifierInterface", "StagedBackbone", "feature_take_indices", "features_only"]

#: ``global_pool`` values: average over height and width, or none (``forward`` then returns the unpooled map).
GLOBAL_POOLS = ("avg", "")


def feature_take_indices(
    num_levels: int, indices: int | Sequence[int] | None, name: str = "indices"
) -> tuple[list[int], int]:
    """timm's ``indices`` argument (called ``name`` in errors) as ``(levels to take, deepest level)``.

    ``None`` takes every level, an int ``n`` the last ``n``, a sequence those levels (negative counts from the end).
    """
    if indices is None:
        take = list(range(num_levels))
    elif isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"{name}={indices}: take between 1 and {num_levels} feature levels")
        take = list(range(num_levels - indices, num_levels))
    else:
        if not indices or any(not -num_levels <= i < num_levels for i in indices):
            raise ValueError(
                f"{name} {tuple(indices)} invalid for a model with {num_levels} feature levels (out of range)"
            )
        take = [i % num_levels for i in indices]
    return take, max(take)


class ClassifierInterface(nn.Module):
    """timm's classifier interface for a model whose linear classifier sits at ``classifier_name``.

    A subclass declares ``classifier_name`` (dotted path, e.g. ``"fc"`` or ``"head.fc"``; the registry's
    ``pretrained_cfg["classifier"]`` names the same module), builds its classifier with :meth:`init_classifier` and
    pools with :meth:`pool` in its ``forward_head``.
    """

    classifier_name: str = "head.fc"

    def init_classifier(
        self, num_features: int, num_classes: int, global_pool: str = "avg", bias: bool = True
    ) -> nn.Module:
        """Set the head attributes (and ``grad_checkpointing = False``); return the classifier (``nn.Identity`` for
        ``num_classes=0``).

        Args:
            num_features: channels of ``forward_features``' output, which the classifier sees pooled.
            num_classes: classifier outputs; 0 gives pooled (or, with ``global_pool=""``, unpooled) features.
            global_pool: one of :data:`GLOBAL_POOLS`; ``""`` needs ``num_classes=0``.
            bias: the classifier has a bias (MobileCLIP's image projection does not).
        """
        _check_head(type(self).__name__, num_classes, global_pool)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = num_features
        self.classifier_bias = bias
        self.grad_checkpointing = False
        return nn.Linear(num_features, num_classes, bias=bias) if num_classes > 0 else nn.Identity()

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pooling ``(N, C, H, W) -> (N, C)``, or ``x`` itself when ``global_pool`` is ``""``."""
        return x.mean((2, 3)) if self.global_pool == "avg" else x

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classifier module (``nn.Identity`` when ``num_classes`` is 0)."""
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a new one (fresh weights) for ``num_classes`` outputs, 0 to remove it.

        Args:
            num_classes: new number of outputs.
            global_pool: new pooling (:data:`GLOBAL_POOLS`); ``None`` keeps the current one, except that a classifier
                on a model without pooling brings average pooling back (the classifier is a linear layer on pooled
                features; timm's tests give a model built with ``global_pool=""`` a new classifier this way).
                timm's ``reset_classifier(0, "")`` makes ``forward`` return the unpooled feature map.

        The model's ``model_config`` (its build recipe) follows, so ``save_pretrained`` rebuilds the new head.
        """
        pool = self.global_pool if global_pool is None else global_pool
        if global_pool is None and num_classes > 0 and not pool:
            pool = "avg"
        _check_head(type(self).__name__, num_classes, pool)
        if num_classes > 0:
            ref = next(self.parameters())
            fc = nn.Linear(self.head_hidden_size, num_classes, bias=self.classifier_bias).to(ref.device, ref.dtype)
        else:
            fc = nn.Identity()
        parent, _, attr = self.classifier_name.rpartition(".")
        setattr(self.get_submodule(parent), attr, fc.train(self.training))
        pool_changed = global_pool is not None or pool != self.global_pool
        self.num_classes, self.global_pool = num_classes, pool
        config = getattr(self, "model_config", None)
        if isinstance(config, dict):
            changed = {"num_classes": num_classes, **({"global_pool": pool} if pool_changed else {})}
            self.model_config = {**config, "kwargs": {**config.get("kwargs", {}), **changed}}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them (less memory, more compute)."""
        self.grad_checkpointing = enable


class StagedBackbone(ClassifierInterface):
    """timm's model interface for ``stem -> stages -> final_conv -> pool -> classifier`` image models.

    A subclass sets ``in_chans``, ``stem``, ``stages`` (an ``nn.Sequential``, one entry per feature level),
    ``final_conv`` (``nn.Identity`` when there is none), ``feature_info`` (one ``dict(num_chs, reduction, module)``
    per stage) and its classifier via :meth:`init_classifier`, and implements ``forward_head``. Gradient
    checkpointing recomputes each stage in the backward pass (one checkpoint per stage).
    """

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript compiles both sides of an `and`)
            if not is_traced(x):
                check_image_batch(x, self.in_chans, type(self).__name__)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and ``final_conv``: the unpooled ``(N, num_features, H', W')`` map."""
        self._check_input(x)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:
                x = checkpoint(stage, x, use_reentrant=False)
        else:
            x = self.stages(x)
        return self.final_conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The output of each selected stage, timm's protocol.

        Args:
            x: images ``(N, in_chans, H, W)``.
            indices: stages to return: ``None`` all, an int ``n`` the last ``n``, or a list (negative allowed).
            norm: accepted for timm's callers; these models have no final norm to apply.
            stop_early: skip the stages after the deepest requested one (always so with ``intermediates_only``).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return the feature maps only.

        Returns:
            The feature maps, or ``(forward_features output, feature maps)``; with ``stop_early`` the first item is
            the deepest stage's output when later stages were skipped.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"{type(self).__name__} produces NCHW features only, got output_fmt={output_fmt!r}")
        take, deepest = feature_take_indices(len(self.stages), indices)
        last = deepest if stop_early or intermediates_only else len(self.stages) - 1
        self._check_input(x)
        x = self.stem(x)
        features = []
        for i, stage in enumerate(self.stages[: last + 1]):
            x = checkpoint(stage, x, use_reentrant=False) if self.grad_checkpointing else stage(x)
            if i in take:
                features.append(x)
        if intermediates_only:
            return features
        return (self.final_conv(x) if last == len(self.stages) - 1 else x), features

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what the selected stages do not need (later stages, and ``final_conv`` with the head).

        Returns:
            The selected stage indices, non-negative (what ``forward_intermediates`` takes afterwards).
        """
        take, deepest = feature_take_indices(len(self.stages), indices)
        if prune_head or prune_norm or deepest < len(self.stages) - 1:
            self.final_conv = nn.Identity()  # feeds only the head; features end at the deepest kept stage
            self.num_features = self.head_hidden_size = self.feature_info[deepest]["num_chs"]
            self.reset_classifier(0, "")
        self.stages = self.stages[: deepest + 1]
        return take


def _check_head(owner: str, num_classes: int, global_pool: str) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"{owner}: num_classes must be an int >= 0, got {num_classes!r}")
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"{owner}: global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
    if not global_pool and num_classes:
        raise ValueError(
            f"{owner}: global_pool='' (no pooling) needs num_classes=0: the classifier is a linear layer on pooled "
            "features"
        )


_FEATURE_CLASSES = ("list", "dict", "hook", "getter", "fx")


def features_only(
    model: nn.Module,
    out_indices: int | Sequence[int] | None = None,
    feature_cls: str | type | None = None,
    **feature_cfg: Any,
) -> nn.Module:
    """timm's feature extractor around ``model``, as ``timm.create_model(name, features_only=True)`` builds it.

    Args:
        model: a model with ``feature_info`` (``dict(num_chs, reduction, module)`` per level; ``module`` names the
            module whose output is the feature) and, for ``"getter"``, ``forward_intermediates``.
        out_indices: levels to return: all by default, an int ``n`` the last ``n``, or a sequence (negative allowed).
        feature_cls: ``None`` / ``"list"`` (timm's default ``FeatureListNet``: runs the model's top-level modules
            in order), ``"dict"``, ``"hook"``, ``"getter"`` (``FeatureGetterNet``: calls
            ``forward_intermediates``, after pruning the unused stages and head), ``"fx"`` (torchvision's fx
            feature extraction), or a timm feature class.
        feature_cfg: more arguments of the feature class (``flatten_sequential`` defaults to True for list / dict /
            hook, which matches ``module`` names such as ``stages.0``).

    Returns:
        The wrapper: ``forward`` returns the list of feature maps and ``feature_info`` is timm's ``FeatureInfo``
        (``channels()``, ``reduction()``, ``module_name()``). It carries ``model.pretrained_cfg`` without the head
        entries, as timm's wrappers do.
    """
    from ._optional import optional_import

    with optional_import("vision", "bramley.core.features.features_only"):
        from timm.models import FeatureDictNet, FeatureHookNet, FeatureListNet
        from timm.models._features import FeatureGetterNet

    info = getattr(model, "feature_info", None)
    if not info:
        raise TypeError(f"{type(model).__name__} does not support feature extraction (no feature_info)")
    indices = tuple(feature_take_indices(len(info), out_indices, "out_indices")[0])
    if len(set(indices)) < len(indices):
        raise ValueError(
            f"out_indices {tuple(out_indices)} invalid for a model with {len(info)} feature levels (a level twice)"
        )
    if isinstance(feature_cls, str) or feature_cls is None:
        name = (feature_cls or "list").lower()
        if name not in _FEATURE_CLASSES:
            raise ValueError(f"unknown feature_cls {feature_cls!r}; choose one of {', '.join(_FEATURE_CLASSES)}")
        if name == "fx":
            with optional_import("vision", "features_only(feature_cls='fx')"):
                from timm.models import FeatureGraphNet
        classes = {"list": FeatureListNet, "dict": FeatureDictNet, "hook": FeatureHookNet, "getter": FeatureGetterNet}
        feature_cls = FeatureGraphNet if name == "fx" else classes[name]
    if issubclass(feature_cls, (FeatureDictNet, FeatureHookNet)):  # FeatureListNet is a FeatureDictNet
        feature_cfg.setdefault("flatten_sequential", True)
    if issubclass(feature_cls, FeatureGetterNet) and not hasattr(model, "forward_intermediates"):
        raise TypeError(f"{type(model).__name__} has no forward_intermediates, which feature_cls='getter' calls")
    wrapper = feature_cls(model, out_indices=indices, **feature_cfg)
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None:
        head_keys = ("num_classes", "classifier", "global_pool")
        wrapper.pretrained_cfg = wrapper.default_cfg = {k: v for k, v in cfg.items() if k not in head_keys}
    return wrapper
