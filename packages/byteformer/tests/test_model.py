"""ByteFormer on packed batches: per-sample exactness, the padded baseline, window mapping, errors, registry."""

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from bramley.byteformer import pack_samples
from bramley.byteformer.model import MASK_TOKEN, ByteFormer, TokenMerging, conv_output_lengths
from bramley.core.checkpoint import load_model, save_pretrained
from bramley.core.packing import window_segments
from bramley.core.registry import create_model, get_model_entry, list_models

K = 8


def small(**kw) -> ByteFormer:
    cfg = dict(
        num_classes=5,
        embed_dim=32,
        depth=4,
        num_heads=2,
        conv_kernel_size=K,
        window_sizes=(4,),
        window_shifts=(0, 2, 0, 2),
        downsample=(True, False, True, False),
        max_num_tokens=64,
    )
    return ByteFormer(**{**cfg, **kw}).eval()


def logits(model, samples):
    tokens, cu = pack_samples(samples)
    with torch.no_grad():
        return model(tokens, cu)


# lengths: exactly k, k + 1, odd/even token counts, several windows with a shifted first window
LENGTHS = [8, 9, 23, 61, 100, 150]


@pytest.fixture
def samples():
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (n,), generator=gen) for n in LENGTHS]


def test_sample_logits_do_not_depend_on_the_batch(samples):
    model = small()
    batch = logits(model, samples)
    alone = torch.cat([logits(model, [s]) for s in samples])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(1)).tolist()
    torch.testing.assert_close(logits(model, [samples[i] for i in order]), batch[order], atol=1e-5, rtol=1e-5)
    extra = [torch.randint(0, 256, (77,)), torch.full((40,), 255)]
    torch.testing.assert_close(logits(model, samples + extra)[: len(samples)], batch, atol=1e-5, rtol=1e-5)


def test_padded_baseline_computes_the_same_function_whatever_the_padding(samples):
    model = small()
    packed = logits(model, samples)
    lengths = torch.tensor(LENGTHS)
    for width, fill in ((max(LENGTHS), MASK_TOKEN), (max(LENGTHS) + 37, 0), (max(LENGTHS) + 5, 255)):
        padded = torch.full((len(samples), width), fill)
        for i, s in enumerate(samples):
            padded[i, : s.numel()] = s
        with torch.no_grad():
            torch.testing.assert_close(model.forward_padded(padded, lengths), packed, atol=1e-5, rtol=1e-5)


def test_gradients_equal_packed_and_alone(samples):
    model = small().train()
    tokens, cu = pack_samples(samples[:3])
    model(tokens, cu)[1].sum().backward()
    batch_grad = model.token_reduction.weight.grad.clone()
    model.zero_grad()
    model(*pack_samples([samples[1]]))[0].sum().backward()
    torch.testing.assert_close(model.token_reduction.weight.grad, batch_grad, atol=1e-5, rtol=1e-4)


def test_token_reduction_is_conv1d_on_each_sample_alone(samples):
    model = small()
    tokens, cu = pack_samples(samples)
    x, out_cu = model.reduce_tokens(tokens, cu)
    for i, s in enumerate(samples):
        ref = model.token_reduction(model.embeddings(s).T.unsqueeze(0))[0].T
        assert ref.shape[0] == (s.numel() - K) // (K // 2) + 1 == int(out_cu[i + 1] - out_cu[i])
        torch.testing.assert_close(x[out_cu[i] : out_cu[i + 1]], ref, atol=1e-5, rtol=1e-5)


def test_shifted_windows_split_each_sample_like_corenets_rolled_windows():
    cu = torch.tensor([0, 10, 13], dtype=torch.int32)
    # window 4, shift 2: corenet rolls by -2 and cuts every 4 -> [2:6], [6:10], and [0:2] (the wrapped part, which
    # its shift mask is meant to keep apart from the tail); per sample, without padding or roll
    assert window_segments(cu, 4, 2).tolist() == [0, 2, 6, 10, 12, 13]
    assert window_segments(cu, 4, 0).tolist() == [0, 4, 8, 10, 13]


def test_token_merging_pairs_within_samples_and_zero_pads_odd_tails():
    merge = TokenMerging(4)
    x = torch.randn(7, 4)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out, out_cu = merge(x, cu)
    assert out_cu.tolist() == [0, 2, 4]
    pairs = torch.stack([torch.cat([x[0], x[1]]), torch.cat([x[2], torch.zeros(4)]), torch.cat([x[3], x[4]])])
    torch.testing.assert_close(out[:3], merge.norm(merge.reduction(pairs)))


