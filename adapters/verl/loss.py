"""The SofT-GRPO policy loss in verl's policy-loss registry (loss_mode "softgrpo").

The objective is softgrpo.loss.policy_loss (spec section 5: PPO clip with dual clip) on
whatever log-probs verl hands it; with the softgrpo engine those are the soft log-probs of
spec section 4. Clip values come from verl's actor config (clip_ratio, clip_ratio_low,
clip_ratio_high, clip_ratio_c). The result is rescaled to verl's global-batch normalisation
(agg_loss with config.global_batch_info), so it is invariant to data-parallel and
micro-batch splitting exactly like verl's own losses.
"""

from __future__ import annotations

import torch
from verl.trainer.ppo.core_algos import register_policy_loss

from softgrpo.loss import policy_loss

LOSS_MODE = "softgrpo"


def _required(info: dict, key: str, dp_size: int, fallback: torch.Tensor) -> torch.Tensor:
    value = info.get(key)
    if value is None:
        if dp_size > 1:
            raise ValueError(f"global_batch_info[{key!r}] is required when dp_size > 1")
        return fallback
    return torch.as_tensor(value, dtype=fallback.dtype, device=fallback.device)


def verl_scaling(loss_agg_mode: str, mask: torch.Tensor, info: dict) -> tuple[str, torch.Tensor]:
    """(softgrpo agg mode, factor) with softgrpo_loss(agg) * factor == verl's agg_loss.

    softgrpo's aggregates normalise by the local micro-batch; verl's by the global batch
    (batch_num_tokens or global_batch_size) times dp_size (gradients are averaged over
    data-parallel ranks). Without global info verl uses local counts, as does this.
    """
    dp_size = int(info.get("dp_size") or 1)
    mask = mask.bool()
    tokens = mask.sum().double()
    rows = torch.tensor(float(mask.shape[0]), dtype=torch.float64, device=mask.device)
    if loss_agg_mode in ("token-mean", "token-sum"):
        local = tokens.clamp(min=1)
        total = (_required(info, "batch_num_tokens", dp_size, tokens)
                 if loss_agg_mode == "token-mean" else torch.ones_like(tokens))
        return "token-mean", local / total * dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        nonempty = mask.any(-1).sum().double()
        total = _required(info, "global_batch_size", dp_size, nonempty)
        if loss_agg_mode == "seq-mean-token-sum-norm":
            horizon = info.get("loss_scale_factor") or mask.shape[-1]
            total = total * horizon
        agg = "seq-mean-token-mean" if loss_agg_mode.endswith("mean") else "seq-mean-token-sum"
        return agg, rows / total * dp_size
    raise ValueError(f"unsupported loss_agg_mode {loss_agg_mode!r}")


@register_policy_loss(LOSS_MODE)
def softgrpo_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor,
                         advantages: torch.Tensor, response_mask: torch.Tensor,
                         loss_agg_mode: str = "token-mean", config=None,
                         rollout_is_weights: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """verl PolicyLossFn: (B, L) log-probs, advantages and mask -> (loss, metrics).

    Raises ValueError without an actor config, for an unknown loss_agg_mode, and when verl
    passes rollout importance weights: they compare old log-probs with the rollout's, and the
    rollout side reports the "release" soft log-prob only (spec 2.9), not the likelihood
    training may use (spec 9). Disable algorithm.rollout_correction for SofT-GRPO.
    """
    if config is None:
        raise ValueError("the softgrpo policy loss needs verl's actor config")
    if rollout_is_weights is not None:
        raise ValueError("rollout importance weights are not supported with the softgrpo loss: "
                         "the rollout reports the 'release' soft log-prob only, not the "
                         "training likelihood (spec 9); disable algorithm.rollout_correction")
    clip = config.clip_ratio
    clip_low = clip if config.clip_ratio_low is None else config.clip_ratio_low
    clip_high = clip if config.clip_ratio_high is None else config.clip_ratio_high
    agg, factor = verl_scaling(loss_agg_mode, response_mask,
                               getattr(config, "global_batch_info", None) or {})
    loss, stats = policy_loss(log_prob, old_log_prob, advantages, response_mask,
                              clip_low=clip_low, clip_high=clip_high,
                              dual_clip=config.get("clip_ratio_c", 3.0), agg=agg)
    values = torch.stack([v.double() for v in stats.values()]).tolist()
    stats = dict(zip(stats, values))
    metrics = {
        "actor/pg_clipfrac": stats["clip_frac_low"] + stats["clip_frac_high"],
        "actor/pg_clipfrac_lower": stats["dual_clip_frac"],
        **{f"actor/softgrpo/{name}": value for name, value in stats.items()},
    }
    return loss * factor.to(loss.dtype), metrics
