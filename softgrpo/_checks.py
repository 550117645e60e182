"""Argument checks shared by the public ops: clear errors that name the argument.

Shape, dtype and range-of-scalar checks run in the Python wrappers (static, so they trace
under torch.compile). Checks that read tensor data (NaN, ids out of range) run inside the
op implementations, which torch.compile treats as opaque.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from softgrpo.reference.common import is_discrete
from softgrpo.reference.logprob import LIKELIHOODS

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INT_DTYPES = (torch.int64, torch.int32)


def tensor(name: str, x: object, *, dtypes: Sequence[torch.dtype], min_dim: int = 1,
           ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}")
    return x


def logits_rows(logits: object) -> tuple[int, int]:
    """(B, V) of non-empty 2-D float logits (the samplers' input)."""
    tensor("logits", logits, dtypes=FLOAT_DTYPES, ndim=2)
    if logits.numel() == 0:
        raise ValueError(f"logits must be non-empty, got shape {tuple(logits.shape)}")
    return logits.shape


def same_device(**tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors must be on one device, got {devices}")


def ids_and_values(ids: torch.Tensor, values: torch.Tensor, values_name: str) -> None:
    tensor("ids", ids, dtypes=INT_DTYPES)
    tensor(values_name, values, dtypes=FLOAT_DTYPES)
    if ids.shape != values.shape:
        raise ValueError(f"ids and {values_name} must have the same shape, got "
                         f"{tuple(ids.shape)} and {tuple(values.shape)}")
    if ids.shape[-1] < 1:
        raise ValueError("ids must have at least one slot (last dimension k >= 1)")


def integer(name: str, x: object, low: int, high: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < low or (high is not None and x > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {x}")
    return x


def real(name: str, x: object, *, low: float = -math.inf, high: float = math.inf,
         low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(x).__name__}")
    x = float(x)
    too_low = x <= low if low_open else x < low
    too_high = x >= high if high_open else x > high
    if math.isnan(x) or too_low or too_high:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {x}")
    return x


def clamp_range(name: str, bounds: tuple[float, float] | None) -> tuple[float, float]:
    """(lo, hi) with lo < hi; None means no clamp."""
    if bounds is None:
        return -math.inf, math.inf
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"{name} must be a (low, high) pair or None, got {bounds!r}")
    lo, hi = (real(f"{name}[{i}]", b) for i, b in enumerate(bounds))
    if not lo < hi:
        raise ValueError(f"{name} must satisfy low < high, got {bounds}")
    return lo, hi


def reduction(x: object) -> str:
    if x not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {x!r}")
    return x


def ids_in_range(ids: torch.Tensor, size: int, name: str = "ids") -> None:
    """Data check (run inside op implementations): 0 <= ids < size."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
        raise ValueError(f"{name} must lie in [0, {size}), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")


def logits_finite(logits: torch.Tensor) -> None:
    """Data check: no NaN, and every row keeps at least one value above -inf. One pass: a
    row's maximum is NaN iff the row holds a NaN (amax propagates it), -inf iff all are -inf."""
    top = logits.amax(dim=-1)
    if torch.isnan(top).any():
        raise ValueError("logits contain NaN (use -inf to mask a token)")
    if (top == -math.inf).any():
        raise ValueError("logits have a row in which every value is -inf")


def row_normalisers(lse: torch.Tensor) -> None:
    """Data check on per-row log-sum-exps a kernel computed: NaN in, or a row all -inf."""
    if torch.isnan(lse).any():
        raise ValueError("logits contain NaN (use -inf to mask a token)")
    if (lse == -math.inf).any():
        raise ValueError("logits have a row in which every value is -inf")


def perturbed_records(ids: torch.Tensor, perturbed: torch.Tensor, likelihood: str) -> None:
    """Data check of stored perturbed values: no NaN or +inf; -inf marks a slot cut by top-p
    (spec 2) and is never in slot 0, the step's token; for likelihood "token", slot 0 of every
    soft row holds the row's largest value (the Gumbel-max token)."""
    if torch.isnan(perturbed).any() or (perturbed == math.inf).any():
        raise ValueError("perturbed contains NaN or +inf (-inf marks a cut slot)")
    if (perturbed[..., 0] == -math.inf).any():
        raise ValueError("perturbed[..., 0] contains -inf: slot 0 holds the step's token, which "
                         "top-p never cuts")
    if likelihood == "token":
        soft = ~is_discrete(ids)
        if (soft & (perturbed > perturbed[..., :1]).any(dim=-1)).any():
            raise ValueError("likelihood='token' needs slot 0 of every soft row to hold its "
                             "largest perturbed value (the token), as soft_sample stores them")


def likelihood_setting(likelihood: object, conditional_weight: object,
                       noise_clamp: tuple[float, float] | list[float] | None,
                       clamp_name: str = "noise_clamp") -> float:
    """The soft-row likelihood (spec 9) with its weight and the rollout noise clamp it scores:
    "exact" and "token" need unclamped noise. Returns conditional_weight as a float."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    conditional_weight = real("conditional_weight", conditional_weight, low=0.0, high=1.0)
    if conditional_weight and likelihood != "token":
        raise ValueError(f"conditional_weight applies to likelihood 'token' only, got "
                         f"likelihood {likelihood!r}")
    if likelihood != "release" and noise_clamp is not None:
        raise ValueError(f"likelihood {likelihood!r} scores unclamped noise: set {clamp_name} to "
                         f"None (got {tuple(noise_clamp)}); clamped noise has no unbiased "
                         "likelihood-ratio score, its point masses move with the policy (spec 9)")
    return conditional_weight
