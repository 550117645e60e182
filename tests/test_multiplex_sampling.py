"""multiplex_sample (spec section 10): reference vs float64 math, draw statistics against the
filtered law, determinism and layout independence, errors."""

import math

import pytest
import torch
from test_sampling import assert_refused

import softgrpo
from softgrpo import philox


def naive_step(z, k, temperature, top_k, top_p, uniform, seed, offset):
    """The release's step for one row, written literally in float64 with Python loops: the
    joint top-k / top-p filter (top-p on the full-vocabulary mass), K Gumbel-max draws, one
    Philox stream per draw; ties to the smaller id."""
    z = z.double() / temperature
    probs = torch.softmax(z, -1)
    order = sorted(range(len(z)), key=lambda v: (-float(z[v]), v))
    if top_k is None:
        kept = [v for v in order if probs[v] > 0]
    else:
        kept, mass, before = [], 0.0, 0.0
        for i, v in enumerate(order[:top_k]):
            if i == 0 or probs[v] != probs[order[i - 1]]:  # ties are cut or kept together
                before = mass
            if before <= top_p and probs[v] > 0:
                kept.append(v)
            mass += float(probs[v])
    p_hat = {v: float(probs[v]) / sum(float(probs[u]) for u in kept) for v in kept}
    ids = []
    for j in range(k):
        g = -torch.log(-torch.log(philox.uniform(torch.tensor(seed), torch.tensor(offset),
                                                 torch.tensor(kept), j).double()))
        score = [(float(z[v] + g[i]), -v) for i, v in enumerate(kept)]
        ids.append(-max(score)[1])
    logprobs = torch.tensor([math.log(p_hat[v]) for v in ids], dtype=torch.float64)
    weights = (torch.full((k,), 1.0 / k, dtype=torch.float64) if uniform
               else torch.softmax(logprobs, -1))
    width = 0 if top_k is None else top_k
    kept_row = kept + [-1] * (width - len(kept)) if width else []
    return ids, logprobs, weights, kept_row


