"""soft_sample (spec section 2): reference vs float64 math, statistics, determinism, errors."""

import math

import pytest
import torch

import softgrpo
from softgrpo import philox


def naive_step(z, k, temperature, top_p, tau, c, seed, offset, thinking, clamp, dk, dtop_p,
               threshold=-3.0, eps=1e-6):
    """Spec section 2 for one row, written literally in float64 with Python loops."""
    z = z.double() / (temperature or 1.0)
    order = sorted(range(len(z)), key=lambda v: (-float(z[v]), v))
    probs = torch.softmax(z, -1)

    def filtered(width, p_cut):
        top = order[:width]
        p = probs[top] / probs[top].sum()
        mass, before, keep = 0.0, 0.0, []
        for i, pi in enumerate(p.tolist()):
            if i == 0 or pi != p[i - 1]:  # tied slots are cut or kept together
                before = mass
            keep.append(before <= p_cut)
            mass += pi
        p = p * torch.tensor(keep, dtype=torch.float64)
        return top, p / p.sum()

    def noise(tokens):
        if temperature == 0:
            return torch.zeros(len(tokens), dtype=torch.float64)
        u = philox.uniform(torch.tensor(seed), torch.tensor(offset), torch.tensor(tokens))
        return -torch.log(-torch.log(u.double()))

    if thinking:
        top, p = filtered(k, top_p)
        l = torch.log(p + eps)
        g = noise(top).clamp(*clamp)
        y = torch.where(p == 0, -math.inf, l + c * g)  # a slot cut by top-p: -inf, weight 0
        slots = sorted(range(k), key=lambda i: -float(y[i]))
        y, g, l = y[slots], g[slots], l[slots]
        kept = (l > threshold).double()
        logprob = float((kept * (-g - torch.exp(-g))).sum() / kept.sum())
        return [top[i] for i in slots], y, torch.softmax(y / tau, -1), logprob
    top, p = filtered(dk, dtop_p)
    score = torch.log(p + eps) + noise(top)
    score[p == 0] = -math.inf
    j = int(score.argmax())
    s = top[j]
    logprob = float(z[s] - torch.logsumexp(z, -1))
    ids = [s] + [0] * (k - 1)
    one_hot = torch.zeros(k, dtype=torch.float64)
    one_hot[0] = 1
    y = torch.zeros(k, dtype=torch.float64)
    y[0] = math.log(float(p[j]) + eps)
    return ids, y, one_hot, logprob


CASES = [
    dict(k=5, temperature=1.0, top_p=0.95, tau=0.1, noise_scale=1.0),
    dict(k=1, temperature=0.7, top_p=1.0, tau=0.5, noise_scale=0.5),
    dict(k=2, temperature=1.3, top_p=0.3, tau=1.0, noise_scale=1.0),
    dict(k=8, temperature=0.0, top_p=0.9, tau=0.1, noise_scale=1.0),
    dict(k=6, temperature=1.0, top_p=0.8, tau=0.2, noise_scale=1.0, discrete_k=3,
         discrete_top_p=0.6, noise_clamp=None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_reference_matches_float64_spec(case):
    g = torch.Generator().manual_seed(1)
    b, v = 9, 37
    logits = torch.randn(b, v, generator=g) * 3
    logits[2, :30] = -math.inf  # fewer finite values than some k
    thinking = torch.tensor([True, False] * 4 + [True])
    seed = torch.randint(0, 2**62, (b,), generator=g)
    offset = torch.randint(0, 2**31, (b,), generator=g)
    out = softgrpo.soft_sample(logits, seed=seed, offset=offset, thinking=thinking, **case)
    clamp = case.get("noise_clamp", (-1.5, 3.0)) or (-math.inf, math.inf)
    for i in range(b):
        ids, y, w, lp = naive_step(
            logits[i], case["k"], case["temperature"], case["top_p"], case["tau"],
            case["noise_scale"], int(seed[i]), int(offset[i]), bool(thinking[i]), clamp,
            case.get("discrete_k", case["k"]), case.get("discrete_top_p", case["top_p"]))
        assert out.ids[i].tolist() == ids
        assert out.token[i] == ids[0]
        torch.testing.assert_close(out.perturbed[i].double(), y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.weights[i].double(), w, atol=1e-5, rtol=1e-4)
        assert out.logprob[i].item() == pytest.approx(lp, abs=1e-5)


def test_outputs_have_documented_dtypes_and_shapes():
    out = softgrpo.soft_sample(torch.randn(4, 20, dtype=torch.bfloat16), 3, seed=1)
    assert out.ids.dtype == torch.int64 and out.ids.shape == (4, 3)
    assert out.perturbed.dtype == out.weights.dtype == out.logprob.dtype == torch.float32
    assert out.token.shape == out.logprob.shape == (4,)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(4))


def test_greedy_is_noise_free_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(2))
    a = softgrpo.soft_sample(logits, temperature=0.0, seed=1)
    b = softgrpo.soft_sample(logits, temperature=0.0, seed=99, offset=5)
    assert torch.equal(a.token, logits.argmax(-1))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.perturbed, b.perturbed)
    torch.testing.assert_close(a.logprob, torch.full((6,), -1.0))  # Gumbel log-density at 0


