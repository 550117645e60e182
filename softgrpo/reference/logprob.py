"""Reference for the training-side log-prob (spec section 4).

A soft row reads only its K logits: softmax(z)[ids_i] / sum_j softmax(z)[ids_j] equals
softmax(z[ids])_i, the full-vocabulary normaliser cancels. Only discrete rows need the
full row (an ordinary token log-prob)."""

from __future__ import annotations

import torch

from softgrpo.reference.common import compute_dtype, is_discrete


def _flat(logits: torch.Tensor, ids: torch.Tensor, perturbed: torch.Tensor):
    k = ids.shape[-1]
    return logits.reshape(-1, logits.shape[-1]), ids.reshape(-1, k).long(), perturbed.reshape(-1, k)


def _soft_terms(zk: torch.Tensor, y: torch.Tensor, clamp_lo: float, clamp_hi: float,
                mask_threshold: float, eps: float):
    """Per-slot pieces of a soft row from its K temperature-scaled logits."""
    s = torch.softmax(zk, dim=-1)
    lp = torch.log(s + eps)
    raw = y - lp
    g = raw.clamp(clamp_lo, clamp_hi)  # the noise recovered under the current policy
    density = -g - torch.exp(-g)  # Gumbel(0, 1) log-density
    kept = (lp > mask_threshold).to(zk.dtype)  # taken on the current policy, not differentiated
    inside = ((raw >= clamp_lo) & (raw <= clamp_hi)).to(zk.dtype)
    return s, g, density, kept, inside


def soft_rows(zk: torch.Tensor, y: torch.Tensor, clamp_lo: float, clamp_hi: float,
              mask_threshold: float, eps: float, reduction: str) -> torch.Tensor:
    """Soft-row log-prob (N,) from the rows' K temperature-scaled logits zk (N, K) and y."""
    _, _, density, kept, _ = _soft_terms(zk, y, clamp_lo, clamp_hi, mask_threshold, eps)
    out = (kept * density).sum(-1)
    return out / kept.sum(-1) if reduction == "mean" else out


def soft_rows_backward(go: torch.Tensor, zk: torch.Tensor, y: torch.Tensor, temperature: float,
                       clamp_lo: float, clamp_hi: float, mask_threshold: float, eps: float,
                       reduction: str) -> torch.Tensor:
    """Gradient (N, K) of soft_rows w.r.t. the K logits before temperature scaling; go (N, 1)."""
    s, g, _, kept, inside = _soft_terms(zk, y, clamp_lo, clamp_hi, mask_threshold, eps)
    coef = go / kept.sum(-1, keepdim=True) if reduction == "mean" else go
    d_lp = coef * kept * inside * (1.0 - torch.exp(-g))  # d density / d lp inside the clamp
    a = d_lp / (s + eps)  # through lp = log(s + eps)
    return s * (a - (a * s).sum(-1, keepdim=True)) / temperature  # softmax VJP, then 1/T


def soft_logprob(logits: torch.Tensor, ids: torch.Tensor, perturbed: torch.Tensor,
                 temperature: float, clamp_lo: float, clamp_hi: float, mask_threshold: float,
                 eps: float, reduction: str) -> torch.Tensor:
    dtype = compute_dtype(logits, perturbed)
    z, ids2, y = _flat(logits, ids, perturbed)
    zk = z.gather(-1, ids2).to(dtype) / temperature
    out = soft_rows(zk, y.to(dtype), clamp_lo, clamp_hi, mask_threshold, eps, reduction)

    rows = is_discrete(ids2).nonzero().squeeze(-1)  # full-vocabulary work only for these
    zd = z.index_select(0, rows).to(dtype) / temperature
    labels = ids2.index_select(0, rows)[:, :1]
    token_lp = (zd.gather(-1, labels) - torch.logsumexp(zd, -1, keepdim=True)).squeeze(-1)
    return out.index_copy(0, rows, token_lp).reshape(ids.shape[:-1])


def soft_logprob_backward(grad: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
                          perturbed: torch.Tensor, temperature: float, clamp_lo: float,
                          clamp_hi: float, mask_threshold: float, eps: float,
                          reduction: str) -> torch.Tensor:
    """Gradient w.r.t. logits; a soft row's has only its K entries non-zero."""
    dtype = compute_dtype(logits, perturbed)
    z, ids2, y = _flat(logits, ids, perturbed)
    go = grad.reshape(-1, 1).to(dtype)
    zk = z.gather(-1, ids2).to(dtype) / temperature
    d_zk = soft_rows_backward(go, zk, y.to(dtype), temperature, clamp_lo, clamp_hi,
                              mask_threshold, eps, reduction)
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
