"""Soft input embeddings: reference vs float64 math, gradients, errors."""

import pytest
import torch

import softgrpo


def records(n=7, k=4, v=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    ids[1] = torch.tensor([5] + [0] * (k - 1))  # a discrete row
    perturbed = torch.randn(n, k, generator=g)
    perturbed[1, 1:] = 0.0
    return ids, perturbed


def test_weights_are_tempered_softmax_with_one_hot_discrete_rows():
    ids, y = records()
    w = softgrpo.gumbel_softmax_weights(y, 0.3, ids)
    expected = torch.softmax(y.double() / 0.3, -1)
    expected[1] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(w.double(), expected)
    torch.testing.assert_close(softgrpo.gumbel_softmax_weights(y, 0.3).double(),
                               torch.softmax(y.double() / 0.3, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_soft_embedding_matches_float64_sum(dtype):
    ids, y = records()
    table = torch.randn(23, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
    w = torch.softmax(y, -1)
    out = softgrpo.soft_embedding(table, ids, w)
    expected = sum(w[:, j, None].double() * table[ids[:, j]].double() for j in range(4))
    assert out.dtype == dtype
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, expected.to(dtype), **tol)


def test_soft_token_embedding_is_the_composition_and_discrete_rows_are_lookups():
    ids, y = records()
    table = torch.randn(23, 6, dtype=torch.float64)
    fused = softgrpo.soft_token_embedding(table, ids, y.double(), 0.5)
    composed = softgrpo.soft_embedding(table, ids, softgrpo.gumbel_softmax_weights(
        y.double(), 0.5, ids))
    torch.testing.assert_close(fused, composed)
    torch.testing.assert_close(fused[1], table[5])


def test_leading_dimensions_and_int32_ids():
    ids, y = records(n=6)
    table = torch.randn(23, 5)
    out = softgrpo.soft_token_embedding(table, ids.view(2, 3, 4).int(), y.view(2, 3, 4), 0.2)
    torch.testing.assert_close(out.view(6, 5), softgrpo.soft_token_embedding(table, ids, y, 0.2))


def test_gradients_float64():
    ids, y = records(n=5, k=3, v=11)
    ids[3] = ids[2]  # repeated ids across rows: the table gradient must add them up
    table = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    yd = y.double().requires_grad_()
    w = torch.softmax(yd.detach(), -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, w: softgrpo.soft_embedding(t, ids, w), (table, w))
    assert torch.autograd.gradcheck(
        lambda t, y: softgrpo.soft_token_embedding(t, ids, y, 0.7), (table, yd))
    assert torch.autograd.gradcheck(lambda y: softgrpo.gumbel_softmax_weights(y, 0.7, ids), (yd,))
    assert torch.autograd.gradcheck(lambda y: softgrpo.gumbel_softmax_weights(y, 0.7), (yd,))


def test_pathwise_gradient_is_zero_for_discrete_rows_only():
    ids, y = records()
    y.requires_grad_()
    table = torch.randn(23, 6)
    softgrpo.soft_token_embedding(table, ids, y, 0.5).square().sum().backward()
    assert torch.all(y.grad[1] == 0)
    assert torch.all(y.grad[[0, 2, 3]].abs().sum(-1) > 0)


def test_cut_slots_weigh_nothing_and_get_no_gradient():
    """Slots cut by top-p hold perturbed -inf (spec 2): weight 0, the embedding of the kept
    slots alone, a zero (not NaN) pathwise gradient there."""
    ids, y = records()
    y[0, 2:], y[3, 1:] = -float("inf"), -float("inf")
    y.requires_grad_()
    table = torch.randn(23, 6, dtype=torch.float64)
    out = softgrpo.soft_token_embedding(table, ids, y, 0.5)
    kept = torch.softmax(y[0, :2].detach().double() / 0.5, -1)
    torch.testing.assert_close(out[0], (kept[:, None] * table[ids[0, :2]]).sum(0))
    torch.testing.assert_close(out[3], table[ids[3, 0]])
    out.square().sum().backward()
    assert torch.isfinite(y.grad).all() and (y.grad[y.detach() == -float("inf")] == 0).all()
    assert (y.grad[3] == 0).all() and (y.grad[0, :2] != 0).all()


def test_non_contiguous_inputs():
    ids, y = records(k=4)
    table = torch.randn(6, 23).t()  # (23, 6), not contiguous
    out = softgrpo.soft_token_embedding(table, ids.t().contiguous().t(), y.t().contiguous().t(),
                                        0.2)
    torch.testing.assert_close(out, softgrpo.soft_token_embedding(table.contiguous(), ids, y, 0.2))


BAD = [
    (dict(table=torch.randn(23)), ValueError, "table must be 2-D"),
    (dict(ids=torch.zeros(7, 4)), TypeError, "ids must have dtype"),
    (dict(weights=torch.zeros(7, 4, dtype=torch.int64)), TypeError, "weights must have dtype"),
    (dict(weights=torch.rand(7, 3)), ValueError, "same shape"),
    (dict(ids=torch.full((7, 4), 23)), ValueError, r"ids must lie in \[0, 23\)"),
    (dict(ids=torch.full((7, 4), -1)), ValueError, "ids must lie in"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD, ids=lambda x: str(x)[:30])
def test_bad_arguments_name_the_argument(kwargs, error, message):
    ids, y = records()
    args = dict(table=torch.randn(23, 6), ids=ids, weights=torch.softmax(y, -1))
    args.update(kwargs)
    with pytest.raises(error, match=message):
        softgrpo.soft_embedding(**args)


def test_bad_tau_and_perturbed():
    ids, y = records()
    with pytest.raises(ValueError, match="tau"):
        softgrpo.soft_token_embedding(torch.randn(23, 6), ids, y, 0.0)
    with pytest.raises(TypeError, match="perturbed must have dtype"):
        softgrpo.gumbel_softmax_weights(ids, 0.1)
