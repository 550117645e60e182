"""soft_logprob_from_hidden (CPU op = the pure-torch reference) against soft_logprob on the
explicit logits hidden @ weight.T + bias."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import softgrpo  # noqa: F401  (registers the ops)
from softgrpo.ops.fused_linear import soft_logprob_from_hidden
from softgrpo.ops.logprob import soft_logprob
from softgrpo.reference import fused_linear as ref


def records(n: int, hidden_size: int, vocab: int, k: int, discrete: float, *, seed: int = 0,
            dtype: torch.dtype = torch.float32, bias: bool = True, lead: tuple[int, ...] = ()):
    """Hidden states, a head (weight, bias) and rollout records (ids, perturbed) that follow
    spec 2: distinct top-k ids with y = log p_hat + clamped Gumbel noise, drawn from the same
    logits; a `discrete` fraction of rows is stored as [s, 0, ..., 0] with y = [l_s, 0, ...]."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, n, hidden_size, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, hidden_size, generator=g, dtype=torch.float64)
    weight *= 2.0 / math.sqrt(hidden_size)
    b = torch.randn(vocab, generator=g, dtype=torch.float64) if bias else None
    logits = hidden @ weight.T + (0.0 if b is None else b)
    ids = torch.rand(*lead, n, vocab, generator=g).argsort(-1)[..., :k]
    log_p = torch.log_softmax(logits.gather(-1, ids), -1)
    noise = -torch.log(torch.empty(log_p.shape, dtype=torch.float64).exponential_(generator=g))
    perturbed = log_p + noise.clamp(-1.5, 3.0)
    disc = torch.rand(*lead, n, generator=g) < discrete
    ids[..., 1:][disc] = 0
    perturbed[..., 1:][disc] = 0.0
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(hidden), cast(weight), cast(b), ids, perturbed.float()


def explicit(hidden, weight, bias, ids, perturbed, **kw):
    logits = hidden @ weight.T + (0.0 if bias is None else bias)
    return soft_logprob(logits, ids, perturbed, **kw)


def grads(out, inputs, seed=1):
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, go)


def leaf(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def assert_matches(hidden, weight, bias, ids, perturbed, atol=1e-5, rtol=1e-5, **kw):
    """Outputs and gradients (hidden, weight, bias) equal soft_logprob on explicit logits."""
    h1, w1, b1 = leaf(hidden, weight, bias)
    h2, w2, b2 = leaf(hidden, weight, bias)
    out = soft_logprob_from_hidden(h1, w1, ids, perturbed, bias=b1, **kw)
    kw.pop("chunk_size", None)
    want = explicit(h2, w2, b2, ids, perturbed, **kw)
    assert out.dtype == torch.float32 and out.shape == ids.shape[:-1]
    torch.testing.assert_close(out, want, atol=atol, rtol=rtol)
    inputs1 = [t for t in (h1, w1, b1) if t is not None]
    inputs2 = [t for t in (h2, w2, b2) if t is not None]
    for got, exp in zip(grads(out, inputs1), grads(want, inputs2)):
        assert got.dtype == exp.dtype and got.abs().max() > 0
        torch.testing.assert_close(got, exp, atol=atol, rtol=rtol)


@pytest.mark.parametrize("discrete", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_matches_soft_logprob_fp32(discrete, bias, chunk_size):
    hidden, weight, b, ids, y = records(53, 21, 97, 5, discrete, bias=bias)
    assert_matches(hidden, weight, b, ids, y, chunk_size=chunk_size)


@pytest.mark.parametrize("kw", [dict(temperature=0.6, reduction="sum"),
                                dict(clamp=None, mask_threshold=-2.0),
                                dict(temperature=1.7, clamp=(-1.0, 2.0), eps=1e-4)])
def test_options_and_leading_dims(kw):
    hidden, weight, b, ids, y = records(9, 13, 31, 4, 0.3, lead=(3,), seed=2)
    assert_matches(hidden, weight, b, ids, y, chunk_size=5, **kw)


def test_single_row_and_k1():
    assert_matches(*records(1, 11, 17, 5, 0.0, seed=3))
    assert_matches(*records(1, 11, 17, 5, 1.0, seed=3))
    assert_matches(*records(6, 11, 17, 1, 0.0, seed=4), chunk_size=4)  # k = 1: all discrete


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size):
    hidden, weight, b, ids, y = records(19, 9, 41, 3, 0.4, seed=5)
    want = soft_logprob_from_hidden(hidden, weight, ids, y, bias=b)
    got = soft_logprob_from_hidden(hidden, weight, ids, y, bias=b, chunk_size=chunk_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)


def test_bf16_accumulates_in_fp32():
    hidden, weight, b, ids, y = records(67, 96, 301, 5, 0.1, dtype=torch.bfloat16, seed=6)
    h1, w1, b1 = leaf(hidden, weight, b)
    out = soft_logprob_from_hidden(h1, w1, ids, y, bias=b1, chunk_size=64)
    h2, w2, b2 = leaf(hidden.float(), weight.float(), b.float())
    want = explicit(h2, w2, b2, ids, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    for got, exp in zip(grads(out, [h1, w1, b1]), grads(want, [h2, w2, b2])):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), exp, atol=5e-2, rtol=5e-2)  # bf16 rounding


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_float64(reduction):
    hidden, weight, b, ids, y = records(7, 5, 13, 4, 0.3, dtype=torch.float64, seed=7)
    h, w, bb = leaf(hidden, weight, b)

    def fn(h, w, bb):
        return soft_logprob_from_hidden(h, w, ids, y.double(), bias=bb, temperature=0.9,
                                        reduction=reduction, chunk_size=4)

    assert torch.autograd.gradcheck(fn, (h, w, bb))


