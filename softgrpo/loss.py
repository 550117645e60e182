"""The GRPO / SofT-GRPO loss (spec section 5): group advantages, the PPO clipped policy loss
with dual clip, the KL penalty to a reference policy, and one call combining them.

The same functions serve discrete GRPO (the baseline) and SofT-GRPO: the two algorithms differ
only in the per-position log-prob that goes in. For SofT-GRPO a soft thinking position's
log-prob is the Gumbel-reparameterised density of softgrpo.soft_logprob (spec section 4) and
an answer position's is the ordinary token log-prob; for GRPO every position's is the token
log-prob. Old, new and reference log-probs must all come from the same function.

Multiplex Thinking (spec section 10) scores a thinking position by K per-draw log-probs, (B, L, K)
with a slot mask (B, L, K) (a discrete row counts slot 0 only). Two ratios: "slot", the
release's (its verl policy loss "multiplex_thinking"): the PPO ratio, clip and dual clip per
draw, summed over the draws of a position; "joint": one ratio of the step's joint log-prob
(the sum over its draws), clipped once, as a discrete token's. On-policy both have the
gradient A * sum_j grad log p(draw_j); off-policy the joint ratio is the product of the K
per-draw ratios, so it leaves the clip range (and stops that position's gradient) sooner,
while the slot loss keeps each draw's own trust region. The KL term always takes the joint
log-prob (a KL between the steps' distributions).

Conventions: log-prob tensors are (B, L) over response positions, B responses, consecutive
rows of a prompt's group adjacent; masks are (B, L) with nonzero (or True) for the positions
that count. Values at masked-out positions are never read, even inf or NaN (padding), and get
a zero gradient. Computation is in fp32 (fp64 when an input is fp64). Old and reference
log-probs and the advantages are treated as constants (detached): gradient reaches only
`logp` (and `entropy`, when an entropy bonus is used).
"""

from __future__ import annotations

import torch

from softgrpo import _checks
from softgrpo.reference.common import compute_dtype

Tensor = torch.Tensor

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
MULTIPLEX_RATIOS = ("slot", "joint")  # multiplex: a ratio per draw (the release's) or per step
KL_KINDS = ("k1", "abs", "k2", "mse", "k3", "low_var_kl")
_MASK_DTYPES = (torch.bool, torch.uint8, *_checks.INT_DTYPES, *_checks.FLOAT_DTYPES)
# verl clamps the log-ratio before exp (stability); beyond +-20 the clip has long taken over.
_LOG_RATIO_BOUND = 20.0


def _same_shape(name: str, x: Tensor, shape: torch.Size, like: str) -> None:
    if x.shape != shape:
        raise ValueError(f"{name} must have the shape of {like} {tuple(shape)}, "
                         f"got {tuple(x.shape)}")


def _check_agg(agg: object) -> str:
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
    return agg


def _per_token(name: str, x: Tensor, like: Tensor, like_name: str = "logp") -> Tensor:
    _checks.tensor(name, x, dtypes=_checks.FLOAT_DTYPES)
    _same_shape(name, x, like.shape, like_name)
    _checks.same_device(**{like_name: like, name: x})
    return x


def _mask(mask: object, like: Tensor, like_name: str = "logp") -> Tensor:
    _checks.tensor("mask", mask, dtypes=_MASK_DTYPES)
    _same_shape("mask", mask, like.shape, like_name)
    _checks.same_device(**{like_name: like, "mask": mask})
    return mask != 0


def _log_probs(logp: object, slot_mask: object = None) -> Tensor | None:
    """Checks logp, (B, L) or with slot_mask (B, L, K); returns slot_mask as bool (or None)."""
    _checks.tensor("logp", logp, dtypes=_checks.FLOAT_DTYPES, ndim=2 if slot_mask is None else 3)
    if slot_mask is None:
        return None
    _checks.tensor("slot_mask", slot_mask, dtypes=_MASK_DTYPES)
    _same_shape("slot_mask", slot_mask, logp.shape, "logp")
    _checks.same_device(logp=logp, slot_mask=slot_mask)
    return slot_mask != 0


def joint_logprob(logp: Tensor, slot_mask: Tensor) -> Tensor:
    """(B, L) the steps' joint log-probs: the sum of (B, L, K) per-draw log-probs over the
    slots that count (others, possibly inf/NaN padding, are never read)."""
    slots = _log_probs(logp, slot_mask)
    return torch.where(slots, logp, 0.0).sum(-1)


