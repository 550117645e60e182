"""Reference for the training-side log-prob (spec sections 4 and 9).

A soft row reads only its K logits: over its kept slots (finite perturbed value; a slot cut by
top-p holds -inf, spec 2) softmax(z)[ids_i] / sum_kept softmax(z)[ids_j] equals
softmax(z[ids kept])_i, the full-vocabulary normaliser cancels. Only discrete rows need the
full row (an ordinary token log-prob).

The soft-row score is one of three likelihoods of the row's perturbed values y (spec 9), with
lp = log(softmax(z[ids kept] / T) + eps) the rollout's l under the current policy:
- "release": the authors' release: the mean (or sum) over kept slots with lp > mask_threshold
  of the Gumbel log-density of the recovered noise clamp(y - lp).
- "exact": the joint log-density of the kept slots' noise, g = (y - lp) / c: an unbiased
  score for unclamped noise.
- "token": log P(token) + conditional_weight * log q(y | token), where the token is slot 0
  (the largest y) and P(token) = softmax(lp / c)[0] over the kept slots: the probability of
  the Gumbel-max token. Weight 0 is the Rao-Blackwellised token score, 1 equals "exact".
"""

from __future__ import annotations

import math

import torch

from softgrpo.reference.common import compute_dtype, is_discrete

LIKELIHOODS = ("release", "exact", "token")


def _flat(logits: torch.Tensor, ids: torch.Tensor, perturbed: torch.Tensor):
    k = ids.shape[-1]
    return logits.reshape(-1, logits.shape[-1]), ids.reshape(-1, k).long(), perturbed.reshape(-1, k)


def _slot_terms(zk: torch.Tensor, y: torch.Tensor, eps: float):
    """kept (finite y), s = softmax over the kept logits (0 at cut slots), lp = log(s + eps)
    and y - lp (0 at cut slots: no -inf in later arithmetic)."""
    kept = y > -math.inf
    s = torch.softmax(zk.masked_fill(~kept, -math.inf), dim=-1)
    lp = torch.log(s + eps)
    return kept, s, lp, torch.where(kept, y - lp, 0.0)


def _gumbel_density(g: torch.Tensor) -> torch.Tensor:
    return -g - torch.exp(-g)  # Gumbel(0, 1) log-density


def soft_rows(zk: torch.Tensor, y: torch.Tensor, clamp_lo: float, clamp_hi: float,
              mask_threshold: float, eps: float, reduction: str, likelihood: str,
              conditional_weight: float, noise_scale: float) -> torch.Tensor:
    """Soft-row log-prob (N,) from the rows' K temperature-scaled logits zk (N, K) and y."""
    kept, _, lp, raw = _slot_terms(zk, y, eps)
    if likelihood == "release":
        g = raw.clamp(clamp_lo, clamp_hi)  # the noise recovered under the current policy
        masked = kept & (lp > mask_threshold)  # taken on the current policy, not differentiated
        out = torch.where(masked, _gumbel_density(g), 0.0).sum(-1)
        return out / masked.sum(-1) if reduction == "mean" else out
    # joint density of y = lp + c g: sum of f((y - lp) / c) / c over the kept slots
    exact = torch.where(kept, _gumbel_density(raw / noise_scale) - math.log(noise_scale),
                        0.0).sum(-1)
    if likelihood == "exact":
        return exact
    scaled = lp.masked_fill(~kept, -math.inf) / noise_scale
    token = scaled[:, 0] - torch.logsumexp(scaled, -1)  # Gumbel-max: P(j) = softmax(l / c)_j
    return (1.0 - conditional_weight) * token + conditional_weight * exact


