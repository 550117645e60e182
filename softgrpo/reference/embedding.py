"""Reference for soft input embeddings (spec sections 2.6, 2.8 and 4)."""

from __future__ import annotations

import torch

from softgrpo.reference.common import compute_dtype, is_discrete


def gumbel_softmax_weights(perturbed: torch.Tensor, tau: float,
                           ids: torch.Tensor | None) -> torch.Tensor:
    w = torch.softmax(perturbed.to(compute_dtype(perturbed)) / tau, dim=-1)
    if ids is None:
        return w
    one_hot = torch.zeros_like(w)
    one_hot[..., 0] = 1.0
    return torch.where(is_discrete(ids)[..., None], one_hot, w)


def gumbel_softmax_weights_backward(grad: torch.Tensor, weights: torch.Tensor, tau: float,
                                    ids: torch.Tensor | None) -> torch.Tensor:
    grad = grad.to(weights.dtype)
    g = weights * (grad - (grad * weights).sum(-1, keepdim=True)) / tau  # softmax VJP
    return g if ids is None else g.masked_fill(is_discrete(ids)[..., None], 0.0)


def _rows(table: torch.Tensor, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """table[ids] (..., K, H) in dtype: one index_select of the flat ids (on the CPU several
    times faster than advanced indexing with the (..., K) ids)."""
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[-1]).to(dtype)


def soft_embedding(table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    dtype = compute_dtype(table, weights)
    rows = _rows(table, ids, dtype)
    out = (weights.to(dtype).unsqueeze(-2) @ rows).squeeze(-2)
    return out.to(table.dtype)


def soft_embedding_backward(grad: torch.Tensor, table: torch.Tensor, ids: torch.Tensor,
                            weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(table, weights)
    grad = grad.to(dtype)
    rows = _rows(table, ids, dtype)
    grad_weights = (rows @ grad.unsqueeze(-1)).squeeze(-1)  # <grad_out, E[ids_j]>
    contrib = weights.to(dtype).unsqueeze(-1) * grad.unsqueeze(-2)  # (..., K, H)
    grad_table = torch.zeros(table.shape, dtype=dtype, device=table.device)
    grad_table.index_add_(0, ids.reshape(-1), contrib.reshape(-1, table.shape[-1]))
    return grad_table.to(table.dtype), grad_weights.to(weights.dtype)


def soft_token_embedding(table: torch.Tensor, ids: torch.Tensor, perturbed: torch.Tensor,
                         tau: float) -> torch.Tensor:
    return soft_embedding(table, ids, gumbel_softmax_weights(perturbed, tau, ids))


def soft_token_embedding_backward(grad: torch.Tensor, table: torch.Tensor, ids: torch.Tensor,
                                  perturbed: torch.Tensor, tau: float
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    weights = gumbel_softmax_weights(perturbed, tau, ids)
    grad_table, grad_weights = soft_embedding_backward(grad, table, ids, weights)
    grad_perturbed = gumbel_softmax_weights_backward(grad_weights, weights, tau, ids)
    return grad_table, grad_perturbed.to(perturbed.dtype)
