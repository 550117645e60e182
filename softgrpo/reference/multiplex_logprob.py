"""Reference for the training-side Multiplex Thinking log-prob (spec section 10): one log-prob
per draw, from logits or from the last hidden states and the LM head.

Records (softgrpo.ops.multiplex_logprob): ids (N, K) the K draws of a multiplex row;
perturbed (N, K) their rollout-side log-probs; a discrete row is [s, 0, ...] with perturbed
[l_s, -inf, ...] (a draw's log-prob is never -inf, so the convention cannot be confused with
a multiplex row whose later draws are token 0). kept (N, W): the support of the rollout's
filtered distribution, -1 for unused slots; W = 0 when the rollout had no top-k filter (the
support is the vocabulary).

Per-slot log-prob of draw j: z[ids_j] / T minus a normaliser: the log-sum-exp of z / T over
the kept set ("filtered": the exact log-prob of the draw), or over the vocabulary (the
release's, and the filtered one when W = 0). Discrete rows: slot 0 is log_softmax(z / T)[s],
the other slots 0. Only the normaliser over the vocabulary needs a full row; the draws and
the kept set are K + W gathered logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from softgrpo.reference.common import compute_dtype
from softgrpo.reference.fused_linear import (
    _block_grad,
    _block_lse,
    cast_grads,
    gathered_backward,
    gathered_logits,
    normaliser_backward,
    subtract_normalisers,
)

Tensor = torch.Tensor


def is_discrete(perturbed: Tensor) -> Tensor:
    """A multiplex record's discrete rows: all(perturbed[..., 1:] == -inf)."""
    return (perturbed[..., 1:] == -math.inf).all(dim=-1)


class Layout(NamedTuple):
    """Flattened records: ids (N, K), kept (N, W) int64; cols (N, K + W) the ids of the logits
    a row reads (its draws, then its kept set, -1 read as id 0); full (N,) the rows normalised
    over the vocabulary (discrete rows; every row when W = 0); wide (N,) the rows that read
    all K + W slots (the others, discrete: slot 0)."""

    ids: Tensor
    kept: Tensor
    cols: Tensor
    full: Tensor
    wide: Tensor


def layout(ids: Tensor, perturbed: Tensor, kept: Tensor) -> Layout:
    k = ids.shape[-1]
    ids2 = ids.reshape(-1, k).long()
    kept2 = kept.reshape(ids2.shape[0], kept.shape[-1]).long()
    discrete = is_discrete(perturbed.reshape(-1, k))
    full = discrete | (kept2.shape[1] == 0)
    cols = torch.cat([ids2, kept2.clamp(min=0)], -1).contiguous()
    return Layout(ids2, kept2, cols, full, ~discrete)


def _unread(lay: Layout) -> Tensor:
    """(N, K + W): the slots a row does not read, 1.. of the rows that are not wide."""
    return ~lay.wide[:, None] & (torch.arange(lay.cols.shape[1], device=lay.cols.device) >= 1)


def slot_logprobs(zk: Tensor, lse: Tensor, lay: Layout) -> Tensor:
    """(N, K) per-draw log-probs from the scaled logits zk (N, K + W) and the vocabulary's
    log-sum-exp lse (N,) (read at the rows ``full``)."""
    k = lay.ids.shape[1]
    zkept = zk[:, k:].masked_fill(lay.kept < 0, -math.inf)
    norm = torch.where(lay.full, lse, torch.logsumexp(zkept, -1))  # (W = 0: every row full)
    lp = zk[:, :k] - norm[:, None]
    return lp.masked_fill(_unread(lay)[:, :k], 0.0)  # a discrete row: slot 0 only


def slot_coefficients(grad: Tensor, zk: Tensor, lay: Layout,
                      temperature: float) -> tuple[Tensor, Tensor]:
    """The backward of slot_logprobs: coefficients (N, K + W) of the gathered logits w.r.t.
    the raw logits (z = raw / T), and go (N,), the weight of -lse at the rows ``full``."""
    k = lay.ids.shape[1]
    g = grad.reshape(lay.ids.shape).masked_fill(_unread(lay)[:, :k], 0.0)
    total = g.sum(-1)  # d lp_j / d norm = -1 for every slot
    zkept = zk[:, k:].masked_fill(lay.kept < 0, -math.inf)
    share = torch.softmax(zkept, -1).nan_to_num(0.0)  # d norm / d zkept (a full row: unused)
    d_kept = torch.where(lay.full[:, None], 0.0, -total[:, None] * share)
    return torch.cat([g, d_kept], -1) / temperature, torch.where(lay.full, total, 0.0)


