"""The soft-row likelihoods (spec 9) and cut slots (spec 2) in soft_logprob and
soft_logprob_from_hidden: float64 spec, identities at the rollout's weights, gradients,
opcheck, compile, errors."""

import math

import pytest
import torch
from test_logprob import naive

import softgrpo
from softgrpo import philox

INF = math.inf
SETTINGS = [  # (likelihood, conditional_weight, noise_scale)
    ("release", 0.0, 1.0), ("exact", 0.0, 1.0), ("exact", 0.0, 0.6), ("token", 0.0, 1.0),
    ("token", 0.35, 0.8), ("token", 1.0, 1.0)]


def options(likelihood, weight, scale):
    if likelihood == "release":
        return {}
    weight = dict(conditional_weight=weight) if likelihood == "token" else {}
    return dict(likelihood=likelihood, noise_scale=scale, clamp=None, **weight)


def records(n=10, k=5, v=30, seed=0):
    """Logits and records as soft_sample stores them at top_p 0.8 (cut slots, slot 0 the
    token), rows 2 and n - 1 discrete."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=g) * 2.5
    thinking = torch.ones(n, dtype=torch.bool)
    thinking[[2, n - 1]] = False
    s = softgrpo.soft_sample(logits, k, top_p=0.8, seed=torch.arange(n) + 100 * seed,
                             thinking=thinking, noise_clamp=None)
    cut = s.perturbed == -INF
    assert cut.any() and (~cut[thinking]).any(-1).all()
    return logits, s.ids, s.perturbed


@pytest.mark.parametrize("likelihood,weight,scale", SETTINGS)
def test_reference_matches_float64_spec(likelihood, weight, scale):
    logits, ids, y = records()
    out = softgrpo.soft_logprob(logits, ids, y, temperature=0.7,
                                **options(likelihood, weight, scale))
    want = naive(logits, ids, y, 0.7, likelihood=likelihood, weight=weight, scale=scale)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=1e-5)
    head = torch.randn(30, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hidden = torch.linalg.lstsq(head, logits.double().T).solution.T  # hidden @ head.T = logits
    fused = softgrpo.soft_logprob_from_hidden(hidden, head, ids, y, temperature=0.7,
                                              **options(likelihood, weight, scale))
    torch.testing.assert_close(fused, naive(hidden @ head.T, ids, y, 0.7, likelihood=likelihood,
                                            weight=weight, scale=scale), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("top_p", [0.8, 0.95])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_each_likelihood_at_the_rollout_weights(top_p, temperature):
    """On the logits the rollout sampled from: "release" reproduces the rollout-side log-prob
    (cut rows included), "exact" the joint Gumbel density of the very noise drawn (Philox
    keys), "token" log P(token) of the filtered distribution."""
    g = torch.Generator().manual_seed(5)
    n, k = 400, 5
    logits = torch.randn(n, 64, generator=g) * torch.linspace(0.2, 4.0, n)[:, None]
    seed, offset = torch.arange(n) + 7, torch.full((n,), 3)
    released = softgrpo.soft_sample(logits, k, temperature=temperature, top_p=top_p, seed=seed,
                                    offset=offset)
    cut = released.perturbed == -INF
    assert cut.any()
    lp = softgrpo.soft_logprob(logits, released.ids, released.perturbed, temperature=temperature)
    torch.testing.assert_close(lp, released.logprob, atol=2e-5, rtol=0)

    s = softgrpo.soft_sample(logits, k, temperature=temperature, top_p=top_p, seed=seed,
                             offset=offset, noise_clamp=None)
    kept = s.perturbed > -INF
    noise = philox.gumbel(seed[:, None], offset[:, None], s.ids)
    density = torch.where(kept, -noise - torch.exp(-noise), 0.0).sum(-1)
    exact = softgrpo.soft_logprob(logits, s.ids, s.perturbed, temperature=temperature,
                                  likelihood="exact", clamp=None)
    torch.testing.assert_close(exact, density, atol=5e-5, rtol=1e-5)

    z = logits / temperature
    p = torch.softmax(z.gather(-1, s.ids).masked_fill(~kept, -INF), -1)  # p_hat on kept slots
    token = softgrpo.soft_logprob(logits, s.ids, s.perturbed, temperature=temperature,
                                  likelihood="token", clamp=None)
    want = torch.log((p[:, 0] + 1e-6) / torch.where(kept, p + 1e-6, 0.0).sum(-1))
    torch.testing.assert_close(token, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("likelihood,weight,scale", SETTINGS)
def test_gradcheck_float64(likelihood, weight, scale):
    logits, ids, y = records(n=6, k=4, v=12, seed=3)
    kw = options(likelihood, weight, scale)
    z = logits.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: softgrpo.soft_logprob(z, ids, y.double(), temperature=0.8, **kw), (z,))
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    head = torch.randn(12, 5, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(12, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w, b: softgrpo.soft_logprob_from_hidden(h, w, ids, y.double(), bias=b,
                                                          temperature=0.8, chunk_size=5, **kw),
        (hidden, head, bias))


@pytest.mark.parametrize("likelihood", ["exact", "token"])
def test_opcheck_and_compile(likelihood):
    _, ids, y = records(n=6, k=4, v=12, seed=6)
    g = torch.Generator().manual_seed(7)
    weight = 0.25 if likelihood == "token" else 0.0
    hidden = torch.randn(6, 5, generator=g, requires_grad=True)
    head = torch.randn(12, 5, generator=g, requires_grad=True)
    opts = (0.9, -INF, INF, -INF, 1e-6, "sum", likelihood, weight, 0.8, 4)
    torch.library.opcheck(torch.ops.softgrpo.soft_logprob_from_hidden.default,
                          (hidden, head, None, ids, y, *opts))

    def fn(h, w):
        return softgrpo.soft_logprob_from_hidden(h, w, ids, y, likelihood=likelihood,
                                                 clamp=None, conditional_weight=weight)

    torch._dynamo.reset()  # a fresh compile: a recompile would mark the weight dynamic
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(hidden, head)
    torch.testing.assert_close(out, fn(hidden, head))


def test_cut_slots_get_no_gradient_and_one_kept_slot_none_at_all():
    logits, ids, y = records(seed=8)
    y = y.clone()
    y[4, 1:] = -INF  # only the token kept: p_hat = 1 whatever the logits
    for likelihood in ("release", "exact", "token"):
        z = logits.clone().requires_grad_()
        softgrpo.soft_logprob(z, ids, y, **options(likelihood, 0.5, 1.0)).sum().backward()
        cut = y == -INF
        assert (z.grad.gather(-1, ids)[cut] == 0).all()
        assert (z.grad[4] == 0).all()


def test_bad_records_and_options_name_the_problem():
    logits, ids, y = records()
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        softgrpo.soft_logprob(logits, ids, y.masked_fill(y == y[0, 1], INF))
    token_cut = y.clone()
    token_cut[0, 0] = -INF
    with pytest.raises(ValueError, match=r"perturbed\[..., 0\] contains -inf"):
        softgrpo.soft_logprob(logits, ids, token_cut)
    swapped = torch.where(y[:, 1:2] > -INF, y[:, [1, 0, 2, 3, 4]], y)  # token not in slot 0
    softgrpo.soft_logprob(logits, ids, swapped)  # release and exact do not need the order
    with pytest.raises(ValueError, match="slot 0 of every soft row"):
        softgrpo.soft_logprob(logits, ids, swapped, likelihood="token", clamp=None)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        softgrpo.soft_logprob(logits, ids, y, likelihood="joint")
    with pytest.raises(ValueError, match="scores unclamped noise"):
        softgrpo.soft_logprob(logits, ids, y, likelihood="exact")
    for name, value in (("reduction", "sum"), ("mask_threshold", -2.0)):
        with pytest.raises(ValueError, match=f"{name} applies to likelihood='release' only"):
            softgrpo.soft_logprob(logits, ids, y, likelihood="token", clamp=None,
                                  **{name: value})
    with pytest.raises(ValueError, match="conditional_weight"):
        softgrpo.soft_logprob(logits, ids, y, likelihood="token", clamp=None,
                              conditional_weight=1.5)
    with pytest.raises(ValueError, match="noise_scale"):
        softgrpo.soft_logprob_from_hidden(torch.randn(10, 4), torch.randn(30, 4), ids, y,
                                          likelihood="exact", clamp=None, noise_scale=0.0)
