"""gather_rows / scatter_rows and the pack/unpack built on them: exact values, dtypes, layouts and gradients."""

from __future__ import annotations

import pytest
import torch

from bramley.core.ops import gather_rows, scatter_rows
from bramley.core.packing import pack, unpack

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.uint8, torch.bool]


def _random(shape, dtype):
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if not dtype.is_floating_point:
        return torch.randint(0, 100, shape, dtype=dtype)
    return torch.randn(shape).to(dtype)


def _expected_pack(padded, lengths):
    return torch.cat([padded.reshape(-1, *padded.shape[2:])[:0], *(padded[b, :n] for b, n in enumerate(lengths))])


def _expected_unpack(packed, lengths, seq, fill):
    out = torch.full((len(lengths), seq, *packed.shape[1:]), fill, dtype=packed.dtype)
    start = 0
    for b, n in enumerate(lengths):
        out[b, :n] = packed[start : start + n]
        start += n
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lengths,seq",
    [([3, 0, 1, 5], 6), ([1, 1, 1], 1), ([0, 0], 4), ([], 3), ([7], 7), ([2, 0, 0, 2], 2)],
    ids=["mixed", "all-length-1", "all-empty", "no-docs", "one-full", "empty-between"],
)
def test_pack_unpack_exact_edge_cases(dtype, lengths, seq):
    padded = _random((len(lengths), seq, 3, 2), dtype)
    packed, cu, max_len = pack(padded, lengths=lengths)
    assert packed.dtype == dtype and packed.shape == (sum(lengths), 3, 2)
    assert torch.equal(packed, _expected_pack(padded, lengths).reshape(packed.shape))
    assert cu.tolist() == [0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()]
    assert max_len == max(lengths, default=0)
    fill = True if dtype == torch.bool else 7
    back = unpack(packed, cu, seq, fill=fill)
    assert back.dtype == dtype and torch.equal(back, _expected_unpack(packed, lengths, seq, fill))


def test_pack_unpack_bit_identical_including_signed_zero_and_nan():
    bits = lambda t: t.view(torch.int32).reshape(-1).tolist()  # noqa: E731
    padded = torch.tensor([[[-0.0], [float("nan")], [1.0]], [[float("-inf")], [2.5], [-0.0]]])
    packed, cu, _ = pack(padded, lengths=[2, 3])
    assert bits(packed) == bits(padded.reshape(6, 1)[[0, 1, 3, 4, 5]])
    back = unpack(packed, cu, 3, fill=-0.0)
    assert bits(back) == bits(torch.tensor([[[-0.0], [float("nan")], [-0.0]], padded[1].tolist()]))


def test_pack_unpack_non_contiguous_inputs():
    base = torch.randn(5, 4, 8)
    padded = base.transpose(0, 1)  # (4, 5, 8), not contiguous
    lengths = [5, 0, 2, 3]
    packed, cu, _ = pack(padded, lengths=lengths)
    assert torch.equal(packed, _expected_pack(padded, lengths))
    strided = torch.randn(10, 16)[:, ::2]  # packed rows with a column stride
    assert torch.equal(unpack(strided, cu, 5), _expected_unpack(strided, lengths, 5, 0.0))
    mask = torch.rand(4, 5) > 0.4
    assert torch.equal(pack(padded, mask=mask)[0], padded[mask])


def test_pack_and_unpack_gradients_float64():
    lengths = [3, 0, 1, 4]
    padded = torch.randn(4, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pack(x, lengths=lengths)[0], (padded,))
    packed = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 3, 3, 4, 8], dtype=torch.int32)
    assert torch.autograd.gradcheck(lambda x: unpack(x, cu, 6, fill=2.0), (packed,))
    mask = torch.rand(4, 5) > 0.5
    assert torch.autograd.gradcheck(lambda x: pack(x, mask=mask)[0], (padded,))
    assert torch.autograd.gradcheck(lambda x: unpack(x, mask=mask), (torch.randn(int(mask.sum()), 2,
                                    dtype=torch.float64, requires_grad=True),))  # fmt: skip


def test_gradients_are_the_other_direction():
    lengths = [3, 0, 1, 4]
    padded = torch.randn(4, 5, 2, requires_grad=True)
    packed, cu, _ = pack(padded, lengths=lengths)
    grad_packed = torch.randn_like(packed)
    packed.backward(grad_packed)
    assert torch.equal(padded.grad, unpack(grad_packed, cu, 5))
    source = grad_packed.clone().requires_grad_()
    grad_padded = torch.randn(4, 5, 2)
    unpack(source, cu, 5, fill=3.0).backward(grad_padded)
    assert torch.equal(source.grad, pack(grad_padded, lengths=lengths)[0])