CASES = [
    dict(k=3),
    dict(k=2, temperature=0.7, top_k=5, top_p=0.9),
    dict(k=5, temperature=1.3, top_k=8, top_p=1.0, weighting="uniform"),
    dict(k=4, top_k=3, top_p=0.3),
    dict(k=1, top_k=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_reference_matches_float64_spec(case):
    g = torch.Generator().manual_seed(1)
    b, v = 9, 37
    logits = torch.randn(b, v, generator=g) * 3
    logits[2, :33] = -math.inf  # fewer finite values than some top_k
    seed = torch.randint(0, 2**62, (b,), generator=g)
    offset = torch.randint(0, 2**31, (b,), generator=g)
    out = softgrpo.multiplex_sample(logits, seed=seed, offset=offset, **case)
    for i in range(b):
        ids, lp, w, kept = naive_step(logits[i], case["k"], case.get("temperature", 1.0),
                                      case.get("top_k"), case.get("top_p", 1.0),
                                      case.get("weighting") == "uniform", int(seed[i]),
                                      int(offset[i]))
        assert out.ids[i].tolist() == ids and int(out.token[i]) == ids[0]
        torch.testing.assert_close(out.logprobs[i].double(), lp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.weights[i].double(), w, atol=1e-6, rtol=1e-5)
        assert out.logprob[i].item() == pytest.approx(float(lp.sum()), abs=1e-5)
        assert out.kept[i].tolist() == kept


def test_outputs_have_documented_dtypes_and_shapes():
    out = softgrpo.multiplex_sample(torch.randn(4, 20, dtype=torch.bfloat16), 3, top_k=6,
                                    top_p=0.8, seed=1)
    assert out.ids.dtype == out.kept.dtype == torch.int64
    assert out.ids.shape == out.logprobs.shape == out.weights.shape == (4, 3)
    assert out.kept.shape == (4, 6)
    assert out.logprobs.dtype == out.weights.dtype == out.logprob.dtype == torch.float32
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(4))
    assert softgrpo.multiplex_sample(torch.randn(4, 20), 2).kept.shape == (4, 0)


def _law(row, temperature=1.0, top_k=None, top_p=1.0):
    z = row.double() / temperature
    p = torch.softmax(z, -1)
    if top_k is not None:
        order = z.argsort(descending=True, stable=True)
        keep = torch.zeros_like(p, dtype=torch.bool)
        cum = p[order].cumsum(-1) - p[order]
        keep[order[:top_k]] = cum[:top_k] <= top_p
        p = torch.where(keep, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("filters", [dict(), dict(top_k=4, top_p=0.8), dict(top_k=6)],
                         ids=["full", "top4-p0.8", "top6"])
def test_draws_follow_the_filtered_law_and_are_independent(filters):
    """Every draw j is an exact sample of p_hat and the draws of a step are independent:
    marginal frequencies and the joint law of (draw 0, draw 1) against the filtered law.
    Fixed seeds; the bounds are > 6 standard errors of the worst cell."""
    n, k = 60_000, 3
    row = torch.tensor([2.0, 1.5, 1.0, 0.4, 0.2, -0.5, -1.0, -3.0])
    out = softgrpo.multiplex_sample(row.expand(n, -1), k, temperature=0.8,
                                    seed=torch.arange(n) + 1000, offset=3, **filters)
    p = _law(row, 0.8, **filters)
    for j in range(k):
        freq = torch.bincount(out.ids[:, j], minlength=len(row)).double() / n
        assert float((freq - p).abs().max()) < 6 * math.sqrt(0.25 / n)
        assert float(freq[p == 0].sum()) == 0.0  # a cut token is never drawn
    pair = torch.bincount(out.ids[:, 0] * len(row) + out.ids[:, 1],
                          minlength=len(row) ** 2).double() / n
    assert float((pair - torch.outer(p, p).flatten()).abs().max()) < 6 * math.sqrt(0.25 / n)
    torch.testing.assert_close(out.logprobs, torch.log(p.float())[out.ids])


@pytest.mark.parametrize("block", [4096, 7], ids=["one-block", "blocks-of-7"])
def test_full_vocabulary_draws_equal_a_scan_of_every_token(block, monkeypatch):
    """Without a filter the reference scores only the tokens within the noise's spread of the
    maximum, a block of candidates at a time; neither changes a draw: compare with scoring all
    V tokens at once."""
    from softgrpo.reference import multiplex as ref

    monkeypatch.setattr(ref, "DRAW_BLOCK", block)
    g = torch.Generator().manual_seed(2)
    b, v, k = 16, 300, 4
    logits = torch.randn(b, v, generator=g) * 12  # wide: most tokens are out of reach
    seed, offset = torch.randint(0, 2**40, (b,), generator=g), torch.arange(b)
    out = softgrpo.multiplex_sample(logits, k, seed=seed, offset=offset)
    streams = torch.arange(k)[None, :, None]
    score = logits[:, None, :] + philox.gumbel(seed[:, None, None], offset[:, None, None],
                                               torch.arange(v)[None, None, :], streams)
    assert torch.equal(out.ids, score.argmax(-1))
    torch.testing.assert_close(out.logprobs, torch.log_softmax(logits, -1).gather(-1, out.ids))


def test_stream_zero_is_the_soft_sample_discrete_draw():
    """Draw 0 uses the single-stream noise: with the same filter it is soft_sample's discrete
    (Gumbel-max) token."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 40, generator=g) * 2
    seed = torch.randint(0, 2**40, (50,), generator=g)
    multiplex = softgrpo.multiplex_sample(logits, 3, top_k=6, top_p=1.0, seed=seed, offset=9)
    discrete = softgrpo.soft_sample(logits, 6, top_p=1.0, seed=seed, offset=9,
                                    thinking=torch.zeros(50, dtype=torch.bool))
    assert torch.equal(multiplex.token, discrete.token)


def test_same_keys_same_outputs_and_layout_independence():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(12, 64, generator=g)
    seed = torch.randint(0, 2**40, (12,), generator=g)
    offset = torch.arange(12) * 3
    for filters in (dict(), dict(top_k=7, top_p=0.9)):
        full = softgrpo.multiplex_sample(logits, 3, seed=seed, offset=offset, **filters)
        again = softgrpo.multiplex_sample(logits, 3, seed=seed, offset=offset, **filters)
        perm = torch.randperm(12, generator=g)
        permuted = softgrpo.multiplex_sample(logits[perm], 3, seed=seed[perm],
                                             offset=offset[perm], **filters)
        alone = softgrpo.multiplex_sample(logits[5:6], 3, seed=seed[5:6], offset=offset[5:6],
                                          **filters)
        for a, b, p, one in zip(full, again, permuted, alone):
            assert torch.equal(a, b) and torch.equal(a[perm], p) and torch.equal(a[5:6], one)
        other = softgrpo.multiplex_sample(logits, 3, seed=seed, offset=offset + 1, **filters)
        assert not torch.equal(full.ids, other.ids)


def test_noise_is_keyed_by_token_id_not_by_rank():
    """Relabelling the vocabulary would only relabel the draws if noise followed ranks or scan
    positions; keyed by token id, each token brings its own noise."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 30, generator=g)
    perm = torch.randperm(30, generator=g)
    a = softgrpo.multiplex_sample(logits, 4, top_k=10, seed=11)
    b = softgrpo.multiplex_sample(logits[:, perm], 4, top_k=10, seed=11)
    assert not torch.equal(a.ids, perm[b.ids])


def test_non_contiguous_and_half_inputs():
    base = torch.randn(20, 8, generator=torch.Generator().manual_seed(6))
    view = base.t()
    a = softgrpo.multiplex_sample(view, 3, top_k=5, seed=3)
    b = softgrpo.multiplex_sample(view.contiguous(), 3, top_k=5, seed=3)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.logprobs, b.logprobs)
    softgrpo.multiplex_sample(view.half(), 3, seed=3)


BAD = [
    (dict(logits=torch.randn(5)), ValueError, "logits must be 2-D"),
    (dict(logits=torch.randint(0, 3, (2, 5))), TypeError, "logits must have dtype"),
    (dict(k=0), ValueError, "k must be"),
    (dict(k=65), ValueError, "k must be"),
    (dict(k=2.0), TypeError, "k must be an int"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(top_p=0.9), ValueError, "needs a top-k filter"),
    (dict(top_k=11), ValueError, "top_k must be"),
    (dict(top_k=0), ValueError, "top_k must be"),
    (dict(top_k=3, top_p=0.0), ValueError, "top_p"),
    (dict(weighting="soft"), ValueError, "weighting"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(offset=torch.zeros(3, dtype=torch.int64)), ValueError, "offset must have shape"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD, ids=lambda x: str(x)[:30])
def test_bad_arguments_name_the_argument(kwargs, error, message):
    assert_refused(softgrpo.multiplex_sample, kwargs, error, message)


def test_top_k_above_the_kernel_limit_rejected():
    with pytest.raises(ValueError, match="top_k must be"):
        softgrpo.multiplex_sample(torch.randn(2, 300), 3, top_k=129)


def test_nan_and_fully_masked_rows_rejected_but_inf_masking_allowed():
    logits = torch.randn(3, 10)
    logits[1, :8] = -math.inf
    for filters in (dict(), dict(top_k=4)):
        out = softgrpo.multiplex_sample(logits, 3, seed=torch.arange(3), **filters)
        assert set(out.ids[1].tolist()) <= {8, 9}
    logits[2, 4] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        softgrpo.multiplex_sample(logits, 3)
    logits[2, 4] = 0.0
    logits[0] = -math.inf
    with pytest.raises(ValueError, match="every value is -inf"):
        softgrpo.multiplex_sample(logits, 3)
