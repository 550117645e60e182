"""softgrpo: fused ops, losses and adapters for SofT-GRPO (soft-thinking RL).

Importing this package registers the torch.ops.softgrpo.* ops."""

from softgrpo.loss import aggregate, grpo_advantages, kl_penalty, policy_loss, softgrpo_loss
from softgrpo.ops.embedding import gumbel_softmax_weights, soft_embedding, soft_token_embedding
from softgrpo.ops.fused_linear import soft_logprob_from_hidden
from softgrpo.ops.logprob import soft_logprob
from softgrpo.ops.multiplex import MultiplexSample, multiplex_sample
from softgrpo.ops.multiplex_logprob import multiplex_logprob, multiplex_logprob_from_hidden
from softgrpo.ops.sampling import SoftSample, soft_sample
from softgrpo.philox import noise_key
from softgrpo.rewards import (
    exact_match_reward,
    last_boxed,
    math_equal,
    math_reward,
    pass_at_k,
    pass_at_k_first,
)
from softgrpo.rollout import Rollout, SoftThinkingConfig

__version__ = "0.1.0"

__all__ = [
    "MultiplexSample",
    "Rollout",
    "SoftSample",
    "SoftThinkingConfig",
    "aggregate",
    "exact_match_reward",
    "grpo_advantages",
    "gumbel_softmax_weights",
    "kl_penalty",
    "last_boxed",
    "math_equal",
    "math_reward",
    "multiplex_logprob",
    "multiplex_logprob_from_hidden",
    "multiplex_sample",
    "noise_key",
    "pass_at_k",
    "pass_at_k_first",
    "policy_loss",
    "soft_embedding",
    "soft_logprob",
    "soft_logprob_from_hidden",
    "soft_sample",
    "soft_token_embedding",
    "softgrpo_loss",
]
