"""soft_sample: one soft-thinking rollout step, as torch.ops.softgrpo.soft_sample."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from softgrpo import _checks, philox
from softgrpo import reference as ref
from softgrpo.ops.registry import without_autocast


class SoftSample(NamedTuple):
    """One rollout step for B rows (spec section 2).

    ids (B, k) int64: top-k token ids, sorted by weight; discrete rows [s, 0, ..., 0].
    perturbed (B, k) fp32: perturbed log-probs y; discrete rows [log p_hat(s), 0, ..., 0].
    weights (B, k) fp32: soft-token weights softmax(y / tau); discrete rows [1, 0, ..., 0].
    token (B,) int64: the step's text token, ids[:, 0].
    logprob (B,) fp32: rollout-side log-prob (spec 2.9) for soft rows, log p(token) for
    discrete rows (full-vocabulary softmax at the sampling temperature).
    """

    ids: torch.Tensor
    perturbed: torch.Tensor
    weights: torch.Tensor
    token: torch.Tensor
    logprob: torch.Tensor


@torch.library.custom_op("softgrpo::soft_sample", mutates_args=())
@without_autocast
def _soft_sample(logits: torch.Tensor, k: int, temperature: float, top_p: float, tau: float,
                 noise_scale: float, seed: torch.Tensor, offset: torch.Tensor,
                 thinking: torch.Tensor, clamp_lo: float, clamp_hi: float, discrete_k: int,
                 discrete_top_p: float, mask_threshold: float, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _checks.logits_finite(logits)
    return ref.soft_sample(logits, k, temperature, top_p, tau, noise_scale, seed, offset,
                           thinking, clamp_lo, clamp_hi, discrete_k, discrete_top_p,
                           mask_threshold, eps)


@_soft_sample.register_kernel("cuda")
def _soft_sample_cuda(logits, *args):
    from softgrpo.kernels import sampling as kernel

    *out, lse = kernel.soft_sample(logits, *args)
    _checks.row_normalisers(lse)  # the kernel's one pass over each row saw every value
    return tuple(out)


@_soft_sample.register_fake
def _(logits, k, *args):
    b = logits.shape[0]
    f32 = dict(dtype=torch.float32, device=logits.device)
    return (logits.new_empty((b, k), dtype=torch.int64), logits.new_empty((b, k), **f32),
            logits.new_empty((b, k), **f32), logits.new_empty((b,), **f32))


def row_keys(name: str, value: int | torch.Tensor, rows: int, device: torch.device,
              high: int) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        _checks.tensor(name, value, dtypes=_checks.INT_DTYPES, ndim=1)
        if value.shape[0] != rows:
            raise ValueError(f"{name} must have shape ({rows},), got {tuple(value.shape)}")
        return value.to(device=device, dtype=torch.int64)
    return torch.full((rows,), _checks.integer(name, value, 0, high), dtype=torch.int64,
                      device=device)


def soft_sample(logits: torch.Tensor, k: int = 5, *, temperature: float = 1.0,
                top_p: float = 0.95, tau: float = 0.1, noise_scale: float = 1.0,
                seed: int | torch.Tensor = 0, offset: int | torch.Tensor = 0,
                thinking: torch.Tensor | None = None,
                noise_clamp: tuple[float, float] | None = (-1.5, 3.0),
                discrete_k: int | None = None, discrete_top_p: float | None = None,
                mask_threshold: float = -3.0, eps: float = 1e-6) -> SoftSample:
    """One soft-thinking rollout step for a batch of rows (spec section 2).

    Args:
        logits: (B, V) fp32, bf16 or fp16 next-token logits. -inf masks a token; NaN, or a row
            that is all -inf, raises ValueError. Sampling is not differentiated: the logits are
            detached.
        k: soft-token width, 1 <= k <= V.
        temperature: T >= 0. T == 0 is greedy: no noise, the filtered distribution is taken at
            T = 1, token = argmax, and the soft weights are softmax(log p_hat / tau), the
            noise-free soft token; soft rows report logprob -1 (the Gumbel log-density at 0).
        top_p: nucleus inside the top-k, in (0, 1].
        tau: Gumbel-softmax temperature, > 0. noise_scale: c >= 0.
        seed, offset: ints or (B,) int64 tensors. The noise of row b at token v is a pure
            function of (seed_b, offset_b, v) (Philox4x32-10), identical on every device and
            independent of the batch; offsets are taken modulo 2**32.
        thinking: (B,) bool, default all True. False rows are discrete: an exact Gumbel-max
            sample from the filtered distribution, in the discrete convention.
        noise_clamp: bounds of the soft rows' noise, None for no clamp.
        discrete_k, discrete_top_p: filter for discrete rows (default: k and top_p).
        mask_threshold, eps: as in spec 2.3 and 2.9.

    Returns:
        :class:`SoftSample` (ids, perturbed, weights, token, logprob).

    Raises:
        TypeError / ValueError naming the argument on bad input.
    """
    b, v = _checks.logits_rows(logits)
    k = _checks.integer("k", k, 1, v)
    discrete_k = k if discrete_k is None else _checks.integer("discrete_k", discrete_k, 1, v)
    temperature = _checks.real("temperature", temperature, low=0.0, high=math.inf, high_open=True)
    top_p = _checks.real("top_p", top_p, low=0.0, high=1.0, low_open=True)
    discrete_top_p = top_p if discrete_top_p is None else _checks.real(
        "discrete_top_p", discrete_top_p, low=0.0, high=1.0, low_open=True)
    tau = _checks.real("tau", tau, low=0.0, high=math.inf, low_open=True, high_open=True)
    noise_scale = _checks.real("noise_scale", noise_scale, low=0.0, high=math.inf, high_open=True)
    mask_threshold = _checks.real("mask_threshold", mask_threshold)
    eps = _checks.real("eps", eps, low=0.0, high=1.0, low_open=True)
    lo, hi = _checks.clamp_range("noise_clamp", noise_clamp)
    if math.log(1.0 / k + eps) <= mask_threshold:
        raise ValueError(f"k={k} with mask_threshold={mask_threshold}: a soft row could keep no "
                         "slot and its rollout log-prob would be undefined; lower mask_threshold")
    seed_t = row_keys("seed", seed, b, logits.device, philox.MAX_SEED)
    offset_t = row_keys("offset", offset, b, logits.device, philox.MAX_OFFSET)
    if thinking is None:
        thinking = torch.ones(b, dtype=torch.bool, device=logits.device)
    _checks.tensor("thinking", thinking, dtypes=(torch.bool,), ndim=1)
    if thinking.shape[0] != b:
        raise ValueError(f"thinking must have shape ({b},), got {tuple(thinking.shape)}")
    _checks.same_device(logits=logits, thinking=thinking)
    ids, perturbed, weights, logprob = torch.ops.softgrpo.soft_sample(
        logits.detach(), k, temperature, top_p, tau, noise_scale, seed_t, offset_t, thinking, lo, hi,
        discrete_k, discrete_top_p, mask_threshold, eps)
    return SoftSample(ids, perturbed, weights, ids[:, 0], logprob)
