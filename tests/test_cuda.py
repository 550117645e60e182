"""GPU correctness: every op on CUDA tensors (the Triton kernels, compiled) against the CPU
reference on the same inputs, at realistic shapes. Skipped without a GPU; run by
benchmarks/gpu_check.sh, with TRITON_INTERPRET=0 (tests/conftest.py defaults it to 1, and the
compiled_kernels fixture fails every test here if the kernels were interpreted)."""

import importlib

import pytest
import torch

import softgrpo
from benchmarks.bench_multiplex import make_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
V = 151_936


@pytest.fixture(autouse=True, scope="module")
def compiled_kernels():
    """The kernels are Triton JIT functions, compiled for this GPU: under TRITON_INTERPRET=1
    they would be interpreted and every test here could pass without compiling one."""
    from triton.runtime.jit import JITFunction

    for name in ("sampling", "multiplex", "embedding", "logprob", "fused_linear"):
        module = importlib.import_module(f"softgrpo.kernels.{name}")
        kernels = {n: v for n, v in vars(module).items() if n.endswith("_kernel")}
        assert kernels and all(isinstance(v, JITFunction) for v in kernels.values()), (
            f"softgrpo.kernels.{name} is interpreted: run with TRITON_INTERPRET=0")


def on_both(fn, *tensors):
    """fn on CUDA copies and on CPU copies of the same tensors."""
    return fn(*(t.cuda() for t in tensors)), fn(*(t.cpu() for t in tensors))


def close(a, b, **tol):
    torch.testing.assert_close(a.cpu().to(b.dtype), b, **tol)


# ---- soft_sample -------------------------------------------------------------------------------
SAMPLE_CASES = [  # (name, B, V, dtype, soft_sample keywords, layout of the logits)
    *[(f"{str(d)[6:]}-B{b}", b, V, d, {}, "contiguous")
      for d in (torch.float32, torch.bfloat16, torch.float16) for b in (1, 7, 256)],
    ("T0.7", 64, V, torch.bfloat16, dict(temperature=0.7), "contiguous"),
    ("T1.3-fp16", 300, V, torch.float16, dict(temperature=1.3), "contiguous"),
    ("greedy", 64, V, torch.bfloat16, dict(temperature=0.0), "contiguous"),
    ("greedy-fused", 300, V, torch.float32, dict(temperature=0.0), "contiguous"),
    ("kmax64", 64, V, torch.bfloat16, dict(discrete_k=64), "contiguous"),
    ("kmax128", 7, V, torch.bfloat16, dict(k=100, discrete_k=5, mask_threshold=-8.0),
     "contiguous"),
    ("kmax128-B1", 1, V, torch.float32, dict(k=20, discrete_k=128), "contiguous"),
    ("llama-vocab", 64, 128_256, torch.bfloat16, {}, "contiguous"),
    ("llama-vocab-fused", 300, 128_256, torch.bfloat16, {}, "contiguous"),
    ("last-position", 64, V, torch.bfloat16, {}, "last-position"),  # logits[:, -1] of (B, L, V)
    ("unaligned", 64, V, torch.bfloat16, {}, "unaligned"),  # rows not 16-byte aligned
]