def test_tied_weights():
    """One table as input embedding and LM head: both uses get their gradient."""
    hidden, table, _, ids, y = records(12, 8, 29, 5, 0.25, bias=False, seed=8)
    tokens = torch.randint(0, 29, (12,), generator=torch.Generator().manual_seed(0))
    mix = hidden[:8]  # an (H, H) map from embeddings to last hidden states

    def run(f):
        e = table.clone().requires_grad_()
        out = f(torch.tanh(e[tokens] @ mix), e)
        return out, torch.autograd.grad(out.sum(), e)[0]

    out, grad = run(lambda h, e: soft_logprob_from_hidden(h, e, ids, y, chunk_size=8))
    want, want_grad = run(lambda h, e: explicit(h, e, None, ids, y))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, want_grad, atol=1e-5, rtol=1e-5)


class _Sizes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numels += [t.numel() for t in torch.utils._pytree.tree_leaves(out)
                        if isinstance(t, torch.Tensor)]
        return out


@pytest.mark.parametrize("discrete", [0.0, 0.5])
def test_no_full_vocabulary_logits(discrete):
    """Forward and backward never create a tensor anywhere near N x V elements: soft rows
    gather K head rows, discrete rows work in chunk x chunk blocks."""
    n, hidden_size, vocab, k, chunk = 64, 8, 211, 5, 16
    hidden, weight, b, ids, y = records(n, hidden_size, vocab, k, discrete, seed=9)
    args = (0.8, -1.5, 3.0, -3.0, 1e-6, "mean", "release", 0.0, 1.0, chunk)
    with _Sizes() as sizes:
        _, lse = ref.soft_logprob_from_hidden(hidden, weight, b, ids, y, *args)
        ref.soft_logprob_from_hidden_backward(torch.ones(n), hidden, weight, b, ids, y, lse,
                                              *args)
    assert max(sizes.numels) == vocab * hidden_size < n * vocab / 4  # the largest: grad_weight


