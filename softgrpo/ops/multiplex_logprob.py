"""multiplex_logprob and multiplex_logprob_from_hidden: the training-side Multiplex Thinking
log-prob, one value per draw (spec section 10), as torch.ops.softgrpo ops with backward ops.

From hidden states no (N, V) logits are formed: a row reads the K + W head rows of its draws
and kept set (K + W dot products), and only the rows normalised over the vocabulary run the
fused head's chunked online log-sum-exp (softgrpo/reference/fused_linear.py); on CUDA the
gathered logits and their gradient are Triton kernels (kernels/fused_linear.py).
"""

from __future__ import annotations

import math

import torch

from softgrpo import _checks
from softgrpo.ops.fused_linear import _check_head
from softgrpo.ops.registry import on_cuda, without_autocast
from softgrpo.reference import multiplex_logprob as ref
from softgrpo.reference.common import compute_dtype
from softgrpo.reference.fused_linear import default_chunk_size

Tensor = torch.Tensor
# a draw's normaliser in training: the rollout's kept set (exact) or the vocabulary (release)
MULTIPLEX_LOGPROBS = ("filtered", "full")


def _check_records(vocab: int, ids: Tensor, perturbed: Tensor, kept: Tensor) -> None:
    """Data checks of multiplex records (spec 10; run inside the ops)."""
    _checks.ids_in_range(ids, vocab)
    if kept.numel() and (int(kept.min()) < -1 or int(kept.max()) >= vocab):
        raise ValueError(f"kept must lie in [-1, {vocab}) (-1: an unused slot), got values in "
                         f"[{int(kept.min())}, {int(kept.max())}]")
    if torch.isnan(perturbed).any() or (perturbed == math.inf).any():
        raise ValueError("perturbed contains NaN or +inf (the draws' log-probs; -inf marks a "
                         "discrete row's slots 1..)")
    if (perturbed[..., 0] == -math.inf).any():
        raise ValueError("perturbed[..., 0] contains -inf: slot 0 holds the step's token, "
                         "whose log-prob is finite")
    if kept.shape[-1]:
        inside = (ids[..., :, None] == kept[..., None, :]).any(-1).all(-1)
        if (~ref.is_discrete(perturbed) & ~inside).any():
            raise ValueError("a multiplex row draws an id outside its kept set: kept must be "
                             "the support the rollout drew from")


@torch.library.custom_op("softgrpo::multiplex_logprob", mutates_args=())
@without_autocast
def _mlp(logits: Tensor, ids: Tensor, perturbed: Tensor, kept: Tensor,
         temperature: float) -> Tensor:
    _check_records(logits.shape[-1], ids, perturbed, kept)
    return ref.multiplex_logprob(logits, ids, perturbed, kept, temperature)


@torch.library.custom_op("softgrpo::multiplex_logprob_backward", mutates_args=())
@without_autocast
def _mlp_bwd(grad: Tensor, logits: Tensor, ids: Tensor, perturbed: Tensor, kept: Tensor,
             temperature: float) -> Tensor:
    return ref.multiplex_logprob_backward(grad, logits, ids, perturbed, kept, temperature)


@_mlp.register_fake
def _(logits, ids, perturbed, kept, temperature):
    return logits.new_empty(ids.shape, dtype=compute_dtype(logits, perturbed))


@_mlp_bwd.register_fake
def _(grad, logits, *args):
    return torch.empty_like(logits)


def _mlp_setup(ctx, inputs, output):
    logits, ids, perturbed, kept, ctx.temperature = inputs
    ctx.save_for_backward(logits, ids, perturbed, kept)


def _mlp_backward(ctx, grad):
    logits, ids, perturbed, kept = ctx.saved_tensors
    grad_logits = torch.ops.softgrpo.multiplex_logprob_backward(grad, logits, ids, perturbed,
                                                                kept, ctx.temperature)
    return grad_logits, None, None, None, None


_mlp.register_autograd(_mlp_backward, setup_context=_mlp_setup)


