"""FCT's networks: embedding backbones (old / new models), the side-information model, the forward transformation.

Every backbone returns class logits from ``forward`` and its retrieval embedding from ``embed``. The embedding head
ends in BatchNorm + ReLU like the official ResNets (``last_nonlin: True``); the classifier is a bias-free linear layer
(the official 1x1 convolution without bias).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.convert import Converted, strip_prefix
from bramley.core.errors import CheckpointError, ConfigError
from bramley.core.registry import register_model

__all__ = [
    "ConvEmbeddingNet",
    "EmbeddingNet",
    "FCTTransformation",
    "SideInfoModel",
    "TimmEmbeddingNet",
    "TransformedOldModel",
    "convert_official",
]


# ----------------------------------------------------------------------------------------------------------- blocks
class LinearBNAct(nn.Module):
    """Linear -> BatchNorm -> ReLU; the official ``ConvBlock`` (1x1 conv on ``(N, C, 1, 1)``) on ``(N, C)`` tensors."""

    def __init__(self, in_dim: int, out_dim: int, norm: bool = True, act: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=not norm)
        self.norm = nn.BatchNorm1d(out_dim) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class EmbeddingHead(nn.Module):
    """Pooled features -> ``embedding_dim`` (BN + ReLU, i.e. ``last_nonlin``) -> optional bias-free classifier."""

    def __init__(self, in_dim: int, embedding_dim: int, num_classes: int, last_nonlin: bool = True) -> None:
        super().__init__()
        self.embedding = LinearBNAct(in_dim, embedding_dim, act=last_nonlin)
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False) if num_classes > 0 else None


class EmbeddingNet(nn.Module):
    """Shared API of the backbones: ``embed(x) -> (N, embedding_dim)``, ``forward(x) -> logits``."""

    head: EmbeddingHead
    embedding_dim: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pooled trunk features
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding of a batch of images."""
        return self.head.embedding(self.forward_features(x))

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class logits of given embeddings (the classifier BCT reuses)."""
        if self.head.classifier is None:
            raise RuntimeError(f"{type(self).__name__} was built with num_classes=0 and has no classifier")
        return self.head.classifier(embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))


# ----------------------------------------------------------------------------------------------------------- models
class ConvEmbeddingNet(EmbeddingNet):
    """A small VGG-style CNN for tiny images (digits 8x8, CIFAR-like 32x32): conv-BN-ReLU stages, 2x2 max-pool
    between stages, global average pooling, embedding head.

    Args:
        in_chans: image channels.
        widths: channels of each stage; every stage but the last halves the resolution.
        depth: convolutions per stage.
        embedding_dim: size of the retrieval embedding.
        num_classes: classifier outputs; 0 for an encoder without a classifier (side-information trunk).
        last_nonlin: ReLU after the embedding's BatchNorm, as in the official backbones.
    """

    def __init__(
        self,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64),
        depth: int = 1,
        embedding_dim: int = 32,
        num_classes: int = 10,
        last_nonlin: bool = True,
    ) -> None:
        super().__init__()
        if not widths or depth < 1:
            raise ValueError(f"need at least one stage and one conv per stage, got widths={widths}, depth={depth}")
        layers: list[nn.Module] = []
        chans = in_chans
        for i, width in enumerate(widths):
            for _ in range(depth):
                layers += [nn.Conv2d(chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
                chans = width
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.trunk = nn.Sequential(*layers)
        self.in_chans, self.embedding_dim, self.num_classes = in_chans, embedding_dim, num_classes
        self.head = EmbeddingHead(chans, embedding_dim, num_classes, last_nonlin)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
        return self.trunk(x).mean((2, 3))


class TimmEmbeddingNet(EmbeddingNet):
    """A timm trunk (e.g. ``resnet50``, globally pooled) with the FCT embedding head: the full-scale backbones.

    The official ResNet50-128 narrows the last bottleneck block to 128 channels; here the 2048-d pooled ResNet
    features are projected to ``embedding_dim`` by a linear layer + BN + ReLU instead (any timm trunk works).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        embedding_dim: int = 128,
        num_classes: int = 1000,
        in_chans: int = 3,
        last_nonlin: bool = True,
    ) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans)
        self.in_chans, self.embedding_dim, self.num_classes = in_chans, embedding_dim, num_classes
        self.head = EmbeddingHead(self.trunk.num_features, embedding_dim, num_classes, last_nonlin)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class SideInfoModel(nn.Module):
    """The side-information model: an encoder trained without labels on the old data.

    ``forward(x)`` returns the side information (the encoder's ``embed``, ``side_info_dim`` values per image) that is
    stored next to each old gallery embedding. Training uses either SimCLR (``objective="simclr"``: an MLP projection
    head, NT-Xent loss on two augmented views, as the paper) or a denoising autoencoder (``objective="autoencoder"``:
    an MLP decoder reconstructing the input pixels; only for small images).

    Args:
        encoder: a backbone built with ``num_classes=0``.
        objective: ``"simclr"`` or ``"autoencoder"``.
        proj_dim: SimCLR projection size.
        image_shape: ``(C, H, W)`` of the inputs, needed by the autoencoder's decoder.
    """

    def __init__(
        self,
        encoder: EmbeddingNet,
        objective: str = "simclr",
        proj_dim: int = 64,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        dim = encoder.embedding_dim
        self.encoder, self.objective, self.side_info_dim, self.in_chans = encoder, objective, dim, encoder.in_chans
        if objective == "simclr":
            self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, proj_dim))
        elif objective == "autoencoder":
            if image_shape is None or len(image_shape) != 3:
                raise ValueError(f"the autoencoder objective needs image_shape=(C, H, W), got {image_shape}")
            self.image_shape = tuple(int(s) for s in image_shape)
            numel = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
            self.head = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(inplace=True), nn.Linear(4 * dim, numel))
        else:
            raise ValueError(f"unknown side-information objective {objective!r}; choose 'simclr' or 'autoencoder'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(x)

    embed = forward

    def project(self, side_info: torch.Tensor) -> torch.Tensor:
        """SimCLR projection (the loss is taken on these) or autoencoder reconstruction ``(N, C, H, W)``."""
        out = self.head(side_info)
        return out.view(-1, *self.image_shape) if self.objective == "autoencoder" else out


class FCTTransformation(nn.Module):
    """The forward transformation ``h(old_embedding, side_info) -> new-space embedding`` (official architecture).

    The old embedding is projected ``old_dim -> 2*old_dim -> 2*new_dim`` and the side information
    ``side_dim -> 2*side_dim -> 2*new_dim`` (Linear-BN-ReLU blocks); the concatenation is mixed by an MLP
    ``4*new_dim -> inner_dim -> inner_dim -> new_dim`` whose last layer is a plain linear layer. With
    ``side_info_dim=0`` (FCT without side information) the side branch is absent and the mixer sees ``2*new_dim``
    values; the official code instead feeds the old embedding a second time as its "side information".
    """

    def __init__(self, old_dim: int, new_dim: int, side_info_dim: int = 0, inner_dim: int = 2048) -> None:
        super().__init__()
        if min(old_dim, new_dim, inner_dim) < 1 or side_info_dim < 0:
            raise ValueError(
                f"bad transformation sizes: old={old_dim} new={new_dim} side={side_info_dim} inner={inner_dim}"
            )
        self.old_dim, self.new_dim, self.side_info_dim, self.inner_dim = old_dim, new_dim, side_info_dim, inner_dim
        self.old_proj = nn.Sequential(LinearBNAct(old_dim, 2 * old_dim), LinearBNAct(2 * old_dim, 2 * new_dim))
        self.side_proj = (
            nn.Sequential(LinearBNAct(side_info_dim, 2 * side_info_dim), LinearBNAct(2 * side_info_dim, 2 * new_dim))
            if side_info_dim
            else None
        )
        mix_in = 4 * new_dim if side_info_dim else 2 * new_dim
        self.mixer = nn.Sequential(
            LinearBNAct(mix_in, inner_dim),
            LinearBNAct(inner_dim, inner_dim),
            LinearBNAct(inner_dim, new_dim, norm=False, act=False),
        )

    @property
    def uses_side_info(self) -> bool:
        return self.side_proj is not None

    def forward(self, old: torch.Tensor, side_info: torch.Tensor | None = None) -> torch.Tensor:
        if old.ndim != 2 or old.shape[1] != self.old_dim:
            raise ValueError(f"old embeddings must have shape (N, {self.old_dim}), got {tuple(old.shape)}")
        x = self.old_proj(old)
        if self.side_proj is not None:
            if side_info is None:
                raise ValueError(f"this transformation needs side information of dim {self.side_info_dim}")
            if side_info.ndim != 2 or side_info.shape != (old.shape[0], self.side_info_dim):
                raise ValueError(
                    f"side information must have shape ({old.shape[0]}, {self.side_info_dim}), "
                    f"got {tuple(side_info.shape)}"
                )
            x = torch.cat([x, self.side_proj(side_info)], dim=1)
        elif side_info is not None:
            raise ValueError("this transformation was built without side information (side_info_dim=0) but got some")
        return self.mixer(x)


class TransformedOldModel(nn.Module):
    """Images -> transformed old embeddings: ``h(old.embed(x), side(x))`` (what a backfilled gallery holds)."""

    def __init__(self, old_model: EmbeddingNet, transformation: FCTTransformation, side_model: nn.Module | None):
        super().__init__()
        self.old_model, self.transformation, self.side_model = old_model, transformation, side_model

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        side = self.side_model(x) if self.side_model is not None else None
        return self.transformation(self.old_model.embed(x), side)

    forward = embed


# --------------------------------------------------------------------------------------------------------- convert
_OFFICIAL_PREFIXES = {"p1.": "old_proj.", "p2.": "side_proj.", "mixer.": "mixer."}
_OFFICIAL_PARTS = {"conv.": "linear.", "normalizer.": "norm."}
# the official keys that size the transformation
_OFFICIAL_SIZES = ("p1.0.conv.weight", "p2.0.conv.weight", "mixer.0.conv.weight", "mixer.2.conv.weight")


def convert_official(state_dict: Mapping[str, torch.Tensor], model_name: str | None = None) -> Converted:
    """An official ``MLP_BN_SIDE_PROJECTION`` state dict (apple/ml-fct) as an ``fct_transformation``.

    Official keys look like ``p1.0.conv.weight`` (1x1 conv, shape ``(out, in, 1, 1)``) and
    ``mixer.1.normalizer.running_mean``; ours are ``old_proj.0.linear.weight`` ``(out, in)`` and
    ``mixer.1.norm.running_mean``. A ``module.`` prefix (DataParallel) is stripped. The sizes (old, new and
    side-information dims, inner dim) are read from the weights.

    Raises:
        CheckpointError: a key that is not part of the official transformation, a 1x1 conv weight of another shape,
            or a missing key the sizes are read from (each named).
        ConfigError: ``model_name`` is not ``fct_transformation``.
    """
    if model_name not in (None, "fct_transformation"):
        raise ConfigError(
            f"official FCT checkpoints hold the transformation (fct_transformation), not {model_name!r}: "
            "the official backbones are TorchScript archives, which bramley does not read"
        )
    official = strip_prefix(state_dict, "module.")
    missing = [key for key in _OFFICIAL_SIZES if key not in official]
    if missing:
        raise CheckpointError(
            f"not an official MLP_BN_SIDE_PROJECTION state dict: key {missing[0]!r} is missing "
            f"(found {', '.join(sorted(official)[:5]) or 'no keys'}{' ...' if len(official) > 5 else ''})"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        prefix = next((p for p in _OFFICIAL_PREFIXES if key.startswith(p)), None)
        part = next((p for p in _OFFICIAL_PARTS if p in key), None)
        if prefix is None or part is None:
            raise CheckpointError(f"{key!r} is not a key of the official MLP_BN_SIDE_PROJECTION transformation")
        new = _OFFICIAL_PREFIXES[prefix] + key[len(prefix) :].replace(part, _OFFICIAL_PARTS[part], 1)
        if part == "conv." and key.endswith(".weight"):
            if value.ndim != 4 or value.shape[2:] != (1, 1):
                raise CheckpointError(f"{key!r}: expected a 1x1 conv weight, got shape {tuple(value.shape)}")
            value = value[:, :, 0, 0]
        out[new] = value
    kwargs = {
        "old_dim": out["old_proj.0.linear.weight"].shape[1],
        "new_dim": out["mixer.2.linear.weight"].shape[0],
        "side_info_dim": out["side_proj.0.linear.weight"].shape[1],
        "inner_dim": out["mixer.0.linear.weight"].shape[0],
    }
    return Converted("fct_transformation", kwargs, out)


# -------------------------------------------------------------------------------------------------------- factories
@register_model(tags=("fct", "backbone"), input_size=(1, 8, 8))
def fct_convnet(
    in_chans: int = 1,
    widths: Sequence[int] = (32, 64),
    depth: int = 1,
    embedding_dim: int = 32,
    num_classes: int = 10,
    last_nonlin: bool = True,
) -> ConvEmbeddingNet:
    """Small CNN embedding backbone for tiny images (the mini reproduction's old / new models)."""
    return ConvEmbeddingNet(in_chans, tuple(widths), depth, embedding_dim, num_classes, last_nonlin)


@register_model(tags=("fct", "backbone"))
def fct_resnet50(embedding_dim: int = 128, num_classes: int = 1000, in_chans: int = 3) -> TimmEmbeddingNet:
    """ResNet-50 with a 128-d embedding (the paper's CIFAR-100 / ImageNet backbone)."""
    return TimmEmbeddingNet("resnet50", embedding_dim, num_classes, in_chans)


@register_model(tags=("fct", "backbone"))
def fct_resnet18(embedding_dim: int = 128, num_classes: int = 1000, in_chans: int = 3) -> TimmEmbeddingNet:
    """ResNet-18 with an embedding head (a smaller old model)."""
    return TimmEmbeddingNet("resnet18", embedding_dim, num_classes, in_chans)


@register_model(name="fct_side_info", tags=("fct", "side-info"), input_size=(1, 8, 8))
def create_side_info_model(
    backbone: str = "fct_convnet",
    backbone_kwargs: Mapping | None = None,
    objective: str = "simclr",
    proj_dim: int = 64,
    image_shape: Sequence[int] | None = None,
) -> SideInfoModel:
    """Side-information model: a registered backbone (built with ``num_classes=0``) + SimCLR head or decoder."""
    from bramley.core.registry import create_model

    encoder = create_model(backbone, **{**dict(backbone_kwargs or {}), "num_classes": 0})
    return SideInfoModel(encoder, objective, proj_dim, image_shape)


@register_model(
    name="fct_transformation",
    tags=("fct", "transformation"),
    example_inputs=lambda: ((torch.randn(2, 128), torch.randn(2, 128)), {}),  # (old embedding, side info)
)
def create_fct_transformation(
    old_dim: int = 128, new_dim: int = 128, side_info_dim: int = 128, inner_dim: int = 2048
) -> FCTTransformation:
    """FCT forward transformation h(old, side) -> new (official MLP_BN_SIDE_PROJECTION); inputs (old, side)."""
    return FCTTransformation(old_dim, new_dim, side_info_dim, inner_dim)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss: each view's positive is the other view of the same image, negatives all the rest."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, target)
