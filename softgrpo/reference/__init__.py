"""Pure-torch reference implementations: the CPU kernels of every op and the ground truth
the Triton kernels are tested against. Vectorised; no Python loop over rows or tokens."""

from softgrpo.reference.embedding import (
    gumbel_softmax_weights,
    gumbel_softmax_weights_backward,
    soft_embedding,
    soft_embedding_backward,
    soft_token_embedding,
    soft_token_embedding_backward,
)
from softgrpo.reference.logprob import LIKELIHOODS, soft_logprob, soft_logprob_backward
from softgrpo.reference.sampling import soft_sample, topk_sorted

__all__ = [
    "LIKELIHOODS",
    "gumbel_softmax_weights",
    "gumbel_softmax_weights_backward",
    "soft_embedding",
    "soft_embedding_backward",
    "soft_logprob",
    "soft_logprob_backward",
    "soft_sample",
    "soft_token_embedding",
    "soft_token_embedding_backward",
    "topk_sorted",
]
