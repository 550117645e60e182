"""The Triton launchers of soft_logprob_from_hidden under the interpreter (CPU tensors),
against the pure-torch reference on small odd shapes."""

from __future__ import annotations

import math
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import pytest
import torch

from softgrpo.kernels import fused_linear as kernel
from softgrpo.reference import fused_linear as ref

sys.path.insert(0, os.path.dirname(__file__))
from test_fused_linear import records

# (n, hidden, vocab, k, discrete fraction, dtype, bias, chunk, options)
CASES = [
    (13, 19, 37, 5, 0.3, torch.float32, True, 5, {}),
    (9, 33, 70, 3, 0.0, torch.float64, False, 16, dict(reduction="sum")),
    (7, 8, 21, 1, 1.0, torch.float32, True, 4, {}),
    (11, 17, 29, 4, 0.5, torch.float64, True, 7, dict(temperature=0.7, clamp=None)),
    (1, 5, 9, 3, 0.0, torch.float32, False, 100, {}),
    (60, 6, 11, 4, 0.1, torch.float32, True, 9, dict(mask_threshold=-2.0)),  # repeated ids
]


def _options(chunk, temperature=1.0, clamp=(-1.5, 3.0), mask_threshold=-3.0, eps=1e-6,
             reduction="mean", likelihood="release", conditional_weight=0.0, noise_scale=1.0):
    lo, hi = clamp if clamp is not None else (-float("inf"), float("inf"))
    return (temperature, lo, hi, mask_threshold, eps, reduction, likelihood,
            conditional_weight, noise_scale, chunk)


def _compare(hidden, weight, bias, ids, y, options, atol):
    out, lse = kernel.soft_logprob_from_hidden(hidden, weight, bias, ids, y, *options)
    want, want_lse = ref.soft_logprob_from_hidden(hidden, weight, bias, ids, y, *options)
    torch.testing.assert_close(out, want, atol=atol, rtol=atol)
    torch.testing.assert_close(lse, want_lse, atol=atol, rtol=atol)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    got = kernel.soft_logprob_from_hidden_backward(go, hidden, weight, bias, ids, y, lse,
                                                   *options)
    exp = ref.soft_logprob_from_hidden_backward(go, hidden, weight, bias, ids, y, want_lse,
                                                *options)
    for g, e in zip(got, exp):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, atol=atol, rtol=atol)


@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_launchers_match_reference(case):
    n, hidden_size, vocab, k, discrete, dtype, bias, chunk, kw = case
    hidden, weight, b, ids, y = records(n, hidden_size, vocab, k, discrete, dtype=dtype,
                                        bias=bias, seed=n)
    atol = 1e-12 if dtype == torch.float64 else 2e-5
    _compare(hidden, weight, b, ids, y, _options(chunk, **kw), atol)


@pytest.mark.parametrize("kw", [
    dict(likelihood="release"), dict(likelihood="exact", clamp=None, noise_scale=0.5),
    dict(likelihood="token", clamp=None), dict(likelihood="token", clamp=None,
                                                conditional_weight=0.4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_likelihoods_with_cut_slots(kw, dtype):
    """Soft rows whose trailing slots top-p cut (y = -inf; slot 0 the largest y)."""
    hidden, weight, b, ids, y = records(12, 19, 37, 5, 0.25, dtype=dtype, seed=7)
    y, order = y.sort(-1, descending=True)
    ids = ids.gather(-1, order)
    soft = ~(ids[:, 1:] == 0).all(-1)
    rows = soft.nonzero().squeeze(-1)
    y[rows[0], 2:], y[rows[1], 1:], y[rows[2], 4] = -math.inf, -math.inf, -math.inf
    atol = 1e-12 if dtype == torch.float64 else 2e-5
    _compare(hidden, weight, b, ids, y, _options(6, **kw), atol)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # log(0): the -inf block
def test_leading_dims_int32_ids_and_masked_block():
    """(B, T, H) hidden, int32 ids, and a bias that masks a whole vocabulary block (-inf),
    so a logits block of every discrete row is all -inf."""
    hidden, weight, b, ids, y = records(5, 12, 30, 4, 0.4, lead=(2,), seed=3)
    b[10:20] = -float("inf")
    ids = torch.where((ids >= 10) & (ids < 20), ids + 10, ids).int()
    _compare(hidden, weight, b, ids, y, _options(10), 2e-5)


def test_bf16_inputs():
    hidden, weight, b, ids, y = records(10, 24, 45, 5, 0.3, dtype=torch.bfloat16, seed=4)
    options = _options(16)
    out, lse = kernel.soft_logprob_from_hidden(hidden, weight, b, ids, y, *options)
    want, _ = ref.soft_logprob_from_hidden(hidden, weight, b, ids, y, *options)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=5e-2, rtol=5e-2)  # bf16 block logits
    grads = kernel.soft_logprob_from_hidden_backward(torch.ones(10), hidden, weight, b, ids, y,
                                                     lse, *options)
    exp = ref.soft_logprob_from_hidden_backward(torch.ones(10), hidden, weight, b, ids, y, lse,
                                                *options)
    for g, e in zip(grads, exp):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), e.float(), atol=5e-2, rtol=5e-2)


def test_segments():
    """Runs of equal keys below the limit, one program each; keys at the limit are in none."""
    keys = torch.tensor([4, 1, 4, 7, 1, 9, 1, 9, 4])
    sorted_keys, order, bounds = kernel._segments(keys, 9)
    assert sorted_keys.tolist() == [1, 1, 1, 4, 4, 4, 7, 9, 9]
    assert order.tolist() == [1, 4, 6, 0, 2, 8, 3, 5, 7]  # stable: equal keys keep their order
    assert bounds.tolist() == [0, 3, 6, 7]
    assert kernel._segments(torch.tensor([3, 3]), 3)[2].tolist() == [0]  # no run at all


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_kept", [True, False], ids=["filtered", "full"])
def test_multiplex_launchers_match_reference(dtype, with_kept):
    """multiplex_logprob_from_hidden: gathered draws and kept sets, full rows in blocks."""
    from test_multiplex_logprob import H, V
    from test_multiplex_logprob import records as mrecords

    from softgrpo.reference import multiplex_logprob as mref

    ids, perturbed, kept = mrecords(n=8, kept=with_kept, seed=5)
    kept = kept if with_kept else torch.empty(8, 0, dtype=torch.int64)
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(8, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype)
    bias = torch.randn(V, generator=g, dtype=dtype)
    y = perturbed.to(dtype)
    atol = 1e-12 if dtype == torch.float64 else 2e-5
    for b in (bias, None):
        args = (hidden, weight, b, ids, y, kept, 0.8, 6)
        out, lse, zk = kernel.multiplex_logprob_from_hidden(*args)
        want, want_lse, want_zk = mref.multiplex_logprob_from_hidden(*args)
        for got, exp in ((out, want), (lse, want_lse), (zk, want_zk)):
            torch.testing.assert_close(got, exp, atol=atol, rtol=atol)
        go = torch.randn(out.shape, generator=g, dtype=out.dtype)
        grads = kernel.multiplex_logprob_from_hidden_backward(go, *args[:6], lse, zk, *args[6:])
        exp = mref.multiplex_logprob_from_hidden_backward(go, *args[:6], want_lse, want_zk,
                                                          *args[6:])
        for got, e in zip(grads, exp):
            assert got.dtype == e.dtype and got.shape == e.shape
            torch.testing.assert_close(got, e, atol=atol, rtol=atol)