def soft_rows_backward(go: torch.Tensor, zk: torch.Tensor, y: torch.Tensor, temperature: float,
                       clamp_lo: float, clamp_hi: float, mask_threshold: float, eps: float,
                       reduction: str, likelihood: str, conditional_weight: float,
                       noise_scale: float) -> torch.Tensor:
    """Gradient (N, K) of soft_rows w.r.t. the K logits before temperature scaling; go (N, 1)."""
    kept, s, lp, raw = _slot_terms(zk, y, eps)
    if likelihood == "release":
        g = raw.clamp(clamp_lo, clamp_hi)
        masked = kept & (lp > mask_threshold)
        inside = (raw >= clamp_lo) & (raw <= clamp_hi)
        coef = go / masked.sum(-1, keepdim=True) if reduction == "mean" else go
        # d density / d lp = 1 - exp(-g) inside the clamp, 0 outside
        d_lp = torch.where(masked & inside, coef * (1.0 - torch.exp(-g)), 0.0)
    else:
        d_exact = torch.where(kept, (1.0 - torch.exp(-raw / noise_scale)) / noise_scale, 0.0)
        if likelihood == "exact":
            d_lp = go * d_exact
        else:
            scaled = lp.masked_fill(~kept, -math.inf) / noise_scale
            first = torch.zeros_like(lp)
            first[:, 0] = 1.0
            d_token = (first - torch.softmax(scaled, -1)) / noise_scale
            d_lp = go * ((1.0 - conditional_weight) * d_token + conditional_weight * d_exact)
    r = d_lp * (s / (s + eps))  # through lp = log(s + eps), times s: no 1 / eps blow-up
    return (r - s * r.sum(-1, keepdim=True)) / temperature  # softmax VJP, then 1/T


def soft_logprob(logits: torch.Tensor, ids: torch.Tensor, perturbed: torch.Tensor,
                 temperature: float, clamp_lo: float, clamp_hi: float, mask_threshold: float,
                 eps: float, reduction: str, likelihood: str, conditional_weight: float,
                 noise_scale: float) -> torch.Tensor:
    dtype = compute_dtype(logits, perturbed)
    z, ids2, y = _flat(logits, ids, perturbed)
    zk = z.gather(-1, ids2).to(dtype) / temperature
    out = soft_rows(zk, y.to(dtype), clamp_lo, clamp_hi, mask_threshold, eps, reduction,
                    likelihood, conditional_weight, noise_scale)

    rows = is_discrete(ids2).nonzero().squeeze(-1)  # full-vocabulary work only for these
    zd = z.index_select(0, rows).to(dtype) / temperature
    labels = ids2.index_select(0, rows)[:, :1]
    token_lp = (zd.gather(-1, labels) - torch.logsumexp(zd, -1, keepdim=True)).squeeze(-1)
    return out.index_copy(0, rows, token_lp).reshape(ids.shape[:-1])


def soft_logprob_backward(grad: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
                          perturbed: torch.Tensor, temperature: float, clamp_lo: float,
                          clamp_hi: float, mask_threshold: float, eps: float, reduction: str,
                          likelihood: str, conditional_weight: float,
                          noise_scale: float) -> torch.Tensor:
    """Gradient w.r.t. logits; a soft row's has only its K entries non-zero."""
    dtype = compute_dtype(logits, perturbed)
    z, ids2, y = _flat(logits, ids, perturbed)
    go = grad.reshape(-1, 1).to(dtype)
    zk = z.gather(-1, ids2).to(dtype) / temperature
    d_zk = soft_rows_backward(go, zk, y.to(dtype), temperature, clamp_lo, clamp_hi,
                              mask_threshold, eps, reduction, likelihood, conditional_weight,
                              noise_scale)
    disc = is_discrete(ids2)
    d_zk = d_zk.masked_fill(disc[:, None], 0.0)
    grad_z = torch.zeros(z.shape, dtype=dtype, device=z.device).scatter_add_(-1, ids2, d_zk)

    rows = disc.nonzero().squeeze(-1)
    zd = z.index_select(0, rows).to(dtype) / temperature
    d_zd = -torch.softmax(zd, dim=-1)
    d_zd.scatter_add_(-1, ids2.index_select(0, rows)[:, :1], torch.ones_like(d_zd[:, :1]))
    d_zd = d_zd * go.index_select(0, rows) / temperature
    grad_z.index_copy_(0, rows, d_zd)
    return grad_z.to(logits.dtype).reshape(logits.shape)
