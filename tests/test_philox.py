"""The counter-based noise: known answers, Triton parity, and its statistics."""

import math

import pytest
import torch

from softgrpo import noise_key, philox

EULER_GAMMA = 0.5772156649015329


def test_known_answer_zero_key_and_counter():
    # Random123's Philox4x32-10 known-answer vector: key 0, counter 0 -> first word 0x6627e8d5.
    zero = torch.zeros(1, dtype=torch.int64)
    assert int(philox.philox_uint32(zero, zero, zero)) == 0x6627E8D5


def test_matches_triton_randint():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def draw(seed_ptr, offset_ptr, token_ptr, out_ptr):
        seed = tl.load(seed_ptr)
        r = tl.randint(seed, (tl.load(offset_ptr) << 32) | tl.load(token_ptr))
        tl.store(out_ptr, r.to(tl.int64) & 0xFFFFFFFF)

    g = torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 2**62, (12,), generator=g)
    offsets = torch.randint(0, 2**31 - 1, (12,), generator=g)
    tokens = torch.randint(0, 152_000, (12,), generator=g)
    out = torch.empty(12, dtype=torch.int64)
    for i in range(12):
        draw[(1,)](seeds[i:i + 1], offsets[i:i + 1], tokens[i:i + 1], out[i:i + 1])
    assert torch.equal(out, philox.philox_uint32(seeds, offsets, tokens))


def _draws(n: int) -> torch.Tensor:
    return philox.gumbel(torch.tensor(12345), torch.arange(n) // 1000, torch.arange(n) % 1000)


def test_uniforms_strictly_inside_unit_interval_and_noise_finite():
    u = philox.uniform(torch.tensor(7), torch.arange(200_000), torch.tensor(3))
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert torch.isfinite(_draws(200_000)).all()
    # a key whose top 24 bits are all ones: (2**24 - 0.5) * 2**-24 rounds to 1.0 in fp32
    # (g = +inf); from 23 bits the largest uniform is 1 - 2**-24
    assert philox.philox_uint32(torch.tensor(331207), torch.tensor(1000), torch.tensor(0)) >> 8 \
        == 2**24 - 1
    assert philox.uniform(torch.tensor(331207), torch.tensor(1000), torch.tensor(0)) \
        == 1 - 2**-24
    assert torch.isfinite(philox.gumbel(torch.tensor(331207), torch.tensor(1000),
                                        torch.tensor(0)))


def test_unclamped_gumbel_mean_and_variance():
    g = _draws(1_000_000).double()
    # Standard errors: 1.28e-3 (mean), ~2.4e-3 (variance); the bounds are > 7 of them.
    assert abs(float(g.mean()) - EULER_GAMMA) < 0.01
    assert abs(float(g.var()) - math.pi**2 / 6) < 0.02


def test_clamp_rates():
    g = _draws(1_000_000)
    low_rate = float((g < -1.5).double().mean())
    high_rate = float((g > 3.0).double().mean())
    assert abs(low_rate - math.exp(-math.exp(1.5))) < 1e-3  # P(g < -1.5) = 0.01131
    assert abs(high_rate - (1 - math.exp(-math.exp(-3.0)))) < 2e-3  # P(g > 3) = 0.04857


def test_noise_key_packs_seed_and_sequence():
    assert noise_key(7, 3) == (3 << 32) | 7
    assert torch.equal(noise_key(7, torch.tensor([0, 3])), torch.tensor([7, (3 << 32) | 7]))
    with pytest.raises(ValueError, match="seed"):
        noise_key(2**32, 0)
    with pytest.raises(ValueError, match="sequence"):
        noise_key(0, -1)


def test_streams_are_the_other_words_of_philox():
    # Random123's known-answer vector (key 0, counter 0): all four words; stream s reads word
    # s % 4 of counter block s // 4, stream 0 is the single-stream noise
    zero = torch.zeros(1, dtype=torch.int64)
    words = [int(philox.philox_uint32(zero, zero, zero, s)) for s in range(4)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    g = torch.Generator().manual_seed(3)
    seed, offset, token = (torch.randint(0, 2**31, (64,), generator=g) for _ in range(3))
    stream = torch.randint(0, 11, (64,), generator=g)
    one_by_one = torch.stack([philox.philox_uint32(seed[i], offset[i], token[i], int(stream[i]))
                              for i in range(64)])
    assert torch.equal(philox.philox_uint32(seed, offset, token, stream), one_by_one)
    assert torch.equal(philox.gumbel(seed, offset, token, 0), philox.gumbel(seed, offset, token))


def test_streams_match_triton_philox():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def draw(seed_ptr, offset_ptr, token_ptr, out_ptr):
        seed = tl.load(seed_ptr)
        c0 = tl.load(token_ptr).to(tl.uint32)
        c1 = tl.load(offset_ptr).to(tl.uint32)
        for block in tl.static_range(2):
            w0, w1, w2, w3 = tl.philox(seed, c0, c1, tl.full([], block, tl.uint32),
                                       tl.full([], 0, tl.uint32))
            tl.store(out_ptr + 4 * block + 0, w0.to(tl.int64) & 0xFFFFFFFF)
            tl.store(out_ptr + 4 * block + 1, w1.to(tl.int64) & 0xFFFFFFFF)
            tl.store(out_ptr + 4 * block + 2, w2.to(tl.int64) & 0xFFFFFFFF)
            tl.store(out_ptr + 4 * block + 3, w3.to(tl.int64) & 0xFFFFFFFF)

    seed, offset, token = torch.tensor([2**62 + 5]), torch.tensor([2**31 - 2]), torch.tensor([151_000])
    out = torch.empty(8, dtype=torch.int64)
    draw[(1,)](seed, offset, token, out)
    want = torch.stack([philox.philox_uint32(seed, offset, token, s)[0] for s in range(8)])
    assert torch.equal(out, want)