def test_gumbel_max_frequencies_match_filtered_distribution():
    """Discrete rows are exact samples of the top-k / top-p filtered distribution."""
    n, k, top_p = 200_000, 5, 0.9
    row = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0])
    out = softgrpo.soft_sample(row.expand(n, -1), k, top_p=top_p, seed=torch.arange(n),
                               thinking=torch.zeros(n, dtype=torch.bool))
    p = torch.softmax(row[:k].double(), -1)
    p[(p.cumsum(-1) - p) > top_p] = 0
    p /= p.sum()
    freq = torch.bincount(out.token, minlength=len(row)).double() / n
    tv = 0.5 * float((freq[:k] - p).abs().sum() + freq[k:].sum())
    assert tv < 0.01  # expected ~0.002 at this n


def test_soft_rows_without_clamp_are_gumbel_max_samples():
    n = 100_000
    row = torch.tensor([1.0, 0.5, 0.0, -0.5, -2.0])
    out = softgrpo.soft_sample(row.expand(n, -1), 4, top_p=1.0, seed=torch.arange(n),
                               noise_clamp=None)
    p = torch.softmax(row[:4].double(), -1)
    freq = torch.bincount(out.token, minlength=5).double()[:4] / n
    assert 0.5 * float((freq - p).abs().sum()) < 0.01


def test_clamping_fires_at_the_gumbel_tail_rates():
    n, k = 40_000, 5
    out = softgrpo.soft_sample(torch.randn(n, 30, generator=torch.Generator().manual_seed(3)), k,
                               top_p=1.0, seed=torch.arange(n), offset=7)
    # With top_p = 1 no slot is cut, so y - l is the clamped noise; recompute l exactly.
    z = torch.randn(n, 30, generator=torch.Generator().manual_seed(3))
    vals = z.gather(-1, out.ids)
    noise = out.perturbed - torch.log(torch.softmax(vals, -1) + 1e-6)
    low = float((noise <= -1.5 + 1e-4).double().mean())
    high = float((noise >= 3.0 - 1e-4).double().mean())
    assert abs(low - math.exp(-math.exp(1.5))) < 2.5e-3
    assert abs(high - (1 - math.exp(-math.exp(-3.0)))) < 5e-3


def test_same_keys_same_outputs_and_layout_independence():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(12, 64, generator=g)
    seed = torch.randint(0, 2**40, (12,), generator=g)
    offset = torch.arange(12) * 3
    thinking = torch.rand(12, generator=g) > 0.3
    full = softgrpo.soft_sample(logits, seed=seed, offset=offset, thinking=thinking)
    again = softgrpo.soft_sample(logits, seed=seed, offset=offset, thinking=thinking)
    for a, b in zip(full, again):
        assert torch.equal(a, b)
    perm = torch.randperm(12, generator=g)
    permuted = softgrpo.soft_sample(logits[perm], seed=seed[perm], offset=offset[perm],
                                    thinking=thinking[perm])
    alone = softgrpo.soft_sample(logits[5:6], seed=seed[5:6], offset=offset[5:6],
                                 thinking=thinking[5:6])
    for a, p, one in zip(full, permuted, alone):
        assert torch.equal(a[perm], p)
        assert torch.equal(a[5:6], one)
    other = softgrpo.soft_sample(logits, seed=seed, offset=offset + 1, thinking=thinking)
    assert not torch.equal(full.perturbed, other.perturbed)