def test_empty_batch():
    hidden, weight, b, ids, y = records(3, 4, 11, 3, 0.0)
    h, w = leaf(hidden[:0], weight)
    out = soft_logprob_from_hidden(h, w, ids[:0], y[:0], bias=b)
    assert out.shape == (0,)
    grad_h, grad_w = torch.autograd.grad(out.sum(), (h, w), allow_unused=True)
    assert grad_h.shape == (0, 4) and not grad_w.any()


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    hidden, weight, b, ids, y = records(10, 7, 23, 4, 0.3, bias=bias, seed=10)
    h, w, bb = leaf(hidden, weight, b)
    options = (0.9, -1.5, 3.0, -3.0, 1e-6, "mean", "release", 0.0, 1.0, 5)
    torch.library.opcheck(torch.ops.softgrpo.soft_logprob_from_hidden.default,
                          (h, w, bb, ids, y, *options))
    _, lse = torch.ops.softgrpo.soft_logprob_from_hidden(hidden, weight, b, ids, y, *options)
    torch.library.opcheck(torch.ops.softgrpo.soft_logprob_from_hidden_backward.default,
                          (torch.randn(10), hidden, weight, b, ids, y, lse, *options))


def test_compile_fullgraph():
    hidden, weight, b, ids, y = records(12, 9, 37, 5, 0.25, seed=11)
    h1, w1, b1 = leaf(hidden, weight, b)
    h2, w2, b2 = leaf(hidden, weight, b)

    def fn(h, w, bb):
        return soft_logprob_from_hidden(h, w, ids, y, bias=bb, temperature=0.8, chunk_size=8)

    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(h1, w1, b1)
    want = fn(h2, w2, b2)
    torch.testing.assert_close(out, want)
    for got, exp in zip(grads(out, [h1, w1, b1]), grads(want, [h2, w2, b2])):
        torch.testing.assert_close(got, exp)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("discrete", [0.0, 0.1, 1.0])
def test_cuda_triton_path_matches_cpu(dtype, discrete):
    """The compiled Triton path (run this file alone: the kernel tests set TRITON_INTERPRET)
    against the CPU op, and bitwise-repeatable gradients (no float atomics)."""
    hidden, weight, b, ids, y = records(301, 96, 4099, 5, discrete, dtype=dtype, seed=12)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)

    def run(device):
        h, w, bb = leaf(*(t.to(device) for t in (hidden, weight, b)))
        out = soft_logprob_from_hidden(h, w, ids.to(device), y.to(device), bias=bb,
                                       chunk_size=1024)
        return (out, *grads(out, [h, w, bb]))

    want = run("cpu")
    first, second = run("cuda"), run("cuda")
    for got, again, exp in zip(first, second, want):
        assert torch.equal(got, again)
        torch.testing.assert_close(got.cpu().float(), exp.float(), **tol)


def _bad_inputs():
    hidden, weight, b, ids, y = records(4, 6, 13, 3, 0.0)
    ok = dict(hidden=hidden, weight=weight, ids=ids, perturbed=y, bias=b)
    over = ids.clone()
    over[1, 2] = 13
    under = ids.clone()
    under[0, 1] = -1
    nan = y.clone()
    nan[2, 0] = math.nan
    return ok, [
        (dict(weight=weight[:, :5]), ValueError, "weight"),
        (dict(weight=weight[0]), ValueError, "weight"),
        (dict(weight=weight.double()), TypeError, "weight"),
        (dict(bias=b[:12]), ValueError, "bias"),
        (dict(bias=b.double()), TypeError, "bias"),
        (dict(hidden=hidden[:3]), ValueError, "hidden"),
        (dict(hidden=hidden.long()), TypeError, "hidden"),
        (dict(perturbed=y[:, :2]), ValueError, "perturbed"),
        (dict(ids=ids.float()), TypeError, "ids"),
        (dict(ids=over), ValueError, "ids"),
        (dict(ids=under), ValueError, "ids"),
        (dict(perturbed=nan), ValueError, "perturbed"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size=2.0), TypeError, "chunk_size"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(reduction="max"), ValueError, "reduction"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs()[1])))
def test_bad_input_names_the_argument(case):
    ok, cases = _bad_inputs()
    change, error, name = cases[case]
    kw = {**ok, **change}
    args = [kw.pop(key) for key in ("hidden", "weight", "ids", "perturbed")]
    with pytest.raises(error, match=name):
        soft_logprob_from_hidden(*args, **kw)