def multiplex_logprob(logits: Tensor, ids: Tensor, perturbed: Tensor, kept: Tensor,
                      temperature: float) -> Tensor:
    dtype = compute_dtype(logits, perturbed)
    z, lay = logits.reshape(-1, logits.shape[-1]), layout(ids, perturbed, kept)
    zk = z.gather(-1, lay.cols).to(dtype) / temperature
    rows = lay.full.nonzero().squeeze(-1)  # the full-vocabulary normaliser: these rows only
    lse = torch.zeros(z.shape[0], dtype=dtype, device=z.device).index_copy(
        0, rows, torch.logsumexp(z.index_select(0, rows).to(dtype) / temperature, -1))
    return slot_logprobs(zk, lse, lay).reshape(ids.shape)


def multiplex_logprob_backward(grad: Tensor, logits: Tensor, ids: Tensor, perturbed: Tensor,
                               kept: Tensor, temperature: float) -> Tensor:
    dtype = compute_dtype(logits, perturbed)
    z, lay = logits.reshape(-1, logits.shape[-1]), layout(ids, perturbed, kept)
    zk = z.gather(-1, lay.cols).to(dtype) / temperature
    d_zk, go = slot_coefficients(grad.to(dtype), zk, lay, temperature)
    # padding slots (a discrete row's, kept -1) have coefficient 0
    grad_z = torch.zeros(z.shape, dtype=dtype, device=z.device).scatter_add_(-1, lay.cols, d_zk)
    rows = lay.full.nonzero().squeeze(-1)
    zf = z.index_select(0, rows).to(dtype) / temperature
    grad_z.index_add_(0, rows, -torch.softmax(zf, -1) * go[rows, None] / temperature)
    return grad_z.to(logits.dtype).reshape(logits.shape)


def multiplex_logprob_from_hidden(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                                  ids: Tensor, perturbed: Tensor, kept: Tensor,
                                  temperature: float, chunk_size: int
                                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(log-probs (..., K), lse (N,), zk (N, K + W)); lse and zk are saved for the backward."""
    dtype = compute_dtype(hidden, weight, perturbed)
    h, lay = hidden.reshape(-1, hidden.shape[-1]), layout(ids, perturbed, kept)
    zk = gathered_logits(h, weight, bias, lay.cols, dtype, chunk_size, lay.wide) / temperature
    zk = zk.masked_fill(_unread(lay), 0.0)  # unread slots: 0, as the kernel stores them
    _, lse = subtract_normalisers(torch.zeros(h.shape[0], dtype=dtype, device=h.device), h,
                                  weight, bias, lay.cols, temperature, chunk_size, dtype,
                                  _block_lse, lay.full)
    return slot_logprobs(zk, lse, lay).reshape(ids.shape), lse, zk


def multiplex_logprob_from_hidden_backward(grad: Tensor, hidden: Tensor, weight: Tensor,
                                           bias: Tensor | None, ids: Tensor, perturbed: Tensor,
                                           kept: Tensor, lse: Tensor, zk: Tensor,
                                           temperature: float, chunk_size: int
                                           ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. hidden, weight and bias (empty (0,) without bias)."""
    dtype = compute_dtype(hidden, weight, perturbed)
    h, lay = hidden.reshape(-1, hidden.shape[-1]), layout(ids, perturbed, kept)
    d_zk, go = slot_coefficients(grad.to(dtype), zk, lay, temperature)
    grad_h, grad_w, grad_b = normaliser_backward(go, h, weight, bias, lay.cols, lse,
                                                 temperature, chunk_size, dtype, dtype, dtype,
                                                 _block_grad, lay.full)
    gathered_backward(d_zk, h, weight, lay.cols, grad_h, grad_w, grad_b, dtype, chunk_size,
                      lay.wide)
    return cast_grads(grad_h, grad_w, grad_b, hidden, weight, bias)
