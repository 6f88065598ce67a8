"""bramley.core.clip_eval: the tokenizer equals open_clip's, zero-shot and retrieval against brute-force loops."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.clip_eval import (
    ClipTokenizer,
    encode_images,
    image_text_retrieval,
    zero_shot_accuracy,
    zero_shot_classifier,
)
from bramley.core.errors import DataError

TEXTS = ["a photo of a cat.", "", "A Red Triangle left of a BLUE circle!", "naïve café, 12 × 3"]


def test_tokenizer_equals_open_clip():
    tokenizer = ClipTokenizer()
    torch.testing.assert_close(tokenizer(TEXTS), open_clip.tokenize(TEXTS), rtol=0, atol=0)
    assert tokenizer.eot_token_id == 49407 == int(tokenizer(TEXTS).max())
    assert tokenizer.vocab_size == 49408


def test_tokenizer_truncates_as_clip_or_refuses():
    long = " ".join(["word"] * 100)
    tokens = ClipTokenizer(context_length=8)([long, "short"])
    torch.testing.assert_close(tokens, open_clip.tokenize([long, "short"], context_length=8), rtol=0, atol=0)
    assert tokens[0, -1] == 49407  # end-of-text kept at the last position
    with pytest.raises(DataError, match="caption 1 has 102 tokens, more than the context length 8"):
        ClipTokenizer(context_length=8, truncate=False)(["ok", long])
    with pytest.raises(DataError, match="caption 0 is int"):
        ClipTokenizer()([3])


class _Toy(nn.Module):
    """encode_text: the mean embedding of the ids; encode_image: a linear map."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(49408, 6)
        self.image = nn.Linear(4, 6)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens).mean(1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image(images)


def test_zero_shot_classifier_is_the_prompt_ensemble():
    torch.manual_seed(0)
    model, tokenizer = _Toy(), ClipTokenizer(context_length=16)
    classes, templates = ["cat", "dog", "red car"], ["a {}.", "a photo of the {}", "{}"]
    head = zero_shot_classifier(model, classes, templates, tokenizer)
    assert head.shape == (6, 3)
    for c, name in enumerate(classes):
        feats = [F.normalize(model.encode_text(tokenizer(t.format(name))), dim=-1)[0] for t in templates]
        torch.testing.assert_close(head[:, c], F.normalize(torch.stack(feats).mean(0), dim=0).detach())
    with pytest.raises(DataError, match="exactly one"):
        zero_shot_classifier(model, classes, ["no slot"], tokenizer)


def test_zero_shot_accuracy_counts_topk():
    classifier = torch.eye(4)  # class c scores feature c
    features = torch.tensor([[0.9, 0.1, 0, 0], [0.1, 0.2, 0.9, 0.0], [0.0, 0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 2])  # hit, second, second
    assert zero_shot_accuracy(features, labels, classifier, topk=(1, 2, 5)) == {
        "top1": pytest.approx(100 / 3),
        "top2": pytest.approx(100.0),
        "top5": pytest.approx(100.0),
    }
    with pytest.raises(DataError, match="labels must lie"):
        zero_shot_accuracy(features, torch.tensor([0, 1, 4]), classifier)
    with pytest.raises(DataError, match="do not fit"):
        zero_shot_accuracy(features, labels, torch.eye(3))


def _loop_recall(sim: torch.Tensor, relevant: list[set[int]], k: int) -> float:
    hits = [bool(set(sim[q].argsort(descending=True, stable=True)[:k].tolist()) & relevant[q]) for q in range(len(sim))]
    return 100.0 * sum(hits) / len(hits)


@pytest.mark.parametrize("groups", [None, [0, 0, 1, 2, 2, 3, 4, 4, 4, 1]])
def test_image_text_retrieval_equals_loops(groups):
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    texts = F.normalize(torch.randn(5 if groups is None else len(groups), 8, generator=g), dim=-1)
    owner = list(range(5)) if groups is None else groups
    result = image_text_retrieval(images, texts, None if groups is None else torch.tensor(groups), ks=(1, 2, 10))
    sim = images @ texts.T
    for k in (1, 2, 10):
        i2t = [{j for j, o in enumerate(owner) if o == i} for i in range(5)]
        assert result[f"image_to_text_R@{k}"] == pytest.approx(_loop_recall(sim, i2t, k))
        assert result[f"text_to_image_R@{k}"] == pytest.approx(_loop_recall(sim.T, [{o} for o in owner], k))
    assert result["image_to_text_R@10"] == 100.0
    with pytest.raises(DataError, match="caption->image"):
        image_text_retrieval(images, texts, torch.tensor([0, 1]))


def test_encode_images_reads_labelled_and_bare_batches():
    model = _Toy()
    batches = [(torch.randn(2, 4), torch.tensor([0, 1])), (torch.randn(3, 4), torch.tensor([2, 2, 1]))]
    features, labels = encode_images(model, batches)
    assert features.shape == (5, 6) and labels.tolist() == [0, 1, 2, 2, 1]
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(5))
    assert encode_images(model, [b[0] for b in batches])[1] is None
    with pytest.raises(DataError, match="empty"):
        encode_images(model, [])
