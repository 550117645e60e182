"""soft_logprob: the training-side SofT-GRPO log-prob from logits (spec section 4)."""

from __future__ import annotations

import math

import torch

from softgrpo import _checks
from softgrpo import reference as ref
from softgrpo.ops.registry import on_cuda, without_autocast
from softgrpo.reference.common import compute_dtype

Tensor = torch.Tensor


def _check_records(logits: Tensor, ids: Tensor, perturbed: Tensor, *options) -> None:
    _checks.ids_in_range(ids, logits.shape[-1])
    _checks.perturbed_records(ids, perturbed, options[LIKELIHOOD_AT])


@torch.library.custom_op("softgrpo::soft_logprob", mutates_args=())
@without_autocast
def _lp(logits: Tensor, ids: Tensor, perturbed: Tensor, temperature: float, clamp_lo: float,
        clamp_hi: float, mask_threshold: float, eps: float, reduction: str, likelihood: str,
        conditional_weight: float, noise_scale: float) -> Tensor:
    options = (temperature, clamp_lo, clamp_hi, mask_threshold, eps, reduction, likelihood,
               conditional_weight, noise_scale)
    _check_records(logits, ids, perturbed, *options)
    return ref.soft_logprob(logits, ids, perturbed, *options)


@torch.library.custom_op("softgrpo::soft_logprob_backward", mutates_args=())
@without_autocast
def _lp_bwd(grad: Tensor, logits: Tensor, ids: Tensor, perturbed: Tensor, temperature: float,
            clamp_lo: float, clamp_hi: float, mask_threshold: float, eps: float,
            reduction: str, likelihood: str, conditional_weight: float,
            noise_scale: float) -> Tensor:
    return ref.soft_logprob_backward(grad, logits, ids, perturbed, temperature, clamp_lo,
                                     clamp_hi, mask_threshold, eps, reduction, likelihood,
                                     conditional_weight, noise_scale)


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
    return grad_logits, *(None,) * (2 + len(ctx.options))


_lp.register_autograd(_backward, setup_context=_setup)


LIKELIHOOD_AT = 6  # index of likelihood among the options check_logprob_options returns


def check_logprob_options(temperature: float, clamp: tuple[float, float] | None,
                          mask_threshold: float | None, eps: float, reduction: str | None,
                          likelihood: str, conditional_weight: float, noise_scale: float,
                          k: int) -> tuple[float, float, float, float, float, str, str, float,
                                           float]:
    """Validate the keyword options shared by soft_logprob and soft_logprob_from_hidden; returns
    (temperature, clamp_lo, clamp_hi, mask_threshold, eps, reduction, likelihood,
    conditional_weight, noise_scale) as the ops take them."""
    temperature = _checks.real("temperature", temperature, low=0.0, high=math.inf,
                               low_open=True, high_open=True)
    lo, hi = _checks.clamp_range("clamp", clamp)
    eps = _checks.real("eps", eps, low=0.0, high=1.0, low_open=True)
    conditional_weight = _checks.likelihood_setting(likelihood, conditional_weight, clamp,
                                                    "clamp (the rollout's noise clamp)")
    noise_scale = _checks.real("noise_scale", noise_scale, low=0.0, high=math.inf,
                               low_open=True, high_open=True)
    if likelihood != "release":
        for name, value in (("reduction", reduction), ("mask_threshold", mask_threshold)):
            if value is not None:
                raise ValueError(f"{name} applies to likelihood='release' only, got {name}="
                                 f"{value!r} with likelihood={likelihood!r}")
        return temperature, lo, hi, -math.inf, eps, "sum", likelihood, conditional_weight, \
            noise_scale
    mask_threshold = _checks.real("mask_threshold", -3.0 if mask_threshold is None
                                  else mask_threshold)
    reduction = _checks.reduction("mean" if reduction is None else reduction)
    if reduction == "mean" and math.log(1.0 / k + eps) <= mask_threshold:
        raise ValueError(f"k={k} with mask_threshold={mask_threshold}: a soft row could keep no "
                         "slot and the mean would be undefined; use reduction='sum' or lower "
                         "mask_threshold")
    return temperature, lo, hi, mask_threshold, eps, reduction, likelihood, conditional_weight, \
        noise_scale


def soft_logprob(logits: Tensor, ids: Tensor, perturbed: Tensor, *, temperature: float = 1.0,
                 clamp: tuple[float, float] | None = (-1.5, 3.0),
                 mask_threshold: float | None = None, eps: float = 1e-6,
                 reduction: str | None = None, likelihood: str = "release",
                 conditional_weight: float = 0.0, noise_scale: float = 1.0) -> Tensor:
    """Per-position SofT-GRPO log-prob from logits (spec sections 4 and 9).

    Args:
        logits: (..., V) float logits (before temperature), scoring the records below.
        ids: (..., k) int64/int32 stored top-k ids; a row with all(ids[..., 1:] == 0) is
            discrete and its label is ids[..., 0].
        perturbed: (..., k) float stored perturbed log-probs y; -inf marks a slot that top-p
            cut (spec 2): soft rows normalise and score over their finite slots only.
        temperature: T > 0, logits are divided by it.
        clamp: the rollout's noise clamp (the recovered noise is clamped to it), None for none.
        eps: spec 4 (lp = log(p + eps)).
        likelihood: the soft-row score (spec 9). "release" (the paper's): mean over kept slots
            with lp > mask_threshold of the Gumbel log-density of clamp(y - lp); "exact": the
            joint log-density of the kept slots' noise (y - lp) / noise_scale, unbiased;
            "token": log P(token) + conditional_weight * log q(y | token), the token being
            slot 0 (the largest y). "exact" and "token" need clamp=None.
        mask_threshold: "release" only, default -3. reduction: "release" only, "mean" (default,
            the release) or "sum" over the kept slots.
        conditional_weight: "token" only, in [0, 1]: 0 is the Rao-Blackwellised token score,
            1 equals "exact".
        noise_scale: the rollout's noise scale c > 0 ("exact" and "token"; the release
            recovers y - lp whatever c).

    Returns:
        (...) fp32 (fp64 for fp64 input): the soft rows' likelihood, reading only their k
        logits; log_softmax(logits / T)[label] for discrete rows. Differentiable w.r.t.
        logits (a soft row's gradient has k non-zero entries).

    Raises:
        TypeError / ValueError naming the argument: dtypes, mismatched shapes, ids out of
        [0, V), NaN or +inf in perturbed, -inf in slot 0, temperature <= 0, a bad clamp,
        reduction, likelihood or conditional_weight, release-only options with another
        likelihood, a clamp with "exact" or "token", and (for "token") a soft row whose
        slot 0 is not its largest value.
    """
    _checks.tensor("logits", logits, dtypes=_checks.FLOAT_DTYPES)
    _checks.ids_and_values(ids, perturbed, "perturbed")
    if logits.shape[:-1] != ids.shape[:-1]:
        raise ValueError(f"logits (..., V) and ids (..., k) must share leading dimensions, got "
                         f"{tuple(logits.shape)} and {tuple(ids.shape)}")
    _checks.same_device(logits=logits, ids=ids, perturbed=perturbed)
    options = check_logprob_options(temperature, clamp, mask_threshold, eps, reduction,
                                    likelihood, conditional_weight, noise_scale, ids.shape[-1])
    return torch.ops.softgrpo.soft_logprob(logits, ids, perturbed, *options)
