"""Structure-induced attention: edge-label token positions, the mask rules, and the forward against core's text
tower (SIA without edges is each caption encoded alone)."""

from pathlib import Path

import pytest
import torch

from bramley.core.clip_eval import ClipTokenizer
from bramley.core.layers.clip import TextTransformer
from bramley.gbc.graph import Bbox, Description, Edge, GbcGraph, Vertex
from bramley.gbc.io import read_graphs
from bramley.gbc.sia import collate_packed, collate_padded, pack_graph, phrase_spans, sia_encode, sia_mask
from bramley.gbc.views import captions

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer(32)


def small_graph() -> GbcGraph:
    """image "a dog and a cat." -> dog ("a brown dog"), cat ("a black cat sleeps")."""
    box = Bbox(0.0, 0.0, 1.0, 1.0)
    image = Vertex("", box, "image", [Description("a dog and a cat.", "short")])
    dog = Vertex("dog", box, "entity", [Description("a brown dog", "detail")])
    cat = Vertex("cat", box, "entity", [Description("a black cat sleeps", "detail")])
    for child in (dog, cat):
        image.out_edges.append(Edge("", child.vertex_id, child.vertex_id))
        child.in_edges.append(Edge("", child.vertex_id, child.vertex_id))
    return GbcGraph([image, dog, cat])


def test_phrase_token_positions(tokenizer):
    # "a</w> dog</w> and</w> a</w> cat</w> .</w>"
    assert phrase_spans(tokenizer, "a dog and a cat.", "cat") == [(4, 5)]
    assert phrase_spans(tokenizer, "a dog and a cat.", "a") == [(0, 1), (3, 4)]
    assert phrase_spans(tokenizer, "Tree 2 is left, tree 1 right", "tree 1") == [(5, 7)]
    assert phrase_spans(tokenizer, "two trees", "tree") == []  # inside a word: no span
    assert phrase_spans(tokenizer, "pots and pans hang", "pots and pans") == [(0, 3)]


def test_packing_and_edge_positions(tokenizer):
    packed = pack_graph(small_graph(), tokenizer, context_length=32)
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    # captions in BFS order, each [sot, bpe..., eot], positions restarting per caption
    assert packed.caption_vertex == ["", "dog", "cat"]
    assert packed.caption_offsets.tolist() == [0, 8, 13, 19]
    assert packed.tokens[[0, 7, 8, 12, 13, 18]].tolist() == [sot, eot, sot, eot, sot, eot]
    assert packed.positions[8:13].tolist() == [0, 1, 2, 3, 4]
    # "dog" is token 2 of the image caption, "cat" token 5 (after the start token); children are captions 1 and 2
    assert packed.links == [(2, 3, 1, 2), (5, 6, 2, 3)]
    assert packed.eot_index.tolist() == [7, 12, 18]


def test_fixture_phrases_are_the_edge_texts(tokenizer):
    graph = next(iter(read_graphs(DATA / "sample_graphs.jsonl")))
    packed = pack_graph(graph, tokenizer, context_length=77)
    decoded = {tokenizer._bpe.decode(packed.tokens[s:t].tolist()).strip() for s, t, _, _ in packed.links}
    assert decoded == {"dog", "cups", "table", "lamp", "cup 1", "cup 2"}
    assert packed.missing_phrases == 0
    truncated = pack_graph(graph, tokenizer, context_length=8)  # the phrases after token 6 are cut off
    assert truncated.missing_phrases > 0 and int(truncated.caption_offsets.diff().max()) == 8


def test_mask_rules(tokenizer):
    packed = pack_graph(small_graph(), tokenizer, context_length=32)
    mask = sia_mask(packed)
    image, dog, cat = slice(0, 8), slice(8, 13), slice(13, 19)
    assert torch.equal(mask[image, image], torch.ones(8, 8, dtype=torch.bool).tril())  # (a) causal in a caption
    assert mask[dog, 2].all() and not mask[dog, 5].any()  # (b) the dog reads "dog", not "cat"
    assert not mask[dog, 0].any() and not mask[dog, 7].any()  # ... and no other token of its parent
    assert mask[2, dog].all() and not mask[2, cat].any()  # (c) "dog" reads the dog's caption
    assert not mask[dog, cat].any() and not mask[cat, dog].any()  # siblings stay apart
    alone = sia_mask(packed, structure=False)
    assert alone.sum() == sum(n * (n + 1) // 2 for n in (8, 5, 6))
    assert sia_mask(packed, causal=False)[image, image].all()


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return TextTransformer(context_length=32, width=32, heads=4, layers=2, output_dim=16).eval()


def test_sia_without_edges_is_each_caption_alone(tokenizer, tower):
    graphs = list(read_graphs(DATA / "sample_graphs.jsonl"))
    packed = [pack_graph(g, tokenizer, 32) for g in graphs]
    reference = tower(tokenizer([c for g in graphs for c in captions(g)]))
    with torch.no_grad():
        for batch in (collate_packed(packed, budget=256, structure=False), collate_padded(packed, structure=False)):
            torch.testing.assert_close(sia_encode(tower, batch), reference, atol=1e-5, rtol=1e-5)
    assert collate_packed(packed, budget=256).tokens.shape[0] == 1  # three graphs share one row


def test_packed_equals_padded_and_structure_flows(tokenizer, tower):
    graphs = [small_graph(), *read_graphs(DATA / "sample_graphs.jsonl")]
    packed = [pack_graph(g, tokenizer, 32) for g in graphs]
    with torch.no_grad():
        z = sia_encode(tower, collate_packed(packed, budget=200))
        torch.testing.assert_close(z, sia_encode(tower, collate_padded(packed)), atol=1e-5, rtol=1e-5)
        alone = sia_encode(tower, collate_packed(packed, budget=200, structure=False))
    # the small graph: its children read their phrases, so they change; the image caption's end token reads the
    # phrases, which read the children (2 layers), so it changes too
    assert not torch.allclose(z[:3], alone[:3], atol=1e-4)
    # another graph in the same row changes nothing: perturb the small graph's dog caption, compare the others
    other = pack_graph(small_graph(), tokenizer, 32)
    other.tokens[9] = 1000
    with torch.no_grad():
        z2 = sia_encode(tower, collate_packed([other, *packed[1:]], budget=200))
    torch.testing.assert_close(z2[3:], z[3:])
    assert not torch.allclose(z2[1], z[1]) and not torch.allclose(z2[0], z[0])  # the dog and, through "dog", the image
    assert torch.allclose(z2[2], z[2])  # the cat does not see the dog


def test_sia_backward(tokenizer, tower):
    batch = collate_packed([pack_graph(small_graph(), tokenizer, 32)])
    tower = TextTransformer(context_length=32, width=32, heads=4, layers=1, output_dim=16)
    sia_encode(tower, batch).square().sum().backward()
    grads = [p.grad for p in tower.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
