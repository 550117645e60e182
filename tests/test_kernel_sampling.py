"""Triton soft_sample kernel (kernels/sampling.py) vs the reference, through the interpreter."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported

import math

import pytest
import torch

from softgrpo import reference as ref
from softgrpo.kernels import sampling as kernel


def make_logits(b, v, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, v, generator=g) * scale).to(dtype)


def row_keys(b, seed=1):
    """Per-row int64 seeds over the whole range and offsets in [0, 2**31)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2**63 - 1, (b,), generator=g),
            torch.randint(0, 2**31 - 1, (b,), generator=g))


def mixed_thinking(b, seed=2):
    thinking = torch.rand(b, generator=torch.Generator().manual_seed(seed)) < 0.5
    thinking[0] = True
    thinking[-1] = b == 1
    return thinking


def op_args(b, k=5, temperature=1.0, top_p=0.95, tau=0.1, noise_scale=1.0, keys=None,
            thinking=None, clamp=(-1.5, 3.0), discrete_k=None, discrete_top_p=None,
            mask_threshold=-3.0, eps=1e-6):
    """The reference's positional arguments, defaults as in softgrpo.soft_sample."""
    seed, offset = row_keys(b) if keys is None else keys
    thinking = mixed_thinking(b) if thinking is None else thinking
    return (k, temperature, top_p, tau, noise_scale, seed, offset, thinking, *clamp,
            k if discrete_k is None else discrete_k,
            top_p if discrete_top_p is None else discrete_top_p, mask_threshold, eps)


def check(logits, args, **launch):
    """Kernel == reference: ids exactly, values to 1e-5; lse == logsumexp(logits / T)."""
    expected = ref.soft_sample(logits, *args)
    got = kernel.soft_sample(logits, *args, **launch)
    assert len(got) == 5
    ids, perturbed, weights, logprob, lse = got
    assert ids.dtype == torch.int64 and perturbed.dtype == weights.dtype == torch.float32
    torch.testing.assert_close(ids, expected[0], rtol=0, atol=0)
    for value, want in zip((perturbed, weights, logprob), expected[1:]):
        torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-5)
    temperature = args[1] or 1.0
    torch.testing.assert_close(lse, torch.logsumexp(logits.float() / temperature, -1),
                               rtol=1e-6, atol=1e-5)
    return got


SHAPES = [  # B, V, dtype, launch: fused single block, fused many blocks, split in chunks
    (3, 257, torch.float32, dict(block_v=64, n_chunks=1)),
    (17, 200, torch.bfloat16, dict()),
    (1, 1000, torch.float16, dict(block_v=32, n_chunks=5)),
    (3, 300, torch.bfloat16, dict(block_v=16, n_chunks=4)),
]
SETTINGS = [
    dict(k=5, temperature=0.7, top_p=0.9),
    dict(k=8, temperature=1.0, top_p=1.0, tau=0.5, noise_scale=0.5),
    dict(k=2, temperature=1.3, top_p=0.95, discrete_k=7, discrete_top_p=0.6),
    dict(k=1, temperature=0.6, discrete_k=4),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-V{s[1]}-{s[2]}-{s[3]}")
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: str(s["k"]))
def test_matches_reference(shape, setting):
    b, v, dtype, launch = shape
    check(make_logits(b, v, dtype), op_args(b, **setting), **launch)


@pytest.mark.parametrize("launch", [dict(), dict(block_v=16, n_chunks=3)])
def test_greedy_with_ties(launch):
    """T = 0: no noise, token = argmax; tied logits keep the smaller id first in every order."""
    logits = torch.randint(-2, 3, (6, 90), generator=torch.Generator().manual_seed(3)).float()
    for k, dk in ((5, 5), (8, 3)):
        ids, *_ = check(logits, op_args(6, k=k, temperature=0.0, discrete_k=dk), **launch)
        assert (ids[:, 0] == logits.argmax(-1)).all()  # torch.argmax takes the first maximum


@pytest.mark.parametrize("launch", [dict(), dict(block_v=16, n_chunks=5)])
def test_heavy_ties_with_noise(launch):
    """Integer-valued fp32 and coarse bf16 logits: many equal values at the k-th place."""
    g = torch.Generator().manual_seed(4)
    check(torch.randint(-3, 2, (5, 120), generator=g).float(), op_args(5, k=8), **launch)
    check((torch.randn(5, 120, generator=g) * 0.1).bfloat16(), op_args(5, k=5), **launch)


def test_small_top_p_cuts_slots():
    """A nucleus that keeps a strict subset of the k slots: cut slots carry -inf, weight 0."""
    logits = make_logits(8, 150, scale=1.0, seed=5)
    args = op_args(8, k=8, top_p=0.3, discrete_k=6, discrete_top_p=0.2,
                   thinking=torch.ones(8, dtype=torch.bool))
    _, perturbed, weights, *_ = check(logits, args, block_v=32, n_chunks=2)
    cut = perturbed == -math.inf
    assert 8 < cut.sum() < 56 and (weights[cut] == 0).all() and not cut[:, 0].any()


@pytest.mark.parametrize("launch", [dict(), dict(block_v=16, n_chunks=3)])
def test_nucleus_keeps_ties_together(launch):
    """p_hat 0.4, 0.2, 0.2, 0.2 with top_p 0.5: the tie of slots 1-3 starts at mass 0.4, so all
    three stay (cutting by order would keep slot 1 only), as flashinfer's top-p does."""
    logits = torch.full((2, 40), -30.0)
    logits[:, :4] = torch.log(torch.tensor([0.4, 0.2, 0.2, 0.2]))
    args = op_args(2, k=4, top_p=0.5, thinking=torch.tensor([True, False]))
    _, perturbed, *_ = check(logits, args, **launch)
    assert (perturbed[0] > -math.inf).all()


