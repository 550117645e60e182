"""Soft input embeddings: gumbel_softmax_weights, soft_embedding and their fusion
soft_token_embedding, each a torch.ops.softgrpo op with a custom backward op."""

from __future__ import annotations

import torch

from softgrpo import _checks
from softgrpo import reference as ref
from softgrpo.ops.registry import on_cuda, without_autocast
from softgrpo.reference.common import compute_dtype

Tensor = torch.Tensor


# ---- gumbel_softmax_weights ------------------------------------------------------------------
@torch.library.custom_op("softgrpo::gumbel_softmax_weights", mutates_args=())
@without_autocast
def _gsw(perturbed: Tensor, tau: float, ids: Tensor | None) -> Tensor:
    return ref.gumbel_softmax_weights(perturbed, tau, ids)


@torch.library.custom_op("softgrpo::gumbel_softmax_weights_backward", mutates_args=())
@without_autocast
def _gsw_bwd(grad: Tensor, weights: Tensor, tau: float, ids: Tensor | None) -> Tensor:
    return ref.gumbel_softmax_weights_backward(grad, weights, tau, ids)


on_cuda(_gsw, "embedding", "gumbel_softmax_weights")
on_cuda(_gsw_bwd, "embedding", "gumbel_softmax_weights_backward")


@_gsw.register_fake
def _(perturbed, tau, ids):
    return perturbed.new_empty(perturbed.shape, dtype=compute_dtype(perturbed))


@_gsw_bwd.register_fake
def _(grad, weights, tau, ids):
    return torch.empty_like(weights)


def _gsw_setup(ctx, inputs, output):
    _, ctx.tau, ids = inputs
    ctx.perturbed_dtype = inputs[0].dtype
    ctx.save_for_backward(output, ids)


def _gsw_backward(ctx, grad):
    weights, ids = ctx.saved_tensors
    g = torch.ops.softgrpo.gumbel_softmax_weights_backward(grad, weights, ctx.tau, ids)
    return g.to(ctx.perturbed_dtype), None, None


_gsw.register_autograd(_gsw_backward, setup_context=_gsw_setup)


# ---- soft_embedding --------------------------------------------------------------------------
def _ids_fit_table(table: Tensor, ids: Tensor, *_) -> None:
    _checks.ids_in_range(ids, table.shape[0])


