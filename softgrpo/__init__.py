"""softgrpo: fused ops, losses and adapters for SofT-GRPO (soft-thinking RL).

Importing this package registers the torch.ops.softgrpo.* ops."""

from softgrpo.ops.embedding import gumbel_softmax_weights, soft_embedding, soft_token_embedding
from softgrpo.ops.logprob import soft_logprob
from softgrpo.ops.sampling import SoftSample, soft_sample
from softgrpo.philox import noise_key
from softgrpo.rollout import Rollout, SoftThinkingConfig

__version__ = "0.1.0"

__all__ = [
    "Rollout",
    "SoftSample",
    "SoftThinkingConfig",
    "gumbel_softmax_weights",
    "noise_key",
    "soft_embedding",
    "soft_logprob",
    "soft_sample",
    "soft_token_embedding",
]
