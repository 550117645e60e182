"""Triton soft-embedding launchers (softgrpo.kernels.embedding) against the reference, in the
Triton interpreter on CPU tensors."""

import math
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import pytest
import torch

from softgrpo import reference as ref
from softgrpo.kernels import embedding as kern

TAU = 0.3


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Tiles much smaller than the shapes, so every loop runs several partial steps."""
    monkeypatch.setattr(kern, "BLOCK_H", 16)
    monkeypatch.setattr(kern, "BLOCK_P", 2)


def tol(dtype: torch.dtype) -> dict:
    # fp32: tight. bf16/fp16 results: one rounding step of the output dtype (as Liger's tests)
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)


def close(actual, expected, dtype=torch.float32):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), **tol(dtype))


def records(lead, k, v, gen, n_discrete=1, dup_within=False, dtype=torch.int64):
    """ids (*lead, k): distinct ids per row, the first n_discrete rows discrete
    ([s, 0, ..., 0]); dup_within repeats a slot's id inside a row (a soft row stays soft)."""
    n = torch.Size(lead).numel()
    ids = torch.stack([torch.randperm(v, generator=gen)[:k] for _ in range(n)])
    ids[:n_discrete, 1:] = 0
    if dup_within and k >= 3:
        ids[n_discrete:, 2] = ids[n_discrete:, 1]
    return ids.reshape(*lead, k).to(dtype)


@pytest.mark.parametrize("k,lead", [(1, (3,)), (2, (17,)), (5, (2, 3)), (8, (17,)), (5, (1,))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_soft_embedding_forward_backward(k, lead, dtype):
    gen = torch.Generator().manual_seed(k * 100 + len(lead))
    v, h = 23, 37  # h: three 16-wide tiles, the last one partial
    table = torch.randn(v, h, generator=gen).to(dtype)
    ids = records(lead, k, v, gen, n_discrete=1, dup_within=True)
    weights = torch.rand(*lead, k, generator=gen).to(dtype)
    weights[0, ..., 1:] = 0.0  # exact zeros: the slots the kernels skip
    close(kern.soft_embedding(table, ids, weights), ref.soft_embedding(table, ids, weights),
          dtype)

    grad = torch.randn(*lead, h, generator=gen).to(dtype)
    got = kern.soft_embedding_backward(grad, table, ids, weights)
    want = ref.soft_embedding_backward(grad, table, ids, weights)
    close(got[0], want[0], dtype)  # grad_table
    close(got[1], want[1], dtype)  # grad_weights


@pytest.mark.parametrize("k,lead", [(1, (3,)), (2, (17,)), (5, (2, 3)), (8, (17,))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_soft_token_embedding_forward_backward(k, lead, dtype):
    gen = torch.Generator().manual_seed(7 * k + len(lead))
    v, h = 29, 37
    table = torch.randn(v, h, generator=gen).to(dtype)
    ids = records(lead, k, v, gen, n_discrete=2)
    if k >= 3:
        ids.reshape(-1, k)[-1] = torch.arange(k)  # soft row with id 0 in its first slot
    perturbed = (3 * torch.randn(*lead, k, generator=gen)).to(dtype)
    close(kern.soft_token_embedding(table, ids, perturbed, TAU),
          ref.soft_token_embedding(table, ids, perturbed, TAU), dtype)

    grad = torch.randn(*lead, h, generator=gen).to(dtype)
    got = kern.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)
    want = ref.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)
    close(got[0], want[0], dtype)  # grad_table
    close(got[1], want[1], dtype)  # grad_perturbed
    disc = (ids[..., 1:] == 0).all(-1)
    assert disc.any() and (got[1][disc] == 0).all()  # no pathwise gradient for discrete rows


def test_table_gradient_segments_int32_ids():
    """Many pairs on few ids (segments longer than the pair step), within-row duplicates,
    int32 ids: each row of the table gradient is one segment sum; unused rows are 0."""
    gen = torch.Generator().manual_seed(3)
    v, h, k = 40, 21, 5
    ids = torch.randint(0, 6, (17, k), generator=gen, dtype=torch.int32)
    ids[:, 0] = 5  # a hot id: one segment of 17+ pairs
    ids[3, 1:] = 0
    table = torch.randn(v, h, generator=gen)
    weights = torch.rand(17, k, generator=gen)
    grad = torch.randn(17, h, generator=gen)
    got = kern.soft_embedding_backward(grad, table, ids, weights)
    want = ref.soft_embedding_backward(grad, table, ids, weights)
    close(got[0], want[0])
    close(got[1], want[1])
    assert (got[0][6:] == 0).all() and (got[0][:6] != 0).any(-1).all()

    perturbed = torch.randn(17, k, generator=gen)
    got = kern.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)
    want = ref.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)
    close(got[0], want[0])
    close(got[1], want[1])


