"""bramley.core.layers.clip: the text tower equals open_clip's on the same random weights, the CLIP wrapper, and the
contrastive losses against float64 loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip.transformer import TextTransformer as OpenClipText

from bramley.core.layers.clip import (
    CLIP,
    TextTransformer,
    clip_loss,
    multi_positive_clip_loss,
    text_from_open_clip,
    text_to_open_clip,
)

TINY = dict(context_length=12, vocab_size=50, width=32, heads=4, layers=2, output_dim=24)


def _tokens(batch: int, seq: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """CLIP-like rows: start token, words, end-of-text (the largest id) at a random position, zero padding."""
    tokens = torch.randint(1, vocab - 2, (batch, seq), generator=generator)
    tokens[:, 0] = vocab - 2
    ends = torch.randint(1, seq, (batch,), generator=generator)
    for row, end in enumerate(ends.tolist()):
        tokens[row, end] = vocab - 1
        tokens[row, end + 1 :] = 0
    return tokens


@pytest.mark.parametrize("causal", [True, False])
def test_text_transformer_equals_open_clip(causal):
    torch.manual_seed(0)
    ref = OpenClipText(**TINY, no_causal_mask=not causal).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)  # biases and LayerNorms off their init too
    ours = TextTransformer(**TINY, causal=causal).eval()
    ours.load_state_dict(text_from_open_clip(ref.state_dict()))  # strict: key for key
    assert text_to_open_clip(ours.state_dict()).keys() == ref.state_dict().keys()
    tokens = _tokens(5, TINY["context_length"], TINY["vocab_size"], torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(tokens), ref(tokens), rtol=0, atol=1e-5)
    if not causal:  # open_clip's causal mask is built for the full context only
        torch.testing.assert_close(ours(tokens[:, :7]), ref(tokens[:, :7]), rtol=0, atol=1e-5)


def test_text_from_open_clip_takes_the_prefix():
    ref = OpenClipText(**TINY)
    prefixed = {f"text.{k}": v for k, v in ref.state_dict().items()} | {"logit_scale": torch.zeros(())}
    converted = text_from_open_clip(prefixed, prefix="text.")
    assert converted.keys() == TextTransformer(**TINY).state_dict().keys()
    assert text_to_open_clip(converted, prefix="text.").keys() == prefixed.keys() - {"logit_scale"}


def test_causal_tower_ignores_what_follows_the_pooled_token():
    model = TextTransformer(**TINY, causal=True).eval()
    tokens = _tokens(3, TINY["context_length"], TINY["vocab_size"], torch.Generator().manual_seed(2))
    changed = tokens.clone()
    end = int(tokens[0].argmax())
    changed[0, end + 1 :] = 7  # after end-of-text: only a bidirectional tower could see it
    torch.testing.assert_close(model(changed)[0], model(tokens)[0], rtol=0, atol=0)


def test_custom_blocks_and_no_projection():
    model = TextTransformer(**{**TINY, "output_dim": None}, block_fn=lambda i: nn.Identity())
    tokens = _tokens(2, 5, TINY["vocab_size"], torch.Generator().manual_seed(3))
    expected = model.ln_final(model.token_embedding(tokens) + model.positional_embedding[:5])
    expected = expected[torch.arange(2), tokens.argmax(-1)]
    torch.testing.assert_close(model(tokens), expected)
    assert model.text_projection is None and model.output_dim == TINY["width"]


def test_text_transformer_traces():
    model = TextTransformer(**TINY).eval()
    tokens = _tokens(2, TINY["context_length"], TINY["vocab_size"], torch.Generator().manual_seed(4))
    other = _tokens(3, TINY["context_length"], TINY["vocab_size"], torch.Generator().manual_seed(5))
    with pytest.warns(torch.jit.TracerWarning):  # core attention's shape reads; the batch size stays free
        traced = torch.jit.trace(model, tokens, check_trace=False)
    torch.testing.assert_close(traced(other), model(other))


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (torch.zeros(2, 13, dtype=torch.long), "13 positions"),
        (torch.zeros(2, 0, dtype=torch.long), "0 positions"),
        (torch.full((2, 4), 50), r"\[0, 50\)"),
        (torch.zeros(2, 4), "integer"),
        (torch.zeros(4, dtype=torch.long), "integer"),
    ],
)
def test_text_transformer_bad_tokens(tokens, match):
    with pytest.raises(ValueError, match=match):
        TextTransformer(**TINY)(tokens)


def test_clip_wrapper():
    visual = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, TINY["output_dim"]))
    model = CLIP(visual, TextTransformer(**TINY)).eval()
    images = torch.randn(3, 3, 4, 4)
    tokens = _tokens(3, 6, TINY["vocab_size"], torch.Generator().manual_seed(6))
    image_features, text_features, scale = model(images, tokens)
    torch.testing.assert_close(image_features, F.normalize(visual(images), dim=-1))
    torch.testing.assert_close(text_features, F.normalize(model.text(tokens), dim=-1))
    torch.testing.assert_close(model.encode_image(images), visual(images))
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-6)
    assert {"visual.1.weight", "text.token_embedding.weight", "logit_scale"} <= model.state_dict().keys()


# ----------------------------------------------------------------------------------------------------------- losses
def _loop_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: float, groups: list[int]) -> float:
    """Both directions per query in float64: text->image one positive, image->text uniform over the positives."""
    image, text = image.double(), text.double()
    t2i = 0.0
    for j in range(len(text)):
        logits = [scale * float(text[j] @ image[i]) for i in range(len(image))]
        t2i += -(logits[groups[j]] - math.log(sum(math.exp(v) for v in logits)))
    i2t = 0.0
    for i in range(len(image)):
        logits = [scale * float(image[i] @ text[j]) for j in range(len(text))]
        log_norm = math.log(sum(math.exp(v) for v in logits))
        positives = [j for j in range(len(text)) if groups[j] == i]
        i2t += sum(-(logits[j] - log_norm) for j in positives) / len(positives)
    return (t2i / len(text) + i2t / len(image)) / 2


def _features(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_clip_loss_equals_float64_loop_and_open_clip(n):
    image, text, scale = _features(n, seed=n), _features(n, seed=n + 100), 14.3
    expected = _loop_clip_loss(image, text, scale, list(range(n)))
    assert clip_loss(image, text, scale).item() == pytest.approx(expected, rel=1e-5)
    assert clip_loss(image.double(), text.double(), scale).item() == pytest.approx(expected, rel=1e-12)
    assert clip_loss(image, text, scale).item() == pytest.approx(ClipLoss()(image, text, scale).item(), rel=1e-6)


@pytest.mark.parametrize("groups", [[0, 0, 1, 2, 2, 2], [2, 1, 0], [0, 1, 1, 1, 1, 0, 2]])
def test_multi_positive_clip_loss_equals_float64_loop(groups):
    image, text, scale = _features(3, seed=1).double(), _features(len(groups), seed=2).double(), 9.0
    loss = multi_positive_clip_loss(image, text, torch.tensor(scale), torch.tensor(groups))
    assert loss.item() == pytest.approx(_loop_clip_loss(image, text, scale, groups), rel=1e-12)


def test_multi_positive_with_one_caption_each_is_clip_loss():
    image, text = _features(5, seed=3), _features(5, seed=4)
    torch.testing.assert_close(
        multi_positive_clip_loss(image, text, 10.0, torch.arange(5)), clip_loss(image, text, 10.0)
    )


def test_losses_backpropagate_to_the_scale():
    image, text = _features(4, seed=5), _features(6, seed=6)
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    multi_positive_clip_loss(image, text, scale.exp(), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ([0, 1, 1], "at least one caption"),  # image 2 has none
        ([0, 1, 3], "at least one caption"),
        ([0, -1, 2], "at least one caption"),
        ([0.0, 1.0, 2.0], "integer"),
        ([0, 1], "integer"),
    ],
)
def test_multi_positive_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        multi_positive_clip_loss(_features(3), _features(3), 1.0, torch.tensor(groups))


def test_clip_loss_bad_shapes():
    with pytest.raises(ValueError, match="one caption per image"):
        clip_loss(_features(3), _features(4), 1.0)
    with pytest.raises(ValueError, match="features must be"):
        clip_loss(_features(3, d=8), _features(3, d=4), 1.0)