def test_noise_of_an_all_ones_key_is_finite():
    """Philox key whose top 24 bits are all ones: the uniform stays below 1 (23-bit draws)."""
    logits = torch.zeros(1, 8)
    keys = (torch.tensor([331207]), torch.tensor([1000]))
    _, perturbed, *_ = check(logits, op_args(1, k=5, top_p=1.0, keys=keys,
                                             clamp=(-math.inf, math.inf),
                                             thinking=torch.tensor([True])))
    assert torch.isfinite(perturbed).all()


@pytest.mark.parametrize("launch", [dict(), dict(block_v=16, n_chunks=4)])
def test_masked_entries(launch):
    """-inf entries, including rows with fewer finite values than k or discrete_k."""
    logits = make_logits(5, 80, seed=6)
    logits[torch.rand(5, 80, generator=torch.Generator().manual_seed(7)) < 0.5] = -math.inf
    logits[1, 3:] = -math.inf  # 3 finite values
    logits[2] = -math.inf
    logits[2, -1] = 2.0  # 1 finite value, in the last block
    logits[3] = -math.inf
    logits[3, 40] = 7.0
    check(logits, op_args(5, k=5, discrete_k=8), **launch)


@pytest.mark.parametrize("launch", [dict(), dict(block_v=16, n_chunks=3)])
@pytest.mark.parametrize("descending", [True, False])
def test_sorted_rows(launch, descending):
    """Sorted logits put a block's whole top-k in one of _prime's groups (its worst case: one
    key from the group maxima, the others by inserts), at the start or at the end of a block."""
    logits = make_logits(4, 200, seed=15).sort(-1, descending=descending).values
    check(logits, op_args(4, k=8), **launch)


def test_rows_shorter_than_kmax():
    """Fewer tokens than KMAX: the first block's primed set and chunk 0's set hold empty
    slots."""
    check(make_logits(3, 6, seed=16), op_args(3, k=5))  # KMAX 8, fused
    check(make_logits(2, 50, seed=17), op_args(2, k=40, mask_threshold=-6.0))  # KMAX 64, split


def test_noise_clamp_off_and_scale():
    logits = make_logits(9, 140, torch.bfloat16, seed=8)
    check(logits, op_args(9, k=6, clamp=(-math.inf, math.inf), noise_scale=2.0, tau=0.3),
          block_v=32, n_chunks=3)


def test_row_keys_at_the_edges():
    """Seeds over all of int64 (negative too), offsets near and past 2**31 (taken mod 2**32)."""
    b = 8
    seed = torch.tensor([2**63 - 1, -(2**63), -1, 0, 1, 2**32 - 1, 2**32, 123456789123456789])
    offset = torch.tensor([2**31 - 1, 2**31 - 2, 2**31, 2**32 - 1, 2**32 + 5, -1, 0, 7])
    check(make_logits(b, 64, seed=9), op_args(b, k=5, keys=(seed, offset)))


def test_wide_k():
    """KMAX 32 (fused), 64 (split in chunks) and 128 (two stages, one chunk); above, an error."""
    logits = make_logits(2, 160, seed=10)
    check(logits, op_args(2, k=20, discrete_k=32, mask_threshold=-4.0), block_v=64)
    check(logits, op_args(2, k=40, discrete_k=64, mask_threshold=-6.0), block_v=64, n_chunks=2)
    check(logits, op_args(2, k=70, discrete_k=3, mask_threshold=-8.0))
    with pytest.raises(ValueError, match="k and discrete_k"):
        kernel.soft_sample(logits, *op_args(2, k=129, mask_threshold=-8.0))


def test_non_contiguous_views():
    """A row-strided view is read in place; a transposed one (column stride != 1) too."""
    big = make_logits(12, 400, torch.bfloat16, seed=11)
    view = big[::3, 5:302]
    assert view.stride() == (1200, 1)
    check(view, op_args(4), block_v=64, n_chunks=2)
    transposed = make_logits(250, 4, seed=12).t()
    check(transposed, op_args(4, k=3))


def test_split_is_bit_identical_to_fused():
    """Chunking changes only the normaliser's summation order, never the sample."""
    logits = make_logits(4, 500, torch.bfloat16, seed=13)
    args = op_args(4, k=5, temperature=0.8)
    fused = kernel.soft_sample(logits, *args, block_v=32, n_chunks=1)
    split = kernel.soft_sample(logits, *args, block_v=32, n_chunks=6)
    for a, b in zip(fused[:3], split[:3]):
        assert torch.equal(a, b)
    torch.testing.assert_close(fused[3], split[3], rtol=0, atol=1e-5)


@pytest.mark.parametrize("launch", [dict(), dict(block_v=16, n_chunks=3)])
def test_lse_flags_nan_and_all_masked_rows(launch):
    """lse is NaN for a row holding a NaN and -inf for an all -inf row (the op's data check);
    the other rows are unaffected."""
    logits = make_logits(4, 70, seed=14)
    logits[1, 50] = math.nan
    logits[2] = -math.inf
    args = op_args(4, k=4)
    ids, perturbed, weights, logprob, lse = kernel.soft_sample(logits, *args, **launch)
    assert math.isnan(lse[1]) and lse[2] == -math.inf
    clean = torch.tensor([0, 3])
    want = ref.soft_sample(logits[clean], *op_args(2, k=4, keys=(args[5][clean], args[6][clean]),
                                                   thinking=args[7][clean]))
    torch.testing.assert_close(ids[clean], want[0], rtol=0, atol=0)
    for value, expected in zip((perturbed, weights, logprob), want[1:]):
        torch.testing.assert_close(value[clean], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse[clean], torch.logsumexp(logits[clean], -1))