def test_noise_follows_token_ids_not_ranks():
    """Swapping two logits swaps their ranks but each token keeps its own noise."""
    logits = torch.tensor([[3.0, 2.9, 1.0, 0.5, 0.0, -1.0]])
    swapped = logits[:, [1, 0, 2, 3, 4, 5]]
    a = softgrpo.soft_sample(logits, 4, top_p=1.0, seed=11)
    b = softgrpo.soft_sample(swapped, 4, top_p=1.0, seed=11)
    la = torch.log(torch.softmax(logits[0, a.ids[0]], -1) + 1e-6)
    lb = torch.log(torch.softmax(swapped[0, b.ids[0]], -1) + 1e-6)
    noise_a = dict(zip(a.ids[0].tolist(), (a.perturbed[0] - la).tolist()))
    noise_b = dict(zip(b.ids[0].tolist(), (b.perturbed[0] - lb).tolist()))
    assert set(noise_a) == set(noise_b) == {0, 1, 2, 3}
    for token, noise in noise_a.items():  # tokens 0 and 1 swapped ranks, not their noise
        assert noise == pytest.approx(noise_b[token], abs=1e-6)


def test_ties_break_to_the_smaller_id():
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, 2.0]], dtype=torch.bfloat16)
    out = softgrpo.soft_sample(logits, 3, temperature=0.0)
    assert out.ids[0].tolist() == [1, 2, 4]


def test_non_contiguous_and_half_inputs():
    base = torch.randn(20, 8, generator=torch.Generator().manual_seed(5))
    view = base.t()  # (8, 20), not contiguous
    a = softgrpo.soft_sample(view, 4, seed=3)
    b = softgrpo.soft_sample(view.contiguous(), 4, seed=3)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.perturbed, b.perturbed)
    softgrpo.soft_sample(view.half(), 4, seed=3)


def test_k_larger_than_twenty_rejected_with_default_mask():
    with pytest.raises(ValueError, match="k=21"):
        softgrpo.soft_sample(torch.randn(2, 40), 21)
    softgrpo.soft_sample(torch.randn(2, 40), 21, mask_threshold=-4.0)


BAD = [
    (dict(logits=torch.randn(5)), ValueError, "logits must be 2-D"),
    (dict(logits=torch.randint(0, 3, (2, 5))), TypeError, "logits must have dtype"),
    (dict(k=0), ValueError, "k must be"),
    (dict(k=11), ValueError, "k must be"),
    (dict(k=2.0), TypeError, "k must be an int"),
    (dict(tau=0.0), ValueError, "tau"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(noise_scale=-1.0), ValueError, "noise_scale"),
    (dict(noise_clamp=(3.0, -1.5)), ValueError, "noise_clamp"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=torch.zeros(3, dtype=torch.int64)), ValueError, "seed must have shape"),
    (dict(offset=torch.zeros(2)), TypeError, "offset must have dtype"),
    (dict(thinking=torch.ones(2)), TypeError, "thinking must have dtype"),
    (dict(thinking=torch.ones(3, dtype=torch.bool)), ValueError, "thinking must have shape"),
]


def assert_refused(sampler, kwargs: dict, error: type, message: str) -> None:
    """sampler(logits (2, 10), k=3, **kwargs) raises error matching message."""
    with pytest.raises(error, match=message):
        sampler(**{"logits": torch.randn(2, 10), "k": 3, **kwargs})


@pytest.mark.parametrize("kwargs,error,message", BAD, ids=lambda x: str(x)[:30])
def test_bad_arguments_name_the_argument(kwargs, error, message):
    assert_refused(softgrpo.soft_sample, kwargs, error, message)


def test_nan_and_fully_masked_rows_rejected_but_inf_masking_allowed():
    logits = torch.randn(3, 10)
    logits[1, :7] = -math.inf
    softgrpo.soft_sample(logits, 3)
    logits[2, 4] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        softgrpo.soft_sample(logits, 3)
    logits[2, 4] = 0.0
    logits[0] = -math.inf
    with pytest.raises(ValueError, match="every value is -inf"):
        softgrpo.soft_sample(logits, 3)
