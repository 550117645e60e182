"""soft_logprob_from_hidden: the SofT-GRPO log-prob from the last hidden states and the LM
head, never forming the (N, V) logits (spec section 4)."""

from __future__ import annotations

import torch

from softgrpo import _checks
from softgrpo.ops.logprob import LIKELIHOOD_AT, check_logprob_options
from softgrpo.ops.registry import on_cuda, without_autocast
from softgrpo.reference import fused_linear as ref
from softgrpo.reference.common import compute_dtype

Tensor = torch.Tensor


def _check_records(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
                   perturbed: Tensor, *options) -> None:
    _checks.ids_in_range(ids, weight.shape[0])
    _checks.perturbed_records(ids, perturbed, options[LIKELIHOOD_AT])


@torch.library.custom_op("softgrpo::soft_logprob_from_hidden", mutates_args=())
@without_autocast
def _flp(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, perturbed: Tensor,
         temperature: float, clamp_lo: float, clamp_hi: float, mask_threshold: float, eps: float,
         reduction: str, likelihood: str, conditional_weight: float, noise_scale: float,
         chunk_size: int) -> tuple[Tensor, Tensor]:
    options = (temperature, clamp_lo, clamp_hi, mask_threshold, eps, reduction, likelihood,
               conditional_weight, noise_scale, chunk_size)
    _check_records(hidden, weight, bias, ids, perturbed, *options)
    return ref.soft_logprob_from_hidden(hidden, weight, bias, ids, perturbed, *options)


@torch.library.custom_op("softgrpo::soft_logprob_from_hidden_backward", mutates_args=())
@without_autocast
def _flp_bwd(grad: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
             perturbed: Tensor, lse: Tensor, temperature: float, clamp_lo: float,
             clamp_hi: float, mask_threshold: float, eps: float, reduction: str,
             likelihood: str, conditional_weight: float, noise_scale: float,
             chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    return ref.soft_logprob_from_hidden_backward(grad, hidden, weight, bias, ids, perturbed, lse,
                                                 temperature, clamp_lo, clamp_hi,
                                                 mask_threshold, eps, reduction, likelihood,
                                                 conditional_weight, noise_scale, chunk_size)


on_cuda(_flp, "fused_linear", "soft_logprob_from_hidden", _check_records)
on_cuda(_flp_bwd, "fused_linear", "soft_logprob_from_hidden_backward")


@_flp.register_fake
def _(hidden, weight, bias, ids, perturbed, *args):
    dtype = compute_dtype(hidden, weight, perturbed)
    return hidden.new_empty(ids.shape[:-1], dtype=dtype), hidden.new_empty(ids.shape[:-1],
                                                                           dtype=dtype)


@_flp_bwd.register_fake
def _(grad, hidden, weight, bias, *args):
    grad_b = weight.new_empty(0) if bias is None else torch.empty_like(bias)
    return torch.empty_like(hidden), torch.empty_like(weight), grad_b


def _setup(ctx, inputs, output):
    hidden, weight, bias, ids, perturbed, *ctx.options = inputs
    ctx.mark_non_differentiable(output[1])  # the lse is saved for the backward, not a result
    ctx.has_bias = bias is not None
    ctx.save_for_backward(hidden, weight, bias, ids, perturbed, output[1])


def _backward(ctx, grad, _grad_lse):
    hidden, weight, bias, ids, perturbed, lse = ctx.saved_tensors
    grad_h, grad_w, grad_b = torch.ops.softgrpo.soft_logprob_from_hidden_backward(
        grad, hidden, weight, bias, ids, perturbed, lse, *ctx.options)
    return (grad_h, grad_w, grad_b if ctx.has_bias else None, None, None,
            *(None,) * len(ctx.options))


_flp.register_autograd(_backward, setup_context=_setup)


def _check_head(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    _checks.tensor("hidden", hidden, dtypes=_checks.FLOAT_DTYPES)
    _checks.tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight (V, H) must have H = hidden.shape[-1] = {hidden.shape[-1]}, "
                         f"got shape {tuple(weight.shape)}")
    if bias is None:
        return
    _checks.tensor("bias", bias, dtypes=_checks.FLOAT_DTYPES, ndim=1)
    if bias.dtype != weight.dtype:
        raise TypeError(f"bias must have weight's dtype {weight.dtype}, got {bias.dtype}")
    if bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias must have shape (V,) = ({weight.shape[0]},), got "
                         f"{tuple(bias.shape)}")


def soft_logprob_from_hidden(hidden: Tensor, weight: Tensor, ids: Tensor, perturbed: Tensor, *,
                             bias: Tensor | None = None, temperature: float = 1.0,
                             clamp: tuple[float, float] | None = (-1.5, 3.0),
                             mask_threshold: float | None = None, eps: float = 1e-6,
                             reduction: str | None = None, likelihood: str = "release",
                             conditional_weight: float = 0.0, noise_scale: float = 1.0,
                             chunk_size: int | None = None) -> Tensor:
    """soft_logprob(hidden @ weight.T + bias, ids, perturbed, ...) without the (N, V) logits.

    Soft rows read the K rows of weight (and bias) at their ids: K dot products each. Discrete
    rows (all(ids[..., 1:] == 0), label ids[..., 0]) need log_softmax over the vocabulary: it
    is built in blocks of at most chunk_size tokens x chunk_size vocabulary entries with a
    running log-sum-exp, and the backward recomputes each block (the upstream gradient is per
    token, so a gradient formed in the forward would be wrong).

    Args:
        hidden: (..., H) float last hidden states (the positions scored by the records below).
        weight: (V, H) LM head, tied or not, hidden's dtype.
        ids: (..., k) int64/int32 stored top-k ids in [0, V); perturbed: (..., k) float y.
        bias: optional (V,) head bias, weight's dtype.
        temperature, clamp, mask_threshold, eps, reduction, likelihood, conditional_weight,
            noise_scale: as in soft_logprob (cut slots hold -inf in perturbed).
        chunk_size: block edge for the discrete rows' logits (and the token blocks of the
            gathered rows); None: min(4096, max(N, V)).

    Returns:
        (...) fp32 (fp64 for fp64 input) log-probs, differentiable w.r.t. hidden, weight and
        bias; bf16/fp16 inputs accumulate in fp32 and get gradients in their own dtype.

    Raises:
        TypeError / ValueError naming the argument: dtypes (weight and bias must match
        hidden), weight's H or bias's V that does not fit, ids and perturbed that do not match
        each other or hidden's leading dimensions, ids out of [0, V), bad perturbed values or
        options (as soft_logprob), a bad chunk_size.
    """
    _check_head(hidden, weight, bias)
    _checks.ids_and_values(ids, perturbed, "perturbed")
    if hidden.shape[:-1] != ids.shape[:-1]:
        raise ValueError(f"hidden (..., H) and ids (..., k) must share leading dimensions, got "
                         f"{tuple(hidden.shape)} and {tuple(ids.shape)}")
    _checks.same_device(hidden=hidden, weight=weight, bias=bias, ids=ids, perturbed=perturbed)
    options = check_logprob_options(temperature, clamp, mask_threshold, eps, reduction,
                                    likelihood, conditional_weight, noise_scale, ids.shape[-1])
    if chunk_size is None:
        chunk_size = ref.default_chunk_size(ids.numel() // ids.shape[-1], weight.shape[0])
    chunk_size = _checks.integer("chunk_size", chunk_size, 1)
    return torch.ops.softgrpo.soft_logprob_from_hidden(hidden, weight, bias, ids, perturbed,
                                                       *options, chunk_size)[0]