def sample_logits(b: int, vocab: int, dtype: torch.dtype, layout: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if layout == "last-position":
        return (torch.randn(b, 3, vocab, generator=g) * 4).to(dtype)[:, -1]
    if layout == "unaligned":
        return (torch.randn(b, vocab + 8, generator=g) * 4).to(dtype)[:, 3:vocab + 3]
    if layout == "peaked":  # a confident step: a few tokens far above the bulk
        return make_logits(b, vocab, "peaked", g).to(dtype)
    return (torch.randn(b, vocab, generator=g) * 4).to(dtype)


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=lambda c: c[0])
def test_soft_sample(case):
    _, b, vocab, dtype, kw, layout = case
    logits = sample_logits(b, vocab, dtype, layout, seed=b + vocab)
    g = torch.Generator().manual_seed(b)
    thinking = torch.rand(b, generator=g) > 0.2
    seed = torch.randint(0, 2**40, (b,), generator=g)
    kw = dict(dict(k=5), **kw)
    gpu = softgrpo.soft_sample(logits.cuda(), seed=seed.cuda(), offset=9,
                               thinking=thinking.cuda(), **kw)
    cpu = softgrpo.soft_sample(logits, seed=seed, offset=9, thinking=thinking, **kw)
    same = (gpu.ids.cpu() == cpu.ids).all(-1)
    # The top-k is bit-exact; exp/log differ by an ulp between libdevice and the CPU, so a
    # near-tie of two perturbed values may order two slots the other way, rarely.
    assert same.float().mean() >= 0.99
    soft_sets = [ids[thinking].sort(-1).values for ids in (gpu.ids.cpu(), cpu.ids)]
    assert torch.equal(*soft_sets)  # every soft row: the same top-k set
    close(gpu.perturbed[same.cuda()], cpu.perturbed[same], atol=1e-4, rtol=1e-4)
    close(gpu.weights[same.cuda()], cpu.weights[same], atol=1e-4, rtol=1e-4)
    close(gpu.logprob[same.cuda()], cpu.logprob[same], atol=1e-4, rtol=1e-4)


# ---- multiplex_sample ----------------------------------------------------------------------------
MULTIPLEX_CASES = [  # (name, B, V, dtype, multiplex_sample keywords, layout of the logits)
    *[(f"{str(d)[6:]}-B{b}", b, V, d, {}, "contiguous")
      for d in (torch.float32, torch.bfloat16) for b in (1, 64)],  # unfiltered: B*K*V noise
    ("T0.7-k2", 64, V, torch.bfloat16, dict(temperature=0.7, k=2), "contiguous"),
    ("k8-uniform", 64, V, torch.bfloat16, dict(k=8, weighting="uniform"), "contiguous"),
    ("top5", 64, V, torch.bfloat16, dict(top_k=5, top_p=0.9), "contiguous"),
    ("top128-B1", 1, V, torch.float32, dict(top_k=128, top_p=0.95), "contiguous"),
    ("top50-fp16-B300", 300, V, torch.float16, dict(top_k=50), "contiguous"),
    ("llama-vocab", 64, 128_256, torch.bfloat16, {}, "contiguous"),
    ("unaligned", 64, V, torch.bfloat16, dict(top_k=5), "unaligned"),
    ("unaligned-full", 64, V, torch.bfloat16, {}, "unaligned"),
    # benchmarks/bench_multiplex.py's GPU rows: almost every block out of the noise's reach;
    # KMAX 64 with top-p cutting to a few tokens
    ("peaked-B256", 256, V, torch.bfloat16, {}, "peaked"),
    ("top64-p0.95-peaked-B256", 256, V, torch.bfloat16, dict(top_k=64, top_p=0.95), "peaked"),
]


@pytest.mark.parametrize("case", MULTIPLEX_CASES, ids=lambda c: c[0])
def test_multiplex_sample(case):
    _, b, vocab, dtype, kw, layout = case
    logits = sample_logits(b, vocab, dtype, layout, seed=b + vocab + 1)
    seed = torch.randint(0, 2**40, (b,), generator=torch.Generator().manual_seed(b))
    kw = dict(dict(k=3), **kw)
    gpu = softgrpo.multiplex_sample(logits.cuda(), seed=seed.cuda(), offset=9, **kw)
    cpu = softgrpo.multiplex_sample(logits, seed=seed, offset=9, **kw)
    # z = logits / T is bit-exact; the Gumbel noise's log differs by an ulp between libdevice
    # and the CPU, so a near-tie of two scores may pick the other token, rarely
    same = (gpu.ids.cpu() == cpu.ids).all(-1)
    assert same.float().mean() >= 0.99
    assert torch.equal(gpu.kept.cpu(), cpu.kept)
    for got, want in ((gpu.logprobs, cpu.logprobs), (gpu.weights, cpu.weights)):
        close(got[same.cuda()], want[same], atol=1e-4, rtol=1e-4)


