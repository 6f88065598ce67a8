"""SHARCS models: width 1 is the unsliced model (timm), the two implementations agree at every width, routed batches
equal each sample alone, the confidence knob, FLOPs and the errors for what cannot be sliced."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from bramley.core.errors import ConfigError
from bramley.core.registry import create_model
from bramley.sharcs import SharcsTimmViT, SharcsViT, load_timm_vit_state_dict

TINY = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=3, num_heads=4)


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random values in every parameter (norms included), so an unused or mixed-up weight shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture
def pair():
    """bramley's ViT and the timm wrapper with the same weights."""
    torch.manual_seed(0)
    wrapper = _randomize(
        SharcsTimmViT("vit_small_patch16_224", num_classes=5, widths=(0.25, 0.5, 1.0), router_hidden=16, **TINY)
    )
    own = SharcsViT(num_classes=5, router_hidden=16, **TINY).eval()
    own.load_state_dict({k.removeprefix("vit."): v for k, v in wrapper.state_dict().items()})
    return own, wrapper


def test_width_one_is_timm_vision_transformer():
    torch.manual_seed(0)
    timm_vit = _randomize(VisionTransformer(num_classes=5, **TINY))
    own = SharcsViT(num_classes=5, router_hidden=16, **TINY).eval()
    load_timm_vit_state_dict(own, timm_vit.state_dict())
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(own(x, width=1.0), timm_vit(x), rtol=1e-5, atol=1e-5)


def test_timm_wrapper_at_width_one_is_its_timm_model():
    model = _randomize(SharcsTimmViT("vit_small_patch16_224", num_classes=5, router_layer=2, **TINY))
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(model(x, width=1.0), model.vit(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_core_sliceable_layers_and_sliced_timm_linears_agree(pair, width):
    own, wrapper = pair
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(own(x, width=width), wrapper(x, width=width), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(own(x, width=width), own(x, width=0.25 if width != 0.25 else 1.0))


def test_sliced_model_is_a_dense_smaller_model():
    """After the router the width-w tail is a plain (timm) ViT tail of width w holding the copied weights."""
    torch.manual_seed(0)
    model = _randomize(SharcsViT(num_classes=5, router_hidden=16, **TINY))
    x = torch.randn(2, 3, 8, 8)
    tokens, _ = model.stem(x)
    for w in model.widths:
        c = model.channels[w]
        h = tokens[..., :c]
        for block in model.blocks[1:]:
            attn = block.attn.extract(block.heads[w])
            mlp = block.mlp.extract(block.hidden[w], c)
            h = h + attn(block.norm1.extract(w)(h))
            h = h + mlp(block.norm2.extract(w)(h))
        head = torch.nn.functional.linear(model.norm.extract(w)(h)[:, 0], model.head.weight[:, :c], model.head.bias)
        torch.testing.assert_close(model.tail(tokens, w), head, rtol=1e-5, atol=1e-5)


class RoundRobin(torch.nn.Module):
    """A router sending sample i to width 2 - i % 3 (its token values still flow through the model)."""

    def forward(self, tokens, mask=None):
        i = torch.arange(tokens.shape[0])
        return torch.nn.functional.one_hot(2 - i % 3, 3).float() * 8.0 - 4.0 + 0.0 * tokens.mean((1, 2)).unsqueeze(1)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_routed_batch_equals_each_sample_alone(pair, threshold):
    own, wrapper = pair
    x = torch.randn(9, 3, 8, 8)
    for model in (own, wrapper):
        model.router = RoundRobin()
        logits, index = model.predict(x, threshold)
        assert index.tolist() == [2, 1, 0] * 3
        for i in range(len(x)):
            alone = model(x[i : i + 1], width=model.widths[index[i]])
            torch.testing.assert_close(logits[i : i + 1], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), logits)


def test_confidence_knob():
    model = SharcsViT(num_classes=5, router_hidden=16, **TINY)
    scores = torch.tensor([[2.0, 0.0, -1.0], [-3.0, 0.5, 0.0], [-3.0, -3.0, -3.0], [0.0, 3.0, 1.0]])
    assert model.choose(scores).tolist() == [0, 1, 0, 1]  # argmax (a tie goes to the first)
    assert model.choose(scores, 0.6).tolist() == [0, 1, 2, 1]  # sigmoid(0.5) = 0.62
    assert model.choose(scores, 0.7).tolist() == [0, 2, 2, 1]
    assert model.choose(scores, 0.9).tolist() == [2, 2, 2, 1]
    with pytest.raises(ConfigError, match="threshold must be in"):
        model.choose(scores, 1.0)


def test_flops_per_width_counts_the_router_and_matches_timm():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    timm_vit = VisionTransformer(num_classes=5, **TINY).eval()
    own = SharcsViT(num_classes=5, router_hidden=16, **TINY).eval()
    x = torch.randn(1, 3, 8, 8)
    flops = own.flops_per_width(x)
    counter = FlopCounterMode(display=False)
    with counter:
        timm_vit(x)
    assert flops["fixed"][-1] == counter.get_total_flops()
    assert flops["router"] == 2 * (32 * 16 + 16 * 3)
    assert flops["routed"] == [f + flops["router"] for f in flops["fixed"]]
    assert flops["fixed"] == sorted(flops["fixed"]) and flops["fixed"][0] < 0.5 * flops["fixed"][-1]


def test_train_mode_forward_runs_every_width():
    model = SharcsViT(num_classes=5, router_hidden=16, **TINY).train()
    out = model(torch.randn(2, 3, 8, 8))
    assert out["logits"].shape == (3, 2, 5) and out["router_logits"].shape == (2, 3)
    logits, router = model(torch.randn(2, 3, 8, 8), index=torch.tensor([0, 2]))
    assert logits.shape == (2, 5) and router.shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"widths": (0.25, 1.5)}, r"widths must be in \(0, 1\]"),
        ({"widths": (0.5, 0.25, 1.0)}, "sorted ascending"),
        ({"widths": (0.5, 0.5, 1.0)}, "must not repeat"),
        ({"widths": (0.3, 1.0)}, "allowed widths: 0.25, 0.5, 0.75, 1"),
        ({"widths": (0.25, 0.5)}, "must include full width 1.0"),
        ({"router_layer": 3}, r"router_layer must be an integer in \[1, 2\]"),
        ({"router_layer": 0}, r"router_layer must be an integer in \[1, 2\]"),
    ],
)
def test_bad_configurations(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SharcsViT(**{**TINY, **kwargs})


def test_timm_modules_that_cannot_be_sliced_are_named():
    with pytest.raises(ConfigError, match=r"vit.blocks.1.attn.q_norm is LayerNorm"):
        SharcsTimmViT("vit_small_patch16_224", qk_norm=True, **TINY)
    with pytest.raises(ConfigError, match="timm cannot build 'resnet18' as a ViT"):
        SharcsTimmViT("resnet18")
    with pytest.raises(ConfigError, match=r"timm cannot build 'no_such_vit' as a ViT"):
        SharcsTimmViT("no_such_vit")
    with pytest.raises(ConfigError, match=r"allowed widths"):
        SharcsTimmViT("vit_small_patch16_224", widths=(0.25, 1.0), img_size=8, patch_size=2, depth=2)


def test_wrong_image_size_is_named():
    model = create_model("sharcs_vit_digits")
    with pytest.raises(ValueError, match=r"expects images \(batch, 3, 8, 8\)"):
        model(torch.randn(1, 3, 16, 16))
