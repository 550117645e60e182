"""Reference for one soft-thinking rollout step (spec section 2)."""

from __future__ import annotations

import math

import torch

from softgrpo import philox


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z = logits / T in fp32 (x / 1 == x exactly: no division at T = 1)."""
    z = logits.float()
    return z if temperature == 1.0 else z / temperature


def topk_sorted(logits: torch.Tensor, k: int, temperature: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of z = logits / T (B, V) in fp32: values descending, ties broken by
    the smaller id.

    torch.topk leaves the order of ties unspecified; this order is the one the kernel uses,
    so both paths pick the same tokens even for bf16 logits full of ties. z is formed for
    the top k + 1 of the logits only: the cast to fp32 and the division by T > 0 keep the
    order of values (at most merging neighbours into ties), so these hold the top k of z,
    and z's (k+1)-th value tells whether a tie crosses the k-th place. Rows where one does
    (rare but for coarse bf16 logits) take the exact path on their whole row."""
    vals, ids = torch.topk(logits, min(k + 1, logits.shape[-1]), dim=-1)
    vals = scaled(vals, temperature)
    kth = vals[:, k - 1:k]
    # a value tied with the k-th is left out iff the (k+1)-th equals it (never when k = V)
    cut_ties = (vals[:, k:k + 1] == kth).any(-1).nonzero().squeeze(-1)
    ids = ids[:, :k]
    if cut_ties.numel():
        zt = scaled(logits.index_select(0, cut_ties), temperature)
        above, tied = zt > kth[cut_ties], zt == kth[cut_ties]
        need = k - above.sum(-1, keepdim=True)
        chosen = above | (tied & (tied.cumsum(-1, dtype=torch.int32) <= need))
        ids = ids.index_copy(0, cut_ties, chosen.nonzero()[:, 1].view(-1, k))  # k per row
    ids = ids.sort(dim=-1).values  # ascending id, then a stable sort by value
    vals = scaled(logits.gather(-1, ids), temperature)
    order = torch.sort(vals, dim=-1, descending=True, stable=True).indices
    return vals.gather(-1, order), ids.gather(-1, order)


def nucleus(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p on probabilities p sorted descending (B, k), then renormalised.

    A slot is cut once the mass before it exceeds top_p; tied slots are cut or kept together
    (the mass before a tie is taken at its first slot), as flashinfer's top-p sampler does."""
    desc = p.neg().contiguous()  # ascending: searchsorted finds each tie's first slot
    first = torch.searchsorted(desc, desc)
    p = p.masked_fill(p.cumsum(-1).gather(-1, first) - p > top_p, 0.0)
    return p / p.sum(-1, keepdim=True)


def filtered(vals: torch.Tensor, top_p: float) -> torch.Tensor:
    """p_hat of spec 2.2 from the sorted top-k logits: renormalise, nucleus, renormalise."""
    return nucleus(torch.softmax(vals, dim=-1), top_p)  # the full normaliser cancels


def soft_sample(logits: torch.Tensor, k: int, temperature: float, top_p: float, tau: float,
                noise_scale: float, seed: torch.Tensor, offset: torch.Tensor,
                thinking: torch.Tensor, clamp_lo: float, clamp_hi: float, discrete_k: int,
                discrete_top_p: float, mask_threshold: float, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    greedy = temperature == 0.0
    temperature = 1.0 if greedy else temperature  # greedy: the distribution at T = 1
    vals, ids = topk_sorted(logits, max(k, discrete_k), temperature)
    seed, offset = seed[:, None], offset[:, None]
    # noise of the top max(k, discrete_k) ids, drawn once: soft and discrete rows take prefixes
    g_all = torch.zeros_like(vals) if greedy else philox.gumbel(seed, offset, ids)

    # Soft rows: perturbed log-probs y = l + c g with clamped Gumbel noise, slots by y.
    p = filtered(vals[:, :k], top_p)
    l_soft = torch.log(p + eps)
    soft_ids = ids[:, :k]
    g = g_all[:, :k].clamp(clamp_lo, clamp_hi)
    y = (l_soft + noise_scale * g).masked_fill(p == 0, -math.inf)  # a cut slot: y -inf, w 0
    order = torch.sort(y, dim=-1, descending=True, stable=True).indices
    y, soft_ids, g, l_soft = (t.gather(-1, order) for t in (y, soft_ids, g, l_soft))
    weights = torch.softmax(y / tau, dim=-1)
    kept = (l_soft > mask_threshold).float()
    soft_logprob = (kept * (-g - torch.exp(-g))).sum(-1) / kept.sum(-1)

    # Discrete rows: exact Gumbel-max (unclamped, unscaled noise) over the kept slots.
    p_d = filtered(vals[:, :discrete_k], discrete_top_p)
    l_d = torch.log(p_d + eps)
    cand = ids[:, :discrete_k]
    pick = (l_d + g_all[:, :discrete_k]).masked_fill(p_d == 0, -math.inf).argmax(-1, keepdim=True)
    token = cand.gather(-1, pick)
    rows = (~thinking).nonzero().squeeze(-1)  # the full-vocabulary normaliser: these rows only
    token_logprob = scaled(logits.gather(-1, token), temperature).squeeze(-1).index_add(
        0, rows, -torch.logsumexp(scaled(logits.index_select(0, rows), temperature), -1))
    first = torch.zeros_like(y, dtype=torch.bool)
    first[:, 0] = True
    d_ids = torch.where(first, token, 0)
    d_perturbed = torch.where(first, l_d.gather(-1, pick), 0.0)

    rows = thinking[:, None]
    return (torch.where(rows, soft_ids, d_ids),
            torch.where(rows, y, d_perturbed),
            torch.where(rows, weights, first.float()),
            torch.where(thinking, soft_logprob, token_logprob))
