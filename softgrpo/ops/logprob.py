"""soft_logprob: the training-side SofT-GRPO log-prob from logits (spec section 4)."""

from __future__ import annotations

import math

import torch

from softgrpo import _checks
from softgrpo import reference as ref
from softgrpo.ops.registry import on_cuda, without_autocast
from softgrpo.reference.common import compute_dtype

Tensor = torch.Tensor


def _check_records(logits: Tensor, ids: Tensor, perturbed: Tensor, *_) -> None:
    _checks.ids_in_range(ids, logits.shape[-1])
    if not torch.isfinite(perturbed).all():
        raise ValueError("perturbed contains NaN or inf")


@torch.library.custom_op("softgrpo::soft_logprob", mutates_args=())
@without_autocast
def _lp(logits: Tensor, ids: Tensor, perturbed: Tensor, temperature: float, clamp_lo: float,
        clamp_hi: float, mask_threshold: float, eps: float, reduction: str) -> Tensor:
    _check_records(logits, ids, perturbed)
    return ref.soft_logprob(logits, ids, perturbed, temperature, clamp_lo, clamp_hi,
                            mask_threshold, eps, reduction)


@torch.library.custom_op("softgrpo::soft_logprob_backward", mutates_args=())
@without_autocast
def _lp_bwd(grad: Tensor, logits: Tensor, ids: Tensor, perturbed: Tensor, temperature: float,
            clamp_lo: float, clamp_hi: float, mask_threshold: float, eps: float,
            reduction: str) -> Tensor:
    return ref.soft_logprob_backward(grad, logits, ids, perturbed, temperature, clamp_lo,
                                     clamp_hi, mask_threshold, eps, reduction)


on_cuda(_lp, "logprob", "soft_logprob", _check_records)
on_cuda(_lp_bwd, "logprob", "soft_logprob_backward")


@_lp.register_fake
def _(logits, ids, perturbed, *args):
    return logits.new_empty(ids.shape[:-1], dtype=compute_dtype(logits, perturbed))


@_lp_bwd.register_fake
def _(grad, logits, *args):
    return torch.empty_like(logits)


def _setup(ctx, inputs, output):
    logits, ids, perturbed, *ctx.options = inputs
    ctx.save_for_backward(logits, ids, perturbed)


def _backward(ctx, grad):
    logits, ids, perturbed = ctx.saved_tensors
    grad_logits = torch.ops.softgrpo.soft_logprob_backward(grad, logits, ids, perturbed,
                                                           *ctx.options)
    return grad_logits, None, None, None, None, None, None, None, None


_lp.register_autograd(_backward, setup_context=_setup)


def check_logprob_options(temperature: float, clamp: tuple[float, float] | None,
                          mask_threshold: float, eps: float, reduction: str,
                          k: int) -> tuple[float, float, float, float, float, str]:
    """Validate the keyword options shared by soft_logprob and soft_logprob_from_hidden."""
    temperature = _checks.real("temperature", temperature, low=0.0, high=math.inf,
                               low_open=True, high_open=True)
    lo, hi = _checks.clamp_range("clamp", clamp)
    mask_threshold = _checks.real("mask_threshold", mask_threshold)
    eps = _checks.real("eps", eps, low=0.0, high=1.0, low_open=True)
    reduction = _checks.reduction(reduction)
    if reduction == "mean" and math.log(1.0 / k + eps) <= mask_threshold:
        raise ValueError(f"k={k} with mask_threshold={mask_threshold}: a soft row could keep no "
                         "slot and the mean would be undefined; use reduction='sum' or lower "
                         "mask_threshold")
    return temperature, lo, hi, mask_threshold, eps, reduction


def soft_logprob(logits: Tensor, ids: Tensor, perturbed: Tensor, *, temperature: float = 1.0,
                 clamp: tuple[float, float] | None = (-1.5, 3.0), mask_threshold: float = -3.0,
                 eps: float = 1e-6, reduction: str = "mean") -> Tensor:
    """Per-position SofT-GRPO log-prob from logits (spec section 4).

    Args:
        logits: (..., V) float logits (before temperature), scoring the records below.
        ids: (..., k) int64/int32 stored top-k ids; a row with all(ids[..., 1:] == 0) is
            discrete and its label is ids[..., 0].
        perturbed: (..., k) float stored perturbed log-probs y.
        temperature: T > 0, logits are divided by it.
        clamp: bounds of the recovered noise, None for none. mask_threshold, eps: spec 4.
        reduction: "mean" over kept slots (the release) or "sum".

    Returns:
        (...) fp32 (fp64 for fp64 input): Gumbel log-density of the recovered noise for soft
        rows, reading only their k logits; log_softmax(logits / T)[label] for discrete rows.
        Differentiable w.r.t. logits (a soft row's gradient has k non-zero entries).

    Raises:
        TypeError / ValueError naming the argument: dtypes, mismatched shapes, ids out of
        [0, V), non-finite perturbed, temperature <= 0, a bad clamp or reduction.
    """
    _checks.tensor("logits", logits, dtypes=_checks.FLOAT_DTYPES)
    _checks.ids_and_values(ids, perturbed, "perturbed")
    if logits.shape[:-1] != ids.shape[:-1]:
        raise ValueError(f"logits (..., V) and ids (..., k) must share leading dimensions, got "
                         f"{tuple(logits.shape)} and {tuple(ids.shape)}")
    _checks.same_device(logits=logits, ids=ids, perturbed=perturbed)
    options = check_logprob_options(temperature, clamp, mask_threshold, eps, reduction,
                                    ids.shape[-1])
    return torch.ops.softgrpo.soft_logprob(logits, ids, perturbed, *options)