def aggregate(values: Tensor, mask: Tensor, agg: str = "token-mean") -> Tensor:
    """Reduce per-position values to a scalar over the masked positions (verl's agg_loss).

    Args:
        values: (B, L) float.
        mask: (B, L) bool or 0/1 numbers; nonzero marks a position that counts.
        agg: "token-mean": sum(values * mask) / sum(mask), every token weighs the same;
            "seq-mean-token-sum": per-row sum over tokens, then the mean over the B rows;
            "seq-mean-token-mean": per-row token mean, then the mean over the B rows;
            "seq-mean-token-sum-norm": the release's Dr. GRPO mode (verl 0.4): the sum over
            rows of the per-row token sums, divided by the padded length L (not a mean over
            rows, whatever the name says).
    Returns:
        A 0-d tensor in values' dtype. With no masked position the result is 0 (still attached
        to values' graph, zero gradient); a row without tokens contributes 0 to the seq modes
        (verl divides by zero there and returns NaN).
    Raises:
        ValueError: unknown agg, values not 2-D, mask of another shape.
    """
    agg = _check_agg(agg)
    _checks.tensor("values", values, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    mask = _mask(mask, values, "values")
    # where, not a product: padding may hold inf/NaN, and where also gives it a zero gradient
    kept = torch.where(mask, values, 0.0)
    if agg == "token-mean":
        return kept.sum() / mask.sum().clamp(min=1)
    per_row = kept.sum(-1)
    if agg == "seq-mean-token-sum-norm":
        return per_row.sum() / max(values.shape[1], 1)
    if agg == "seq-mean-token-mean":
        per_row = per_row / mask.sum(-1).clamp(min=1)
    return per_row.sum() / max(values.shape[0], 1)


def grpo_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-6,
                    normalize_std: bool = True) -> Tensor:
    """GRPO's outcome advantage (spec section 5), one value per response.

    A = (r - mean_group(r)) / (std_group(r) + eps), std unbiased (n - 1), as verl's
    compute_grpo_outcome_advantage. A group of one has mean 0 and std 1 (so A = r / (1 + eps)).
    A group whose rewards are all equal gets A = 0 exactly. normalize_std=False is the
    Dr. GRPO variant A = r - mean_group(r) (groups of one: A = r).

    Args:
        rewards: (B,) float, int or bool, B = n_groups * group_size, a group's rows consecutive.
        group_size: responses per prompt, >= 1.
        eps: added to the std, >= 0.
        normalize_std: divide by the group std (GRPO) or not (Dr. GRPO).
    Returns:
        (B,) advantages, fp32 (fp64 for fp64 rewards), no gradient.
    Raises:
        ValueError: rewards not 1-D, B not a multiple of group_size, bad group_size or eps.
    """
    _checks.tensor("rewards", rewards, ndim=1,
                   dtypes=(torch.bool, *_checks.INT_DTYPES, *_checks.FLOAT_DTYPES))
    group_size = _checks.integer("group_size", group_size, 1)
    eps = _checks.real("eps", eps, low=0.0)
    if rewards.shape[0] % group_size:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, not a multiple of "
                         f"group_size={group_size}")
    r = rewards.detach().to(compute_dtype(rewards)).view(-1, group_size)
    if group_size == 1:
        centred, std = r, torch.ones_like(r)
    else:
        centred = r - r.mean(-1, keepdim=True)
        std = r.std(-1, keepdim=True)
    adv = centred / (std + eps) if normalize_std else centred
    # equal rewards leave float rounding in r - mean (e.g. 0.1 * 3 / 3): force an exact 0
    flat = (r.amax(-1, keepdim=True) == r.amin(-1, keepdim=True)) & (group_size > 1)
    return torch.where(flat, 0.0, adv).view(-1)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "low_var_kl") -> Tensor:
    """Per-position KL estimate between the policy and a reference (Schulman's k1/k2/k3).

    With k = ref_logp - logp (samples drawn from the policy):
      "k1": logp - ref_logp;  "abs": |logp - ref_logp|;  "k2" / "mse": 0.5 * (logp - ref_logp)^2;
      "k3" / "low_var_kl": exp(k) - k - 1 with k clamped to [-20, 20] and the result clamped
      to [-10, 10], exactly as verl's core_algos.kl_penalty (volcengine/verl,
      verl/trainer/ppo/core_algos.py at 012be9d9) and spec section 5.
    Args:
        logp, ref_logp: float tensors of one shape, e.g. (B, L).
        kind: one of KL_KINDS.
    Returns:
        Same shape as logp, fp32 (fp64 for fp64 inputs); ref_logp is detached.
    Raises:
        ValueError: unknown kind, shapes that differ.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")
    _checks.tensor("logp", logp, dtypes=_checks.FLOAT_DTYPES)
    _per_token("ref_logp", ref_logp, logp)
    dtype = compute_dtype(logp, ref_logp)
    diff = logp.to(dtype) - ref_logp.detach().to(dtype)
    if kind == "k1":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind in ("k2", "mse"):
        return 0.5 * diff.square()
    return _k3(-diff)


def _k3(k: Tensor) -> Tensor:
    """exp(k) - k - 1 with verl's clamps: k to [-20, 20] (exp stays finite), result to [-10, 10]."""
    k = k.clamp(-20.0, 20.0)
    return (torch.exp(k) - k - 1.0).clamp(-10.0, 10.0)


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = 3.0,
                agg: str = "token-mean",
                slot_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with dual clip (spec section 5; verl's compute_policy_loss).

    rho = exp(logp - old_logp) (log-ratio clamped to [-20, 20] as verl does);
    pg = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high)); where A < 0,
    pg = min(pg, -dual_clip * A). The loss is aggregate(pg, mask, agg). With slot_mask
    (Multiplex Thinking's "slot" ratio, its release's verl loss "multiplex_thinking"), logp
    and old_logp are (B, L, K) per-draw log-probs: pg per slot, summed over the slots that
    count, then aggregated over positions.

    Args:
        logp: (B, L) current-policy log-probs (the only input that receives gradient), or
            (B, L, K) per-draw log-probs with slot_mask.
        old_logp: rollout-policy log-probs, logp's shape.
        advantages: (B,) per response or (B, L) per position.
        mask: (B, L), nonzero at response positions that count.
        clip_low, clip_high: clip range; clip_low in [0, 1), clip_high >= 0.
        dual_clip: > 1, or None to disable the dual clip.
        agg: one of AGG_MODES (see aggregate).
        slot_mask: (B, L, K), nonzero at the slots that count (a discrete row: slot 0).
    Returns:
        (loss, metrics). loss: 0-d tensor, fp32 (fp64 for fp64 inputs). metrics: detached 0-d
        tensors, all over masked positions (slots) (with none fractions are 0 and ratio
        statistics 1): "clip_frac_low" / "clip_frac_high" (the clipped branch is active, rho
        below 1 - clip_low with A < 0 / above 1 + clip_high with A > 0), "dual_clip_frac",
        "ratio_mean", "ratio_min", "ratio_max", and "approx_kl": the mean k3 estimate of
        KL(old || new) from the rollout's samples, exp(d) - d - 1 with d = logp - old_logp
        (non-negative, low variance; the clamps of kl_penalty's "k3", which this equals as
        kl_penalty(old_logp, logp)).
    Raises:
        ValueError / TypeError naming the argument: shapes, dtypes, clip values, agg.
    """
    slots = _log_probs(logp, slot_mask)
    _per_token("old_logp", old_logp, logp)
    positions = logp.shape[:2]
    mask = _mask(mask, logp[..., 0] if slots is not None else logp)
    _checks.tensor("advantages", advantages, dtypes=_checks.FLOAT_DTYPES)
    if advantages.dim() == 1:
        _same_shape("advantages", advantages, logp.shape[:1], "logp's batch")
        advantages = advantages[:, None]
    else:
        _same_shape("advantages", advantages, positions, "logp's positions")
    counted = mask
    if slots is not None:  # one more dimension: the slots of a position
        advantages, counted = advantages[..., None], mask[..., None] & slots
    clip_low = _checks.real("clip_low", clip_low, low=0.0, high=1.0, high_open=True)
    clip_high = _checks.real("clip_high", clip_high, low=0.0)
    if dual_clip is not None:
        dual_clip = _checks.real("dual_clip", dual_clip, low=1.0, low_open=True)
    agg = _check_agg(agg)

    dtype = compute_dtype(logp, old_logp, advantages)
    # positions (slots) that do not count become log-ratio 0 and A = 0 first, so padding
    # (inf/NaN) is never read, its gradient is exactly zero and its pg is 0
    log_ratio = torch.where(counted, logp.to(dtype) - old_logp.detach().to(dtype), 0.0)
    ratio = log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND).exp()
    adv = torch.where(counted, advantages.detach().to(dtype), 0.0)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clip_active = clipped > unclipped
    pg = torch.where(clip_active, clipped, unclipped)
    dual_active = torch.zeros_like(clip_active)
    if dual_clip is not None:
        bound = -dual_clip * adv
        dual_active = (adv < 0) & (pg > bound)
        pg = torch.where(dual_active, bound, pg)
    loss = aggregate(pg.sum(-1) if slots is not None else pg, mask, agg)

    with torch.no_grad():
        n = counted.sum().clamp(min=1).to(dtype)

        def mean(values: Tensor) -> Tensor:
            return torch.where(counted, values, 0.0).sum().to(dtype) / n

        has_tokens = counted.any()
        metrics = {
            "clip_frac_low": mean((clip_active & (ratio < 1.0)).to(dtype)),
            "clip_frac_high": mean((clip_active & (ratio > 1.0)).to(dtype)),
            "dual_clip_frac": mean(dual_active.to(dtype)),
            "ratio_mean": mean(ratio).where(has_tokens, 1.0),
            "ratio_min": torch.where(counted, ratio, torch.inf).amin().where(has_tokens, 1.0),
            "ratio_max": torch.where(counted, ratio, -torch.inf).amax().where(has_tokens, 1.0),
            "approx_kl": mean(_k3(log_ratio)),
        }
    return loss, metrics


def softgrpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                  ref_logp: Tensor | None = None, kl_coef: float = 0.001,
                  kl_kind: str = "low_var_kl", entropy: Tensor | None = None,
                  entropy_coef: float = 0.0, clip_low: float = 0.2, clip_high: float = 0.2,
                  dual_clip: float | None = 3.0, agg: str = "token-mean",
                  slot_mask: Tensor | None = None,
                  ratio: str = "slot") -> tuple[Tensor, dict[str, float]]:
    """The full (SofT-)GRPO objective one optimiser step minimises (spec section 5).

    loss = policy_loss + kl_coef * aggregate(kl_penalty(logp, ref_logp, kl_kind))
           - entropy_coef * aggregate(entropy)
    The KL term is added only when ref_logp is given and kl_coef > 0; the entropy term only
    when entropy_coef > 0 (then entropy is required). Defaults are the published runs'.
    With slot_mask (Multiplex Thinking, spec 10) the log-probs are (B, L, K) per draw; ratio
    "slot" (the release's) clips per draw, "joint" clips the step's joint log-prob (the sum
    over its draws); the KL term takes the joint log-probs.

    Args:
        logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, agg, slot_mask: as
            policy_loss.
        ref_logp: reference-policy log-probs (logp's shape), or None (no KL term).
        kl_coef: >= 0.  kl_kind: one of KL_KINDS.
        entropy: (B, L) per-position entropy of the current policy (gets gradient), or None.
        entropy_coef: >= 0; the entropy bonus weight.
        ratio: one of MULTIPLEX_RATIOS (with slot_mask).
    Returns:
        (loss, metrics): loss a 0-d tensor; metrics python floats: "loss", "pg_loss", the
        policy_loss metrics, and "kl_loss" / "entropy" when those inputs are given.
    Raises:
        ValueError / TypeError naming the argument.
    """
    kl_coef = _checks.real("kl_coef", kl_coef, low=0.0)
    entropy_coef = _checks.real("entropy_coef", entropy_coef, low=0.0)
    if kl_kind not in KL_KINDS:
        raise ValueError(f"kl_kind must be one of {KL_KINDS}, got {kl_kind!r}")
    if ratio not in MULTIPLEX_RATIOS:
        raise ValueError(f"ratio must be one of {MULTIPLEX_RATIOS}, got {ratio!r}")
    if entropy_coef > 0 and entropy is None:
        raise ValueError("entropy must be given when entropy_coef > 0")
    if slot_mask is not None:  # multiplex: per-draw log-probs
        _per_token("old_logp", old_logp, logp)
        if ref_logp is not None:
            _per_token("ref_logp", ref_logp, logp)
            ref_logp = joint_logprob(ref_logp, slot_mask)
        if ratio == "joint":
            logp, old_logp = joint_logprob(logp, slot_mask), joint_logprob(old_logp, slot_mask)
            slot_mask = None
    per_slot = slot_mask is not None
    pg_loss, stats = policy_loss(logp, old_logp, advantages, mask, clip_low=clip_low,
                                 clip_high=clip_high, dual_clip=dual_clip, agg=agg,
                                 slot_mask=slot_mask)
    if per_slot:
        logp = joint_logprob(logp, slot_mask)  # the KL term's
    kept = _mask(mask, logp)
    loss = pg_loss
    stats = {"pg_loss": pg_loss.detach(), **stats}
    if ref_logp is not None:
        _per_token("ref_logp", ref_logp, logp)
        # padding may hold inf/NaN: zero both there (KL 0) so exp() never meets it in backward
        kl = kl_penalty(torch.where(kept, logp, 0.0), torch.where(kept, ref_logp, 0.0), kl_kind)
        kl = aggregate(kl, kept, agg)
        stats["kl_loss"] = kl.detach()
        if kl_coef > 0:
            loss = loss + kl_coef * kl
    if entropy is not None:
        ent = aggregate(_per_token("entropy", entropy, logp), kept, agg)
        stats["entropy"] = ent.detach()
        if entropy_coef > 0:
            loss = loss - entropy_coef * ent
    stats["loss"] = loss.detach()
    # one device-to-host copy for all metrics instead of one sync per .item()
    values = torch.stack([v.to(torch.float64) for v in stats.values()]).tolist()
    return loss, dict(zip(stats, values))