def test_gather_rows_with_fill_and_repeats():
    src = torch.randn(4, 3, requires_grad=True)
    index = torch.tensor([2, -1, 2, 0, -1])
    out = gather_rows(src, index, fill=-1.5)
    assert torch.equal(out[[0, 2, 3]], src.detach()[[2, 2, 0]]) and (out[[1, 4]] == -1.5).all()
    out.sum().backward()
    assert src.grad[:, 0].tolist() == [1.0, 0.0, 2.0, 0.0]  # repeated rows add up
    with pytest.raises(ValueError, match="repeats a row"):
        gather_rows(src, index, unique=True)
    assert torch.equal(gather_rows(torch.empty(0, 3), torch.tensor([-1, -1]), 4.0), torch.full((2, 3), 4.0))
    assert gather_rows(torch.empty(0, 3), torch.tensor([], dtype=torch.int64)).shape == (0, 3)


def test_scatter_rows_inverts_gather_and_checks_input():
    src = torch.arange(6.0).view(3, 2)
    out = scatter_rows(src, torch.tensor([4, 0, 2]), 5, fill=-1.0)
    assert out.tolist() == [[2, 3], [-1, -1], [4, 5], [-1, -1], [0, 1]]
    assert torch.equal(gather_rows(out, torch.tensor([4, 0, 2])), src)
    assert torch.equal(scatter_rows(torch.empty(0, 2), torch.tensor([], dtype=torch.int64), 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="distinct"):
        scatter_rows(src, torch.tensor([1, 1, 0]), 5)
    with pytest.raises(IndexError, match="out of range"):
        scatter_rows(src, torch.tensor([0, 1, 5]), 5)
    with pytest.raises(IndexError, match="out of range"):
        scatter_rows(src, torch.tensor([0, -1, 2]), 5)
    with pytest.raises(ValueError, match="3 rows"):
        scatter_rows(src, torch.tensor([0, 1]), 5)


@pytest.mark.parametrize(
    "dtype,fill", [(torch.int64, 0.5), (torch.uint8, -1), (torch.bool, 2), (torch.int32, float("nan"))]
)
def test_fill_must_be_exact_in_the_dtype(dtype, fill):
    with pytest.raises(ValueError, match="fill"):
        unpack(torch.zeros(3, dtype=dtype), torch.tensor([0, 3], dtype=torch.int32), 4, fill=fill)


def test_unpack_bad_offsets():
    with pytest.raises(ValueError, match="start at 0"):
        unpack(torch.zeros(3, 2), torch.tensor([1, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="non-decreasing"):
        unpack(torch.zeros(3, 2), torch.tensor([0, 4, 3], dtype=torch.int32))


def test_scatter_and_backward_triton_interpreter(triton_interpret):
    pytest.importorskip("triton")
    padded = torch.randn(3, 5, 4, requires_grad=True)
    packed, cu, _ = pack(padded, lengths=[5, 0, 2], backend="triton")
    reference, _, _ = pack(padded, lengths=[5, 0, 2], backend="torch")
    assert torch.equal(packed, reference)
    grad = torch.randn_like(packed)
    packed.backward(grad)  # the backward of pack is the Triton scatter
    assert torch.equal(padded.grad, unpack(grad, cu, 5, backend="torch"))
    source = grad.clone().requires_grad_()
    out = unpack(source, cu, 5, fill=-2.0, backend="triton")
    assert torch.equal(out, unpack(grad, cu, 5, fill=-2.0, backend="torch"))
    out.backward(torch.ones_like(out))
    assert torch.equal(source.grad, torch.ones_like(source))


def test_int32_index_and_non_contiguous_mask():
    src = torch.randn(5, 3)
    index = torch.tensor([4, -1, 0], dtype=torch.int32)
    assert torch.equal(gather_rows(src, index)[[0, 2]], src[[4, 0]])
    assert torch.equal(scatter_rows(src[:2], torch.tensor([3, 1], dtype=torch.int32), 4)[[3, 1]], src[:2])
    mask = (torch.rand(6, 4) > 0.5).t()  # (4, 6), transposed view
    padded = torch.randn(4, 6, 2)
    packed = pack(padded, mask=mask)[0]
    assert torch.equal(packed, padded[mask]) and torch.equal(unpack(packed, mask=mask)[mask], padded[mask])


@pytest.mark.parametrize(
    "dtype,fill",
    [(torch.int32, 2**31 - 1), (torch.int64, 16_777_217), (torch.int64, 2**62 + 1), (torch.float64, 0.1)],
)
def test_triton_fill_is_exact_for_every_dtype(triton_interpret, dtype, fill):
    """The fill reaches the kernel in the source dtype: integer fills above 2**24 and float64 fills stay exact."""
    pytest.importorskip("triton")
    src = torch.zeros(3, 2, dtype=dtype)
    index = torch.tensor([2, -1, 0, -1])
    out = gather_rows(src, index, fill=fill, backend="triton")
    assert torch.equal(out, gather_rows(src, index, fill=fill, backend="torch"))
    assert out[1, 0].item() == fill
