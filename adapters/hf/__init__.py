"""Hugging Face transformers adapter: soft-thinking rollouts and the training forward.

generate / HFRolloutBackend / soft_thinking_decoding: rollouts (spec sections 1-3).
policy_logprobs / input_embeddings: the training forward (spec section 4).
"""

from .backend import HFRolloutBackend, soft_thinking_decoding
from .forward import input_embeddings, policy_logprobs
from .generate import RolloutTrace, generate

__all__ = ["HFRolloutBackend", "RolloutTrace", "generate", "input_embeddings",
           "policy_logprobs", "soft_thinking_decoding"]
