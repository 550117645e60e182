"""Triton soft_logprob launchers (softgrpo.kernels.logprob) against the reference, in the
Triton interpreter on CPU tensors."""

import math
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import pytest
import torch

from softgrpo import reference as ref
from softgrpo.kernels import logprob as kern

CLAMP = (-1.5, 3.0)
T = 0.7


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """A vocabulary tile much smaller than V, so the passes over V take several steps."""
    monkeypatch.setattr(kern, "BLOCK_V", 64)


def batch(lead, k, v, gen, dtype=torch.float32, discrete=(0,), noise=(-1.0, 2.0),
          ids_dtype=torch.int64, temperature=T):
    """logits (*lead, V) with a wide spread (so some slots fall under the mask threshold),
    distinct top-k-like ids, rows listed in `discrete` stored as [s, 0, ..., 0], and
    perturbed y = lp + noise, lp = log(softmax(z[ids] / T) + eps) the policy's own log-probs
    and the recovered noise drawn uniformly from the `noise` range."""
    n = torch.Size(lead).numel()
    z = 3 * torch.randn(n, v, generator=gen)
    ids = torch.stack([torch.randperm(v, generator=gen)[:k] for _ in range(n)])
    ids[list(discrete), 1:] = 0
    lo, hi = noise
    lp = torch.log(torch.softmax(z.to(dtype).float().gather(1, ids) / temperature, -1) + 1e-6)
    y = lp + lo + (hi - lo) * torch.rand(n, k, generator=gen)
    return (z.reshape(*lead, v).to(dtype), ids.reshape(*lead, k).to(ids_dtype),
            y.reshape(*lead, k))


def check(logits, ids, y, grad, *, temperature=T, clamp=CLAMP, reduction="mean",
          likelihood="release", weight=0.0, scale=1.0, grad_tol=None):
    """Forward (fp32 out: tight) and backward (logits dtype) against the reference."""
    args = (logits, ids, y, temperature, *clamp, -3.0, 1e-6, reduction, likelihood, weight,
            scale)
    out = kern.soft_logprob(*args)
    want = ref.soft_logprob(*args)
    assert out.dtype == want.dtype == torch.float32 and out.shape == want.shape
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    got = kern.soft_logprob_backward(grad, *args)
    want = ref.soft_logprob_backward(grad, *args)
    assert got.dtype == want.dtype == logits.dtype and got.shape == want.shape
    tol = grad_tol or (dict(rtol=1e-5, atol=1e-6) if logits.dtype == torch.float32
                       else dict(rtol=1e-2, atol=1e-3))
    torch.testing.assert_close(got.float(), want.float(), **tol)
    return got


