"""multiplex_logprob and multiplex_logprob_from_hidden (spec section 10): float64 math,
gradients, agreement with the sampler's records, the cost promise, errors."""

import math

import pytest
import torch

import softgrpo
from softgrpo.ops.multiplex_logprob import multiplex_logprob, multiplex_logprob_from_hidden
from softgrpo.reference import multiplex_logprob as ref

V, H, K = 23, 7, 3


def records(n=8, k=K, width=5, seed=0, kept=True):
    """Multiplex records: rows 1 and 5 discrete ([s, 0, ...] / [l, -inf, ...]); the others
    draw from a random kept set of `width` ids (one unused slot in row 2); row 3's later draws
    are token 0 (a multiplex row a discrete-by-ids test would misread)."""
    g = torch.Generator().manual_seed(seed)
    support = torch.stack([torch.randperm(V, generator=g)[:width] for _ in range(n)])
    support[3, 1] = 0
    pick = torch.randint(0, width - 1, (n, k), generator=g)
    ids = support.gather(-1, pick)
    ids[3, 1:] = 0
    perturbed = -torch.rand(n, k, generator=g) * 3 - 0.1
    for row in (1, 5):
        ids[row, 1:] = 0
        perturbed[row, 1:] = -math.inf
    support[2, -1] = -1
    return ids, perturbed, (support if kept else None)


def naive(z, ids, perturbed, kept, temperature):
    """Spec 10 per row in float64 with Python loops."""
    z = z.double() / temperature
    out = torch.zeros(ids.shape, dtype=torch.float64)
    for n in range(ids.shape[0]):
        if all(float(y) == -math.inf for y in perturbed[n, 1:]):
            out[n, 0] = z[n, ids[n, 0]] - torch.logsumexp(z[n], -1)
            continue
        support = (list(range(V)) if kept is None
                   else [int(v) for v in kept[n] if int(v) >= 0])
        norm = torch.logsumexp(z[n, support], -1)
        for j in range(ids.shape[1]):
            out[n, j] = z[n, ids[n, j]] - norm
    return out


@pytest.mark.parametrize("with_kept", [True, False], ids=["filtered", "full"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_both_ops_match_float64_math(with_kept, temperature):
    ids, perturbed, kept = records(kept=with_kept)
    g = torch.Generator().manual_seed(1)
    hidden, weight, bias = (torch.randn(8, H, generator=g), torch.randn(V, H, generator=g),
                            torch.randn(V, generator=g))
    logits = hidden @ weight.T + bias
    want = naive(logits, ids, perturbed, kept, temperature)
    got = multiplex_logprob(logits, ids, perturbed, kept=kept, temperature=temperature)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for chunk in (None, 4):
        fused = multiplex_logprob_from_hidden(hidden, weight, ids, perturbed, kept=kept,
                                              bias=bias, temperature=temperature,
                                              chunk_size=chunk)
        torch.testing.assert_close(fused.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_kept", [True, False], ids=["filtered", "full"])
def test_gradcheck_float64(with_kept):
    ids, perturbed, kept = records(kept=with_kept)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, V, generator=g, dtype=torch.float64, requires_grad=True)
    y = perturbed.double()
    torch.autograd.gradcheck(lambda x: multiplex_logprob(x, ids, y, kept=kept, temperature=0.8),
                             (logits,))
    hidden = torch.randn(8, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(
        lambda h, w, b: multiplex_logprob_from_hidden(h, w, ids, y, kept=kept, bias=b,
                                                      temperature=1.3, chunk_size=5),
        (hidden, weight, bias))


def test_training_log_prob_at_the_rollout_weights_equals_the_sampler_s():
    """At the weights the rollout ran with, the filtered log-prob of a record is the log-prob
    the sampler reported; without a filter, the full one is too."""
    g = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(40, H, generator=g), torch.randn(V, H, generator=g)
    logits = hidden @ weight.T
    for filters in (dict(top_k=6, top_p=0.9), dict()):
        s = softgrpo.multiplex_sample(logits, 4, temperature=0.9, seed=torch.arange(40),
                                      **filters)
        kept = s.kept if filters else None
        got = multiplex_logprob_from_hidden(hidden, weight, s.ids, s.logprobs, kept=kept,
                                            temperature=0.9)
        torch.testing.assert_close(got, s.logprobs, rtol=1e-5, atol=1e-5)


def test_filtered_rows_read_no_full_row():
    """With a kept set, a multiplex row reads K + W logits: the full-vocabulary normaliser
    runs for discrete rows only (none here)."""
    ids, perturbed, kept = records()
    multiplex = ~ref.is_discrete(perturbed)
    g = torch.Generator().manual_seed(4)
    hidden, weight = torch.randn(8, H, generator=g), torch.randn(V, H, generator=g)
    seen = []

    def spy(z, b, lse, temperature):
        seen.append(z.shape[0])
        return original(z, b, lse, temperature)

    original = ref._block_lse
    ref._block_lse = spy
    try:
        multiplex_logprob_from_hidden(hidden[multiplex], weight, ids[multiplex],
                                      perturbed[multiplex], kept=kept[multiplex])
        assert seen == []
        multiplex_logprob_from_hidden(hidden, weight, ids, perturbed, kept=kept)
        assert sum(seen) == 2  # the two discrete rows
    finally:
        ref._block_lse = original


def test_leading_dimensions_and_dtypes():
    ids, perturbed, kept = records()
    logits = torch.randn(8, V)
    flat = multiplex_logprob(logits, ids, perturbed, kept=kept)
    shaped = multiplex_logprob(logits.view(2, 4, V), ids.view(2, 4, K), perturbed.view(2, 4, K),
                               kept=kept.view(2, 4, -1))
    assert shaped.shape == (2, 4, K) and shaped.dtype == torch.float32
    torch.testing.assert_close(shaped.view(8, K), flat)
    half = multiplex_logprob_from_hidden(torch.randn(8, H).bfloat16(),
                                         torch.randn(V, H).bfloat16(), ids, perturbed)
    assert half.dtype == torch.float32


BAD = [
    (dict(ids=torch.zeros(8, 1, dtype=torch.int64), perturbed=torch.zeros(8, 1)), ValueError,
     "k >= 2"),
    (dict(ids=torch.full((8, K), V)), ValueError, "ids must lie"),
    (dict(kept=torch.full((8, 5), V)), ValueError, "kept must lie"),
    (dict(kept=torch.full((8, 5), -2)), ValueError, "kept must lie"),
    (dict(kept=torch.zeros(8, 5).float()), TypeError, "kept must have dtype"),
    (dict(kept=torch.zeros(7, 5, dtype=torch.int64)), ValueError, "kept"),
    (dict(perturbed=torch.full((8, K), math.nan)), ValueError, "NaN"),
    (dict(perturbed=torch.full((8, K), -math.inf)), ValueError, "slot 0"),
    (dict(temperature=0.0), ValueError, "temperature"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD, ids=lambda x: str(x)[:40])
def test_bad_arguments_name_the_argument(kwargs, error, message):
    ids, perturbed, kept = records()
    args = dict(logits=torch.randn(8, V), ids=ids, perturbed=perturbed, kept=kept)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        multiplex_logprob(**args)


def test_a_draw_outside_its_kept_set_is_refused():
    ids, perturbed, kept = records()
    kept[0] = -1
    kept[0, 0] = int(ids[0, 0])
    with pytest.raises(ValueError, match="outside its kept set"):
        multiplex_logprob(torch.randn(8, V), ids, perturbed, kept=kept)
