"""multiplex_sample: one Multiplex Thinking rollout step (spec section 10), as
torch.ops.softgrpo.multiplex_sample."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from softgrpo import _checks, philox
from softgrpo.ops.registry import without_autocast
from softgrpo.ops.sampling import row_keys
from softgrpo.reference import multiplex as ref

MAX_TOP_K = 128  # the kernel's streaming top-k set (kernels/sampling.py MAX_KMAX)
MAX_DRAWS = 64
WEIGHTINGS = ("weighted", "uniform")


class MultiplexSample(NamedTuple):
    """One multiplex step for B rows (spec section 10).

    ids (B, K) int64: the K draws in draw order, repeats allowed; ids[:, 0] is the text token.
    logprobs (B, K) fp32: log p_hat(ids) under the filtered distribution at temperature T.
    weights (B, K) fp32: the input mix, p_hat(ids) renormalised over the K slots ("weighted")
    or 1/K ("uniform").
    token (B,) int64: ids[:, 0]. logprob (B,) fp32: the step's log-prob, logprobs.sum(-1).
    kept (B, top_k) int64: the filter's kept set (the support of p_hat) in descending
    probability, -1 where top-p cut; (B, 0) without a top-k filter (the support is the
    vocabulary).
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    weights: torch.Tensor
    token: torch.Tensor
    logprob: torch.Tensor
    kept: torch.Tensor


@torch.library.custom_op("softgrpo::multiplex_sample", mutates_args=())
@without_autocast
def _multiplex_sample(logits: torch.Tensor, k: int, temperature: float, top_k: int, top_p: float,
                      uniform_weights: bool, seed: torch.Tensor, offset: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _checks.logits_finite(logits)
    return ref.multiplex_sample(logits, k, temperature, top_k, top_p, uniform_weights, seed,
                                offset)


@_multiplex_sample.register_kernel("cuda")
def _multiplex_sample_cuda(logits, *args):
    from softgrpo.kernels import multiplex as kernel

    *out, lse = kernel.multiplex_sample(logits, *args)
    _checks.row_normalisers(lse)  # the kernel's one pass over each row saw every value
    return tuple(out)


@_multiplex_sample.register_fake
def _(logits, k, temperature, top_k, *args):
    b = logits.shape[0]
    f32 = dict(dtype=torch.float32, device=logits.device)
    return (logits.new_empty((b, k), dtype=torch.int64), logits.new_empty((b, k), **f32),
            logits.new_empty((b, k), **f32), logits.new_empty((b, top_k), dtype=torch.int64))


def check_filter(top_k: int | None, top_p: float, vocab: int | None = None) -> int:
    """The multiplex filter: top_k None (the full vocabulary) or 1 <= top_k <= 128 (and <=
    vocab), top_p in (0, 1], top_p < 1 only with a top-k filter. Returns top_k as the op takes
    it (0 for None)."""
    top_p = _checks.real("top_p", top_p, low=0.0, high=1.0, low_open=True)
    if top_k is None:
        if top_p < 1.0:
            raise ValueError(f"top_p={top_p} needs a top-k filter (top_k <= {MAX_TOP_K}): the "
                             "nucleus of the full vocabulary needs a sort of the whole row, "
                             "which the one-pass sampler does not do")
        return 0
    return _checks.integer("top_k", top_k, 1, MAX_TOP_K if vocab is None else min(MAX_TOP_K,
                                                                                    vocab))


def check_weighting(weighting: object) -> bool:
    """True for uniform weights ("uniform", the release's enable_unweighting)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return weighting == "uniform"


def multiplex_sample(logits: torch.Tensor, k: int = 3, *, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float = 1.0, weighting: str = "weighted",
                     seed: int | torch.Tensor = 0,
                     offset: int | torch.Tensor = 0) -> MultiplexSample:
    """One Multiplex Thinking step for a batch of rows (spec section 10): K independent draws
    from the filtered next-token distribution, merged into one input by their weights.

    Args:
        logits: (B, V) fp32, bf16 or fp16 next-token logits. -inf masks a token; NaN, or a row
            that is all -inf, raises ValueError. Not differentiated (detached).
        k: the multiplex width K, the number of draws, 1 <= k <= 64.
        temperature: T > 0 (z = logits / T).
        top_k: None (default, the release's): draw from the full softmax(z). Else keep the
            top_k largest z (ties to the smaller id), 1 <= top_k <= min(128, V).
        top_p: in (0, 1]; < 1 needs top_k. Top-p is measured on the full-vocabulary mass and
            applied inside the top-k set (flashinfer's "joint" order, the release's call).
        weighting: "weighted" (the release's default): weights p_hat(ids) renormalised over
            the slots; "uniform" (its enable_unweighting): 1/K.
        seed, offset: ints or (B,) int64 tensors. Draw j of row b scores token v with the
            Philox Gumbel stream j of (seed_b, offset_b, v): identical on every device and
            independent of the batch; offsets are taken modulo 2**32.

    Returns:
        :class:`MultiplexSample` (ids, logprobs, weights, token, logprob, kept).

    Raises:
        TypeError / ValueError naming the argument on bad input.
    """
    b, v = _checks.logits_rows(logits)
    k = _checks.integer("k", k, 1, MAX_DRAWS)
    temperature = _checks.real("temperature", temperature, low=0.0, high=math.inf,
                               low_open=True, high_open=True)
    top_k = check_filter(top_k, top_p, v)
    uniform = check_weighting(weighting)
    seed_t = row_keys("seed", seed, b, logits.device, philox.MAX_SEED)
    offset_t = row_keys("offset", offset, b, logits.device, philox.MAX_OFFSET)
    ids, logprobs, weights, kept = torch.ops.softgrpo.multiplex_sample(
        logits.detach(), k, temperature, top_k, float(top_p), uniform, seed_t, offset_t)
    return MultiplexSample(ids, logprobs, weights, ids[:, 0], logprobs.sum(-1), kept)


def multiplex_weights(perturbed: torch.Tensor, weighting: str = "weighted") -> torch.Tensor:
    """The input mix of stored multiplex records (..., K) (spec 10): a multiplex row's weights
    p(ids_j) / sum_i p(ids_i) = softmax(perturbed) ("weighted") or 1/K ("uniform"); a discrete
    row ([l_s, -inf, ...]) gets [1, 0, ...]. fp32 (fp64 for fp64 input)."""
    _checks.tensor("perturbed", perturbed, dtypes=_checks.FLOAT_DTYPES)
    logits = perturbed if not check_weighting(weighting) else \
        torch.where(perturbed > -math.inf, 0.0, -math.inf)  # equal over the finite slots
    return torch.softmax(logits.to(torch.promote_types(perturbed.dtype, torch.float32)), -1)


def multiplex_slots(perturbed: torch.Tensor) -> torch.Tensor:
    """(..., K) bool: the slots of stored multiplex records that the loss counts (every draw of
    a multiplex row, slot 0 of a discrete row: the finite perturbed values)."""
    return perturbed > -math.inf