def test_non_contiguous_inputs_and_default_blocks(monkeypatch):
    monkeypatch.setattr(kern, "BLOCK_H", 512)  # the GPU tile, larger than h here
    monkeypatch.setattr(kern, "BLOCK_P", 4)
    gen = torch.Generator().manual_seed(11)
    v, h, k, n = 31, 45, 5, 6
    table = torch.randn(h, v, generator=gen).t()  # column-major: unit stride along V
    ids = records((n,), 2 * k, v, gen, n_discrete=0)[:, ::2]
    ids[0, 1:] = 0
    weights = torch.rand(n, 2 * k, generator=gen)[:, 1::2]
    perturbed = torch.randn(k, n, generator=gen).t()
    grad = torch.randn(n, 2 * h, generator=gen)[:, :h]  # row stride 2h
    assert not any(x.is_contiguous() for x in (table, ids, weights, perturbed, grad))
    close(kern.soft_embedding(table, ids, weights), ref.soft_embedding(table, ids, weights))
    for got, want in zip(kern.soft_embedding_backward(grad, table, ids, weights),
                         ref.soft_embedding_backward(grad, table, ids, weights)):
        close(got, want)
    close(kern.soft_token_embedding(table, ids, perturbed, TAU),
          ref.soft_token_embedding(table, ids, perturbed, TAU))
    for got, want in zip(kern.soft_token_embedding_backward(grad, table, ids, perturbed, TAU),
                         ref.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)):
        close(got, want)
    # an expanded (stride-0) gradient, as autograd hands to the backward of out.sum()
    ones = torch.ones(()).expand(n, h)
    for got, want in zip(kern.soft_embedding_backward(ones, table, ids, weights),
                         ref.soft_embedding_backward(ones, table, ids, weights)):
        close(got, want)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
@pytest.mark.parametrize("with_ids", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gumbel_softmax_weights(k, with_ids, dtype):
    gen = torch.Generator().manual_seed(k)
    perturbed = (4 * torch.randn(2, 3, k, generator=gen)).to(dtype)
    ids = records((2, 3), k, 50, gen, n_discrete=2, dtype=torch.int32) if with_ids else None
    weights = kern.gumbel_softmax_weights(perturbed, TAU, ids)
    close(weights, ref.gumbel_softmax_weights(perturbed, TAU, ids))  # fp32 out: tight
    grad = torch.randn(2, 3, k, generator=gen).to(dtype)
    close(kern.gumbel_softmax_weights_backward(grad, weights, TAU, ids),
          ref.gumbel_softmax_weights_backward(grad, weights, TAU, ids))


def test_fp64_runs_the_reference():
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(13, 9, dtype=torch.float64, generator=gen)
    ids = records((4,), 3, 13, gen)
    perturbed = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    grad = torch.randn(4, 9, dtype=torch.float64, generator=gen)
    w = kern.gumbel_softmax_weights(perturbed, TAU, ids)
    assert w.dtype == torch.float64
    torch.testing.assert_close(w, ref.gumbel_softmax_weights(perturbed, TAU, ids), rtol=0, atol=0)
    got = kern.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)
    want = ref.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)
    for a, b in zip(got, want):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_empty_batch():
    table = torch.randn(7, 5)
    ids = torch.zeros(0, 3, dtype=torch.int64)
    weights = torch.zeros(0, 3)
    assert kern.soft_embedding(table, ids, weights).shape == (0, 5)
    grad_table, grad_weights = kern.soft_embedding_backward(torch.zeros(0, 5), table, ids,
                                                            weights)
    assert grad_weights.shape == (0, 3) and grad_table.shape == (7, 5)
    assert (grad_table == 0).all()


def test_soft_token_embedding_with_cut_slots():
    """Perturbed -inf at slots cut by top-p: weight 0 in the forward, zero gradients there."""
    gen = torch.Generator().manual_seed(12)
    table = torch.randn(31, 19, generator=gen)
    ids = records((9,), 5, 31, gen, n_discrete=1)
    perturbed = torch.randn(9, 5, generator=gen).sort(-1, descending=True).values
    perturbed[2, 3:], perturbed[5, 1:] = -math.inf, -math.inf
    close(kern.soft_token_embedding(table, ids, perturbed, TAU),
          ref.soft_token_embedding(table, ids, perturbed, TAU))
    grad = torch.randn(9, 19, generator=gen)
    got = kern.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)
    want = ref.soft_token_embedding_backward(grad, table, ids, perturbed, TAU)
    close(got[0], want[0])
    close(got[1], want[1])
    assert torch.isfinite(got[1]).all() and (got[1][perturbed == -math.inf] == 0).all()