def _check_hidden_records(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
                          perturbed: Tensor, kept: Tensor, *options) -> None:
    _check_records(weight.shape[0], ids, perturbed, kept)


@torch.library.custom_op("softgrpo::multiplex_logprob_from_hidden", mutates_args=())
@without_autocast
def _mflp(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, perturbed: Tensor,
          kept: Tensor, temperature: float, chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    _check_hidden_records(hidden, weight, bias, ids, perturbed, kept)
    return ref.multiplex_logprob_from_hidden(hidden, weight, bias, ids, perturbed, kept,
                                             temperature, chunk_size)


@torch.library.custom_op("softgrpo::multiplex_logprob_from_hidden_backward", mutates_args=())
@without_autocast
def _mflp_bwd(grad: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
              perturbed: Tensor, kept: Tensor, lse: Tensor, zk: Tensor, temperature: float,
              chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    return ref.multiplex_logprob_from_hidden_backward(grad, hidden, weight, bias, ids, perturbed,
                                                      kept, lse, zk, temperature, chunk_size)


on_cuda(_mflp, "fused_linear", "multiplex_logprob_from_hidden", _check_hidden_records)
on_cuda(_mflp_bwd, "fused_linear", "multiplex_logprob_from_hidden_backward")


@_mflp.register_fake
def _(hidden, weight, bias, ids, perturbed, kept, *args):
    dtype = compute_dtype(hidden, weight, perturbed)
    n = ids.numel() // ids.shape[-1]
    return (hidden.new_empty(ids.shape, dtype=dtype), hidden.new_empty((n,), dtype=dtype),
            hidden.new_empty((n, ids.shape[-1] + kept.shape[-1]), dtype=dtype))


@_mflp_bwd.register_fake
def _(grad, hidden, weight, bias, *args):
    grad_b = weight.new_empty(0) if bias is None else torch.empty_like(bias)
    return torch.empty_like(hidden), torch.empty_like(weight), grad_b


def _mflp_setup(ctx, inputs, output):
    hidden, weight, bias, ids, perturbed, kept, *ctx.options = inputs
    ctx.mark_non_differentiable(output[1], output[2])  # saved for the backward, not results
    ctx.has_bias = bias is not None
    ctx.save_for_backward(hidden, weight, bias, ids, perturbed, kept, output[1], output[2])


def _mflp_backward(ctx, grad, _grad_lse, _grad_zk):
    hidden, weight, bias, ids, perturbed, kept, lse, zk = ctx.saved_tensors
    grad_h, grad_w, grad_b = torch.ops.softgrpo.multiplex_logprob_from_hidden_backward(
        grad, hidden, weight, bias, ids, perturbed, kept, lse, zk, *ctx.options)
    return grad_h, grad_w, grad_b if ctx.has_bias else None, None, None, None, None, None


_mflp.register_autograd(_mflp_backward, setup_context=_mflp_setup)


def _check_inputs(x: Tensor, x_name: str, ids: Tensor, perturbed: Tensor, kept: Tensor | None,
                  temperature: float) -> tuple[Tensor, float]:
    _checks.ids_and_values(ids, perturbed, "perturbed")
    if ids.shape[-1] < 2:
        raise ValueError(f"ids must have k >= 2 slots, got {ids.shape[-1]} (multiplex with one "
                         "draw is ordinary sampling: score it as a discrete row)")
    if x.shape[:-1] != ids.shape[:-1]:
        raise ValueError(f"{x_name} (..., {'H' if x_name == 'hidden' else 'V'}) and ids (..., k) "
                         f"must share leading dimensions, got {tuple(x.shape)} and "
                         f"{tuple(ids.shape)}")
    if kept is None:
        kept = ids.new_empty((*ids.shape[:-1], 0), dtype=torch.int64)
    _checks.tensor("kept", kept, dtypes=_checks.INT_DTYPES)
    if kept.shape[:-1] != ids.shape[:-1]:
        raise ValueError(f"kept (..., W) must share ids' leading dimensions, got "
                         f"{tuple(kept.shape)} and {tuple(ids.shape)}")
    _checks.same_device(**{x_name: x, "ids": ids, "perturbed": perturbed, "kept": kept})
    temperature = _checks.real("temperature", temperature, low=0.0, high=math.inf,
                               low_open=True, high_open=True)
    return kept, temperature


def multiplex_logprob(logits: Tensor, ids: Tensor, perturbed: Tensor, *,
                      kept: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Per-draw log-probs of multiplex records from logits (spec section 10).

    Args:
        logits: (..., V) float logits (before temperature) scoring the records.
        ids: (..., K) int64/int32, K >= 2: a multiplex row's draws (repeats allowed); a
            discrete row is [s, 0, ..., 0].
        perturbed: (..., K) float: the draws' rollout-side log-probs; a discrete row is
            [l_s, -inf, ..., -inf] (what marks it discrete).
        kept: optional (..., W) int64/int32: the support of the rollout's filtered
            distribution (MultiplexSample.kept), -1 for unused slots. Given: each draw is
            normalised over its row's kept set (the "filtered" log-prob, exact); None: over the
            vocabulary (the release's; equal when the rollout had no filter).
        temperature: T > 0, logits are divided by it.

    Returns:
        (..., K) fp32 (fp64 for fp64 input): log p(ids_j); discrete rows log_softmax(z / T)[s]
        in slot 0 and 0 elsewhere. Differentiable w.r.t. logits.

    Raises:
        TypeError / ValueError naming the argument: dtypes, shapes, K < 2, ids or kept out of
        range, NaN/+inf in perturbed or -inf in its slot 0, a draw outside its kept set,
        temperature <= 0.
    """
    _checks.tensor("logits", logits, dtypes=_checks.FLOAT_DTYPES)
    kept, temperature = _check_inputs(logits, "logits", ids, perturbed, kept, temperature)
    return torch.ops.softgrpo.multiplex_logprob(logits, ids, perturbed, kept, temperature)


def multiplex_logprob_from_hidden(hidden: Tensor, weight: Tensor, ids: Tensor,
                                  perturbed: Tensor, *, kept: Tensor | None = None,
                                  bias: Tensor | None = None, temperature: float = 1.0,
                                  chunk_size: int | None = None) -> Tensor:
    """multiplex_logprob(hidden @ weight.T + bias, ...) without the (N, V) logits.

    A row reads the K + W head rows of its draws and kept set (K + W dot products); the rows
    normalised over the vocabulary (discrete rows, and every row when kept is None) run the
    fused head's chunked online log-sum-exp in blocks of at most chunk_size tokens x
    chunk_size vocabulary entries, recomputed in the backward.

    Args:
        hidden: (..., H) float last hidden states. weight: (V, H) LM head, hidden's dtype.
        ids, perturbed, kept, temperature: as multiplex_logprob. bias: optional (V,).
        chunk_size: block edge of the full-vocabulary logits; None: min(4096, max(N, V)).

    Returns:
        (..., K) fp32 (fp64 for fp64 input) per-draw log-probs, differentiable w.r.t. hidden,
        weight and bias.

    Raises:
        TypeError / ValueError naming the argument, as multiplex_logprob and
        soft_logprob_from_hidden.
    """
    _check_head(hidden, weight, bias)
    kept, temperature = _check_inputs(hidden, "hidden", ids, perturbed, kept, temperature)
    _checks.same_device(hidden=hidden, weight=weight, bias=bias)
    if chunk_size is None:
        chunk_size = default_chunk_size(ids.numel() // ids.shape[-1], weight.shape[0])
    chunk_size = _checks.integer("chunk_size", chunk_size, 1)
    return torch.ops.softgrpo.multiplex_logprob_from_hidden(hidden, weight, bias, ids, perturbed,
                                                            kept, temperature, chunk_size)[0]