@pytest.mark.parametrize("k,lead", [(1, (3,)), (2, (17,)), (5, (2, 3)), (8, (17,)), (5, (1,))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mixed_rows(k, lead, dtype, reduction):
    gen = torch.Generator().manual_seed(k + 10 * len(lead))
    n = torch.Size(lead).numel()
    logits, ids, y = batch(lead, k, 300, gen, dtype, discrete=range(0, n, 3))  # V = 4.7 tiles
    grad = torch.randn(lead, generator=gen)
    got = check(logits, ids, y, grad, reduction=reduction)
    soft = ~(ids[..., 1:] == 0).all(-1)
    # a soft row's gradient has at most its k entries non-zero
    assert ((got != 0).sum(-1)[soft] <= k).all()


@pytest.mark.parametrize("noise,clamp", [((-4.0, 6.0), CLAMP), ((-1.0, 2.0), CLAMP),
                                         ((-4.0, 6.0), (-math.inf, math.inf))])
def test_clamp_bounds(noise, clamp):
    """Recovered noise beyond the bounds (clamped, zero gradient there), inside them, and no
    clamp at all."""
    gen = torch.Generator().manual_seed(2)
    logits, ids, y = batch((17,), 5, 257, gen, discrete=(), noise=noise)
    lp = torch.log(torch.softmax(logits.gather(1, ids) / T, -1) + 1e-6)
    hit = ((y - lp) < clamp[0]) | ((y - lp) > clamp[1])
    assert hit.any() == (noise[0] < -1.5 and clamp[0] > -math.inf)
    assert (lp <= -3.0).any() and (lp > -3.0).any()  # the mask keeps some slots, not all
    check(logits, ids, y, torch.randn(17, generator=gen), clamp=clamp)


@pytest.mark.parametrize("likelihood,weight,scale", [
    ("release", 0.0, 1.0), ("exact", 0.0, 1.0), ("exact", 0.0, 0.6), ("token", 0.0, 1.0),
    ("token", 0.3, 0.8), ("token", 1.0, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_likelihoods_with_cut_slots(likelihood, weight, scale, dtype):
    """Every likelihood on soft rows whose trailing slots top-p cut (y = -inf), slot 0 the
    largest y as soft_sample stores them, beside discrete rows."""
    gen = torch.Generator().manual_seed(11)
    logits, ids, y = batch((17,), 5, 300, gen, dtype, discrete=(0, 9), noise=(-1.0, 4.0))
    y, order = y.sort(-1, descending=True)
    ids = ids.gather(-1, order)
    ids[[0, 9], 1:] = 0  # discrete rows again after the sort
    y[1, 3:], y[2, 1:], y[7, 4] = -math.inf, -math.inf, -math.inf
    clamp = CLAMP if likelihood == "release" else (-math.inf, math.inf)
    reduction = "mean" if likelihood == "release" else "sum"
    got = check(logits, ids, y, torch.randn(17, generator=gen), clamp=clamp,
                reduction=reduction, likelihood=likelihood, weight=weight, scale=scale)
    assert (got[2] == 0).all()  # one kept slot: its softmax is 1 whatever the logits
    assert got[1, ids[1, 3:]].eq(0).all() and got[1, ids[1, :3]].ne(0).any()


def test_all_discrete_int32_ids_and_full_vocab_tile(monkeypatch):
    monkeypatch.setattr(kern, "BLOCK_V", 4096)  # the GPU tile: V = 5003 needs 2, one partial
    gen = torch.Generator().manual_seed(4)
    logits, ids, y = batch((2, 3), 4, 5003, gen, torch.bfloat16, discrete=range(6),
                           ids_dtype=torch.int32, temperature=1.3)
    check(logits, ids, y, torch.randn(2, 3, generator=gen), temperature=1.3)


def test_all_soft_and_duplicate_ids_in_a_row():
    gen = torch.Generator().manual_seed(8)
    logits, ids, y = batch((17,), 5, 131, gen, discrete=())
    ids[:, 3] = ids[:, 1]  # equal ids in a row: their gradient terms add up in one entry
    got = check(logits, ids, y, torch.randn(17, generator=gen))
    assert (got != 0).sum(-1).max() <= 4


def test_non_contiguous_and_expanded_grad():
    gen = torch.Generator().manual_seed(9)
    logits, ids, y = batch((6,), 5, 200, gen, discrete=(1, 4))
    wide = torch.randn(6, 260, generator=gen)
    wide[:, :200] = logits
    sliced = wide[:, :200]  # row stride 260, passed to the kernel as is
    column_major = logits.t().contiguous().t()  # unit stride along rows: copied
    ids_nc = torch.stack([ids, ids], -1)[..., 0]
    y_nc = y.t().contiguous().t()
    grad = torch.ones(()).expand(6)  # as autograd hands to the backward of out.sum()
    for z in (sliced, column_major):
        assert not any(x.is_contiguous() for x in (z, ids_nc, y_nc, grad))
        check(z, ids_nc, y_nc, grad)


def test_fp64_runs_the_reference():
    gen = torch.Generator().manual_seed(6)
    logits, ids, y = batch((5,), 3, 40, gen, torch.float64)
    y = y.double()
    args = (logits, ids, y, 0.7, *CLAMP, -3.0, 1e-6, "mean", "release", 0.0, 1.0)
    out = kern.soft_logprob(*args)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.soft_logprob(*args), rtol=0, atol=0)
    grad = torch.randn(5, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(kern.soft_logprob_backward(grad, *args),
                               ref.soft_logprob_backward(grad, *args), rtol=0, atol=0)
