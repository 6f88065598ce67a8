"""DDGPT: dense causal == packed, document masking == documents alone, causality, configs, errors."""

import pytest
import torch

from bramley.core.packing import cu_seqlens_from_lengths
from bramley.core.registry import create_model, get_model_entry, list_models
from bramley.dataset_decomposition.model import DDGPT, openlm_swiglu_hidden


def small(**kw) -> DDGPT:
    torch.manual_seed(0)
    return DDGPT(**{"dim": 32, "depth": 2, "num_heads": 4, "max_seq_len": 64, **kw}).double().eval()


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_dense_equals_packed_one_document_per_row(norm, qk_norm):
    model = small(norm=norm, qk_norm=qk_norm)
    tokens = torch.randint(0, 257, (3, 11))
    dense = model(tokens)
    packed = model(tokens.flatten(), cu_seqlens=cu_seqlens_from_lengths([11, 11, 11]))
    torch.testing.assert_close(packed, dense.flatten(0, 1), rtol=0, atol=1e-12)


def test_document_masked_row_equals_documents_alone():
    model = small()
    lengths = [5, 1, 9, 3]
    row = torch.randint(0, 257, (sum(lengths),))
    packed = model(row, cu_seqlens=cu_seqlens_from_lengths(lengths))
    start = 0
    for n in lengths:
        alone = model(row[start : start + n][None])[0]
        torch.testing.assert_close(packed[start : start + n], alone, rtol=0, atol=1e-12)
        start += n


def test_causal_future_tokens_do_not_change_past_logits():
    model = small()
    tokens = torch.randint(0, 257, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 257
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-12)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


def test_document_mask_blocks_previous_documents():
    model = small()
    row = torch.randint(0, 257, (12,))
    other = row.clone()
    other[:4] = (other[:4] + 3) % 257  # change the first document only
    cu = cu_seqlens_from_lengths([4, 8])
    torch.testing.assert_close(model(row, cu_seqlens=cu)[4:], model(other, cu_seqlens=cu)[4:], rtol=0, atol=1e-12)
    # without the mask the second document sees the first
    assert (model(row[None])[0, 4:] - model(other[None])[0, 4:]).abs().max() > 1e-3


def test_qk_norm_is_openlm_full_width_with_the_block_norm():
    model = small(norm="rmsnorm", qk_norm=True)
    attn = model.blocks[0].attn
    assert attn.qk_norm == "full" and isinstance(attn.q_norm, type(model.blocks[0].norm1))
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (32,)
    with torch.no_grad():
        attn.q_norm.weight.mul_(3.0)  # the norm's gain is on the path: scaling it changes the logits
    tokens = torch.randint(0, 257, (1, 10))
    assert (model(tokens) - small(norm="rmsnorm", qk_norm=True)(tokens)).abs().max() > 1e-4
    assert "blocks.0.attn.q_norm.weight" not in small().state_dict()


def test_rope_base_matters_and_tied_embeddings():
    tokens = torch.randint(0, 257, (1, 20))
    assert (small(rope_base=10000.0)(tokens) - small(rope_base=100000.0)(tokens)).abs().max() > 1e-4
    tied = small(tie_embeddings=True)
    assert tied.head.weight is tied.embed.weight
    assert tied.num_parameters(embedding=False) == tied.num_parameters()


def test_openlm_configs_and_registry():
    assert set(list_models(package="dataset-decomposition")) == {"dd_gpt_tiny", "dd_gpt_410m", "dd_gpt_1b"}
    assert openlm_swiglu_hidden(1024) == 2816 and openlm_swiglu_hidden(2048) == 5632  # OpenLM / lit-llama rule
    with torch.device("meta"):
        m410, m1b = create_model("dd_gpt_410m", vocab_size=50432), create_model("dd_gpt_1b", vocab_size=50432)
    n410, n1b = m410.num_parameters(), m1b.num_parameters()
    assert 0.40e9 < n410 < 0.46e9 and 1.3e9 < n1b < 1.5e9, (n410, n1b)
    assert (m410.depth, m410.dim, m410.num_heads, m410.max_seq_len) == (24, 1024, 16, 8192)
    assert m1b.rope.base == 100000.0 and not m1b.tie_embeddings
    args, kwargs = get_model_entry("dd_gpt_tiny").make_example_inputs()
    out = create_model("dd_gpt_tiny")(*args, **kwargs)
    assert out.shape == (*args[0].shape, 257)


def test_bad_inputs_raise_clear_errors():
    model = small()
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(70, dtype=torch.long), cu_seqlens=cu_seqlens_from_lengths([70]))
    with pytest.raises(ValueError, match="1-D"):
        model(torch.zeros(2, 4, dtype=torch.long), cu_seqlens=cu_seqlens_from_lengths([4, 4]))
    with pytest.raises(ValueError, match="norm"):
        DDGPT(norm="batchnorm")
    with pytest.raises(ValueError, match="even"):
        DDGPT(dim=36, num_heads=4)
    with pytest.raises(ValueError, match="num_heads and max_seq_len must be >= 1"):
        DDGPT(num_heads=0)