# ---- embeddings ----------------------------------------------------------------------------
def records(n, k=5, seed=0, discrete_every=10, vocab=V):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, k), generator=g)
    perturbed = torch.randn(n, k, generator=g) - 2
    ids[::discrete_every, 1:] = 0
    perturbed[::discrete_every, 1:] = 0
    return ids, perturbed


def embedding_tol(dtype):
    return dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_soft_token_embedding_forward_backward(dtype):
    ids, y = records(8192)
    table = torch.randn(V, 1536, generator=torch.Generator().manual_seed(1)).to(dtype)
    grad = torch.randn(8192, 1536).to(dtype)

    def run(table, ids, y, grad):
        table, y = table.clone().requires_grad_(), y.clone().requires_grad_()
        out = softgrpo.soft_token_embedding(table, ids, y, 0.1)
        out.backward(grad)
        return out, table.grad, y.grad

    gpu, cpu = on_both(run, table, ids, y, grad)
    for a, b in zip(gpu, cpu):
        close(a, b, **embedding_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_soft_embedding_and_weights_forward_backward(dtype):
    """The unfused pair: gumbel_softmax_weights (with and without ids) then soft_embedding."""
    ids, y = records(4096, seed=4)
    g = torch.Generator().manual_seed(5)
    table = torch.randn(V, 4096, generator=g).to(dtype)
    grad = torch.randn(4096, 4096, generator=g).to(dtype)
    grad_w = torch.randn(4096, 5, generator=g)

    def run(table, ids, y, grad, grad_w):
        table, y = table.clone().requires_grad_(), y.clone().requires_grad_()
        weights = softgrpo.gumbel_softmax_weights(y, 0.1, ids)
        out = softgrpo.soft_embedding(table, ids, weights)
        plain = softgrpo.gumbel_softmax_weights(y, 0.3)  # no ids: no one-hot rows
        torch.autograd.backward([out, plain], [grad, grad_w])
        return weights, plain, out, table.grad, y.grad

    gpu, cpu = on_both(run, table, ids, y, grad, grad_w)
    for a, b in zip(gpu, cpu):
        close(a, b, **embedding_tol(dtype))


# ---- soft_logprob ------------------------------------------------------------------------------
def test_soft_logprob_forward_backward():
    ids, y = records(4096)
    logits = torch.randn(4096, V, generator=torch.Generator().manual_seed(2)) * 3

    def run(logits, ids, y):
        logits = logits.clone().requires_grad_()
        out = softgrpo.soft_logprob(logits, ids, y, temperature=0.9)
        out.backward(torch.ones_like(out))
        return out, logits.grad

    gpu, cpu = on_both(run, logits, ids, y)
    close(gpu[0], cpu[0], atol=1e-4, rtol=1e-4)
    close(gpu[1], cpu[1], atol=1e-5, rtol=1e-4)


def test_soft_logprob_bf16_past_2_31_elements():
    """bf16 logits with N * V >= 2**31: 64-bit offsets in both kernels. The op is row-wise, so
    the CPU reference runs on the rows around element 2**31 and at both ends."""
    n = 2**31 // V + 64
    g = torch.Generator(device="cuda").manual_seed(6)
    logits = torch.randn(n, V, generator=g, device="cuda", dtype=torch.bfloat16) * 3
    ids, y = records(n, seed=7)
    edge = 2**31 // V
    rows = torch.tensor([0, 1, edge - 1, edge, edge + 1, n - 2, n - 1])
    ids[rows[::2], 1:], y[rows[::2], 1:] = 0, 0.0  # discrete: full-row passes at the far end
    leaf = logits.requires_grad_()
    out = softgrpo.soft_logprob(leaf, ids.cuda(), y.cuda(), temperature=1.1)
    out.backward(torch.ones_like(out))
    want_logits = logits.detach()[rows.cuda()].cpu().requires_grad_()
    want = softgrpo.soft_logprob(want_logits, ids[rows], y[rows], temperature=1.1)
    want.backward(torch.ones_like(want))
    close(out[rows.cuda()], want, atol=1e-3, rtol=1e-3)
    close(leaf.grad[rows.cuda()], want_logits.grad, atol=1e-3, rtol=1e-2)


# ---- soft_logprob_from_hidden ------------------------------------------------------------------
@pytest.mark.parametrize("hidden_size,bias,dtype", [(512, False, torch.bfloat16),
                                                    (1536, True, torch.bfloat16),
                                                    (4096, True, torch.float32)])
def test_soft_logprob_from_hidden_forward_backward(hidden_size, bias, dtype):
    n = 1024
    ids, y = records(n)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(n, hidden_size, generator=g).to(dtype)
    weight = (torch.randn(V, hidden_size, generator=g) / hidden_size**0.5).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else torch.zeros(0)

    def run(hidden, weight, b, ids, y):
        hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        b = b.clone().requires_grad_() if bias else None
        out = softgrpo.soft_logprob_from_hidden(hidden, weight, ids, y, bias=b)
        out.backward(torch.ones_like(out))
        return out, hidden.grad, weight.grad, *([b.grad] if bias else [])

    gpu, cpu = on_both(run, hidden, weight, b, ids, y)
    tol = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for a, want in zip(gpu, cpu):
        close(a, want, **tol)


@pytest.mark.parametrize("kept_width,bias,dtype", [(0, False, torch.bfloat16),
                                                   (50, True, torch.bfloat16),
                                                   (128, True, torch.float32)])
def test_multiplex_logprob_from_hidden_forward_backward(kept_width, bias, dtype):
    n, hidden_size, k = 256, 1536, 3  # without a kept set every row takes the full head
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(n, hidden_size, generator=g).to(dtype)
    weight = (torch.randn(V, hidden_size, generator=g) / hidden_size**0.5).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else torch.zeros(0)
    kept = torch.stack([torch.randperm(V, generator=g)[:max(kept_width, k)]
                        for _ in range(n)])[:, :kept_width]
    ids = (kept if kept_width else torch.randint(0, V, (n, k), generator=g))[:, :k].clone()
    y = -torch.rand(n, k, generator=g) - 0.1
    ids[::10, 1:], y[::10, 1:] = 0, -float("inf")  # discrete rows

    def run(hidden, weight, b, ids, y, kept):
        hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        b = b.clone().requires_grad_() if bias else None
        out = softgrpo.multiplex_logprob_from_hidden(hidden, weight, ids, y, bias=b,
                                                     kept=kept if kept_width else None)
        out.backward(torch.ones_like(out))
        return out, hidden.grad, weight.grad, *([b.grad] if bias else [])

    gpu, cpu = on_both(run, hidden, weight, b, ids, y, kept)
    tol = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for a, want in zip(gpu, cpu):
        close(a, want, **tol)


# ---- torch.library ------------------------------------------------------------------------------
def test_ops_compile_and_opcheck_on_cuda():
    ids, y = records(64)
    table = torch.randn(V, 64, device="cuda")
    torch.library.opcheck(torch.ops.softgrpo.soft_token_embedding.default,
                          (table.requires_grad_(), ids.cuda(), y.cuda().requires_grad_(), 0.1))

    @torch.compile(fullgraph=True)
    def step(logits):
        s = softgrpo.soft_sample(logits, 5, seed=1)
        return softgrpo.soft_logprob(logits, s.ids, s.perturbed)

    logits = torch.randn(64, V, device="cuda")
    s = softgrpo.soft_sample(logits, 5, seed=1)
    want = softgrpo.soft_logprob(logits.cpu(), s.ids.cpu(), s.perturbed.cpu())  # CPU reference
    close(step(logits), want, atol=1e-4, rtol=1e-4)