def test_conv_output_lengths():
    assert conv_output_lengths(torch.tensor([7, 8, 9, 11, 12, 32]), 8).tolist() == [0, 1, 1, 1, 2, 7]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: (torch.zeros(0, dtype=torch.long), [0, 0]), ValueError, "sample 0 is empty"),
        (lambda: (torch.zeros(20, dtype=torch.long), [0, 20, 20]), ValueError, "sample 1 is empty"),
        (lambda: (torch.zeros(12, dtype=torch.long), [0, 5, 12]), ValueError, "sample 0 has 5 bytes, fewer than"),
        (lambda: (torch.zeros(300, dtype=torch.long), [0, 300]), ValueError, "position table"),
        (lambda: (torch.full((20,), 257), [0, 20]), ValueError, "token value 257 is not a byte"),
        (lambda: (torch.full((20,), -1), [0, 20]), ValueError, "token value -1 is not a byte"),
        (lambda: (torch.zeros(20), [0, 20]), TypeError, "integer"),
        (lambda: (torch.zeros(20, dtype=torch.long), [0, 19]), ValueError, "run from 0"),
        (lambda: (torch.zeros(2, 10, dtype=torch.long), [0, 20]), ValueError, "packed 1-D"),
    ],
)
def test_clear_errors(make, error, match):
    model = small(max_num_tokens=16)
    tokens, cu = make()
    with pytest.raises(error, match=match):
        model(tokens, torch.tensor(cu, dtype=torch.int32))


def test_pack_samples_rejects_empty_and_non_bytes():
    with pytest.raises(ValueError, match="sample 1 is empty"):
        pack_samples([torch.ones(9, dtype=torch.long), torch.ones(0, dtype=torch.long)])
    with pytest.raises(TypeError, match="integer"):
        pack_samples([torch.ones(9)])
    with pytest.raises(ValueError, match="sample 0 is empty"):
        pack_samples([b""])
    with pytest.raises(TypeError, match="sample 1 is a str"):
        pack_samples([b"abc", "abc"])
    with pytest.raises(ValueError, match="sample 1 holds 300, not a byte"):
        pack_samples([[1, 2], [3, 300]])
    with pytest.raises(ValueError, match="sample 0 holds -1, not a byte"):
        pack_samples([[-1, 2]])


def test_pack_samples_takes_file_bytes_as_they_are():
    data = bytes(range(256)) + b"\x00\xff"
    tokens, cu = pack_samples([data, bytearray(data[:40]), memoryview(data)[5:50]])
    assert tokens[: len(data)].tolist() == list(data)
    assert cu.tolist() == [0, len(data), len(data) + 40, len(data) + 85] and cu.dtype == torch.int32
    assert pack_samples([[0, 256]])[0].tolist() == [0, 256]  # the mask token


def test_mask_token_is_accepted(samples):
    model = small()
    masked = samples[3].clone()
    masked[::3] = MASK_TOKEN
    assert torch.isfinite(logits(model, [masked])).all()


def test_train_mode_drop_path_and_backward(samples):
    model = small(drop_path_rate=0.2, drop_rate=0.1).train()
    tokens, cu = pack_samples(samples)
    nn.functional.cross_entropy(model(tokens, cu), torch.arange(len(samples)) % 5).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_registry_variants_and_round_trip(tmp_path):
    assert list_models(package="byteformer") == ["byteformer_base", "byteformer_small", "byteformer_tiny"]
    model = create_model("byteformer_tiny", num_classes=10, depth=2, window_shifts=(0, 64), downsample=(True, False))
    assert model.embed_dim == 192 and len(model.blocks) == 2 and model.conv_kernel_size == 32
    args, kwargs = get_model_entry("byteformer_tiny").make_example_inputs()
    model.eval()
    with torch.no_grad():
        out = model(*args, **kwargs)
    assert out.shape == (2, 10)
    save_pretrained(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args, **kwargs), out)


def test_bad_configs():
    with pytest.raises(ValueError, match="window_shifts needs one entry per block"):
        ByteFormer(depth=3, window_shifts=(0, 64))
    with pytest.raises(ValueError, match="shift must be in"):
        ByteFormer(depth=2, window_sizes=(8,), window_shifts=(0, 8), downsample=(False, False))


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(K, 130), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_property_packed_equals_alone_and_padded(lengths, seed):
    model = _PROPERTY_MODEL
    gen = torch.Generator().manual_seed(seed)
    samples = [torch.randint(0, 256, (n,), generator=gen) for n in lengths]
    batch = logits(model, samples)
    torch.testing.assert_close(batch, torch.cat([logits(model, [s]) for s in samples]), atol=1e-5, rtol=1e-5)
    padded = torch.full((len(samples), max(lengths)), MASK_TOKEN)
    for i, s in enumerate(samples):
        padded[i, : s.numel()] = s
    with torch.no_grad():
        torch.testing.assert_close(model.forward_padded(padded, torch.tensor(lengths)), batch, atol=1e-5, rtol=1e-5)


_PROPERTY_MODEL = small(window_sizes=(3,), window_shifts=(0, 1, 0, 2))