@torch.library.custom_op("softgrpo::soft_embedding", mutates_args=())
@without_autocast
def _emb(table: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
    _ids_fit_table(table, ids)
    return ref.soft_embedding(table, ids, weights)


@torch.library.custom_op("softgrpo::soft_embedding_backward", mutates_args=())
@without_autocast
def _emb_bwd(grad: Tensor, table: Tensor, ids: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    return ref.soft_embedding_backward(grad, table, ids, weights)


on_cuda(_emb, "embedding", "soft_embedding", _ids_fit_table)
on_cuda(_emb_bwd, "embedding", "soft_embedding_backward")


@_emb.register_fake
def _(table, ids, weights):
    return table.new_empty((*ids.shape[:-1], table.shape[-1]))


@_emb_bwd.register_fake
def _(grad, table, ids, weights):
    return torch.empty_like(table), torch.empty_like(weights)


def _emb_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _emb_backward(ctx, grad):
    table, ids, weights = ctx.saved_tensors
    grad_table, grad_weights = torch.ops.softgrpo.soft_embedding_backward(grad, table, ids, weights)
    return grad_table, None, grad_weights


_emb.register_autograd(_emb_backward, setup_context=_emb_setup)


# ---- soft_token_embedding --------------------------------------------------------------------
@torch.library.custom_op("softgrpo::soft_token_embedding", mutates_args=())
@without_autocast
def _tok(table: Tensor, ids: Tensor, perturbed: Tensor, tau: float) -> Tensor:
    _ids_fit_table(table, ids)
    return ref.soft_token_embedding(table, ids, perturbed, tau)


@torch.library.custom_op("softgrpo::soft_token_embedding_backward", mutates_args=())
@without_autocast
def _tok_bwd(grad: Tensor, table: Tensor, ids: Tensor, perturbed: Tensor,
             tau: float) -> tuple[Tensor, Tensor]:
    return ref.soft_token_embedding_backward(grad, table, ids, perturbed, tau)


on_cuda(_tok, "embedding", "soft_token_embedding", _ids_fit_table)
on_cuda(_tok_bwd, "embedding", "soft_token_embedding_backward")


@_tok.register_fake
def _(table, ids, perturbed, tau):
    return table.new_empty((*ids.shape[:-1], table.shape[-1]))


@_tok_bwd.register_fake
def _(grad, table, ids, perturbed, tau):
    return torch.empty_like(table), torch.empty_like(perturbed)


def _tok_setup(ctx, inputs, output):
    table, ids, perturbed, ctx.tau = inputs
    ctx.save_for_backward(table, ids, perturbed)


def _tok_backward(ctx, grad):
    table, ids, perturbed = ctx.saved_tensors
    grad_table, grad_perturbed = torch.ops.softgrpo.soft_token_embedding_backward(
        grad, table, ids, perturbed, ctx.tau)
    return grad_table, None, grad_perturbed, None


_tok.register_autograd(_tok_backward, setup_context=_tok_setup)


# ---- public wrappers -------------------------------------------------------------------------
def _check_table(table: Tensor, ids: Tensor, values: Tensor, values_name: str) -> None:
    _checks.tensor("table", table, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.ids_and_values(ids, values, values_name)
    _checks.same_device(table=table, ids=ids, **{values_name: values})


def _check_tau(tau: float) -> float:
    return _checks.real("tau", tau, low=0.0, high=float("inf"), low_open=True, high_open=True)


def gumbel_softmax_weights(perturbed: Tensor, tau: float, ids: Tensor | None = None) -> Tensor:
    """Soft-token weights softmax(perturbed / tau) over the last dimension (spec 2.6).

    perturbed (..., k) float; ids (..., k) int, optional: rows with all(ids[..., 1:] == 0) are
    discrete and get one-hot weights [1, 0, ..., 0] (and no gradient). Returns (..., k) fp32
    (fp64 for fp64 input). Differentiable w.r.t. perturbed. Raises TypeError/ValueError on bad
    dtypes, shapes or tau <= 0."""
    if ids is None:
        _checks.tensor("perturbed", perturbed, dtypes=_checks.FLOAT_DTYPES)
        if perturbed.shape[-1] < 1:
            raise ValueError("perturbed must have at least one slot (last dimension k >= 1)")
    else:
        _checks.ids_and_values(ids, perturbed, "perturbed")
        _checks.same_device(ids=ids, perturbed=perturbed)
    return torch.ops.softgrpo.gumbel_softmax_weights(perturbed, _check_tau(tau), ids)


def soft_embedding(table: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
    """Soft input embedding out[...] = sum_j weights[..., j] * table[ids[..., j]] (spec 2.8).

    table (V, H) float; ids (..., k) int64/int32 in [0, V); weights (..., k) float.
    Accumulates in fp32 and returns (..., H) in table's dtype. Differentiable w.r.t. table and
    weights. Raises TypeError/ValueError on bad dtypes, shapes or ids out of range."""
    _check_table(table, ids, weights, "weights")
    return torch.ops.softgrpo.soft_embedding(table, ids, weights)


def soft_token_embedding(table: Tensor, ids: Tensor, perturbed: Tensor, tau: float) -> Tensor:
    """soft_embedding(table, ids, gumbel_softmax_weights(perturbed, tau, ids)) in one op.

    Discrete rows (ids [s, 0, ..., 0]) give table[s]. The backward returns the pathwise
    (reparameterised) gradient w.r.t. perturbed and the gradient w.r.t. table, so a trainer
    can keep gradients through soft inputs instead of detaching them (spec 8)."""
    _check_table(table, ids, perturbed, "perturbed")
    return torch.ops.softgrpo.soft_token_embedding(table, ids, perturbed, _check_tau(tau))
