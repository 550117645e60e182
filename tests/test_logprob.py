"""soft_logprob (spec section 4): reference vs float64 math, gradients, sparsity, errors."""

import math

import pytest
import torch

import softgrpo


def batch(n=8, k=5, v=40, seed=0, discrete=(2, 5)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=g) * 2
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    # Perturbed values as a rollout would store them: log p_hat + clamped noise.
    perturbed = torch.log(torch.softmax(logits.gather(-1, ids), -1) + 1e-6)
    perturbed += (-torch.log(-torch.log(torch.rand(n, k, generator=g)))).clamp(-1.5, 3)
    for r in discrete:
        ids[r, 1:] = 0
        perturbed[r, 1:] = 0
    return logits, ids, perturbed


def naive(logits, ids, perturbed, temperature=1.0, clamp=(-1.5, 3.0), threshold=-3.0,
          eps=1e-6, reduction="mean", likelihood="release", weight=0.0, scale=1.0):
    """Spec sections 4 and 9 written literally in float64, one row at a time, with the
    full-vocabulary softmax; a soft row's kept slots are its finite perturbed values."""
    out = []
    for z, idx, y in zip(logits.double() / temperature, ids, perturbed.double()):
        p = torch.softmax(z, -1)
        if bool((idx[1:] == 0).all()):
            out.append(torch.log(p[idx[0]]))
            continue
        kept = torch.isfinite(y)
        lp, y = torch.log(p[idx][kept] / p[idx][kept].sum() + eps), y[kept]
        if likelihood == "release":
            g = (y - lp).clamp(*clamp)
            m = (lp > threshold).double()
            out.append((m * (-g - torch.exp(-g))).sum() / (m.sum() if reduction == "mean"
                                                             else 1.0))
            continue
        g = (y - lp) / scale
        exact = (-g - torch.exp(-g) - math.log(scale)).sum()
        token = lp[0] / scale - torch.logsumexp(lp / scale, 0)  # slot 0 is kept: the token
        out.append(exact if likelihood == "exact" else (1 - weight) * token + weight * exact)
    return torch.stack(out)


@pytest.mark.parametrize("options", [
    {}, dict(temperature=0.6), dict(reduction="sum"), dict(clamp=None),
    dict(clamp=(-0.5, 0.5), mask_threshold=-1.7), dict(eps=1e-3),
])
def test_reference_matches_float64_spec(options):
    logits, ids, y = batch()
    out = softgrpo.soft_logprob(logits, ids, y, **options)
    kw = dict(options)
    kw["threshold"] = kw.pop("mask_threshold", -3.0)
    kw["clamp"] = kw.get("clamp", (-1.5, 3.0)) or (-math.inf, math.inf)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), naive(logits, ids, y, **kw), atol=2e-5, rtol=1e-5)


def test_soft_rows_read_only_their_k_logits():
    logits, ids, y = batch(discrete=())
    poisoned = torch.full_like(logits, math.nan)
    poisoned.scatter_(-1, ids, logits.gather(-1, ids))
    torch.testing.assert_close(softgrpo.soft_logprob(poisoned, ids, y),
                               softgrpo.soft_logprob(logits, ids, y))


def test_leading_dimensions_and_low_precision_logits():
    logits, ids, y = batch(n=6)
    out = softgrpo.soft_logprob(logits.view(2, 3, -1), ids.view(2, 3, -1), y.view(2, 3, -1))
    torch.testing.assert_close(out.view(6), softgrpo.soft_logprob(logits, ids, y))
    half = softgrpo.soft_logprob(logits.bfloat16(), ids, y)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, naive(logits.bfloat16().float(), ids, y).float(),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_float64(reduction):
    logits, ids, y = batch(n=6, k=4, v=12, seed=3)
    logits = logits.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: softgrpo.soft_logprob(z, ids, y.double(), temperature=0.8, reduction=reduction),
        (logits,))


def test_gradient_is_sparse_for_soft_rows():
    logits, ids, y = batch()
    logits.requires_grad_()
    softgrpo.soft_logprob(logits, ids, y).sum().backward()
    nonzero = (logits.grad != 0).sum(-1)
    assert all(int(nonzero[r]) <= 5 for r in (0, 1, 3, 4, 6, 7))
    assert int(nonzero[2]) == int(nonzero[5]) == logits.shape[-1]


def test_bad_arguments_name_the_argument():
    logits, ids, y = batch()
    with pytest.raises(ValueError, match="leading dimensions"):
        softgrpo.soft_logprob(logits[:4], ids, y)
    with pytest.raises(ValueError, match="same shape"):
        softgrpo.soft_logprob(logits, ids, y[:, :3])
    with pytest.raises(TypeError, match="ids must have dtype"):
        softgrpo.soft_logprob(logits, ids.float(), y)
    with pytest.raises(TypeError, match="perturbed must have dtype"):
        softgrpo.soft_logprob(logits, ids, ids)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 40\)"):
        softgrpo.soft_logprob(logits, ids + 40, y)
    with pytest.raises(ValueError, match="temperature"):
        softgrpo.soft_logprob(logits, ids, y, temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        softgrpo.soft_logprob(logits, ids, y, reduction="max")
    with pytest.raises(ValueError, match="clamp"):
        softgrpo.soft_logprob(logits, ids, y, clamp=(1.0, 1.0))
    with pytest.raises(ValueError, match="could keep no slot"):
        softgrpo.soft_logprob(logits, ids, y, mask_threshold=-1.0)
    softgrpo.soft_logprob(logits, ids, y, mask_threshold=-1.0, reduction="sum")
    with pytest.raises(ValueError, match="perturbed contains NaN"):
        softgrpo.soft_logprob(logits, ids, y.masked_fill(ids == ids[0, 0], math.nan))
