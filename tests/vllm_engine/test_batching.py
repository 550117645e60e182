"""Continuous batching: the soft state follows the request through mixed prompt lengths,
chunked prefill, early finishers, rows that answer while others think, and preemption with
recompute (the Qwen2 engine has KV room for one full-length sequence)."""

import torch
from hf_models import WORDS
from vllm_helpers import assert_same_rollout, replay_errors

from softgrpo.adapters import vllm as sv
from softgrpo.rollout import SoftThinkingConfig, select


def _prompts() -> list[str]:
    lengths = [1, 40, 3, 17, 2, 33, 8, 1, 25, 5]
    return [" ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(n))
            for i, n in enumerate(lengths)]


def _preemptions(llm) -> int:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")


def test_state_follows_the_request(qwen):
    llm, model, tokenizer = qwen
    prompts = _prompts()
    ids = torch.tensor([70, 3, 12, 9, 100, 4, 5, 61, 8, 2])
    config = SoftThinkingConfig(max_new_tokens=60, seed=21, think_end="8")
    before = _preemptions(llm)
    batch = sv.generate(llm, tokenizer, prompts, config, sequence_ids=ids)
    assert _preemptions(llm) > before  # the run really preempted and recomputed requests

    lengths = batch.response_mask.sum(1)
    assert batch.finished.any() and (lengths < 30).any() and (lengths == 60).any()
    answered = batch.response_mask & ~batch.thinking_mask
    assert (answered.any(1) & batch.thinking_mask.any(1)).sum() >= 2  # switched mid-rollout
    assert (batch.thinking_mask.sum(1) == lengths).any()  # still thinking at the end

    errors = replay_errors(model, batch)
    assert errors["soft_ids"] == 0 and errors["discrete_tokens"] == 0, errors
    assert errors["soft_perturbed"] < 1e-4, errors

    for row in (0, 1, 5, 9):  # alone in the engine: the same records
        alone = sv.generate(llm, tokenizer, [prompts[row]], config, sequence_ids=ids[row:row + 1])
        mine = select(batch, [row])
        steps = int(lengths[row])
        for name in ("response_ids", "topk_ids", "perturbed", "logprobs", "response_mask",
                     "thinking_mask", "forced_mask"):
            setattr(mine, name, getattr(mine, name)[:, :steps])
        mine.prompt_ids, mine.prompt_mask = alone.prompt_ids, alone.prompt_mask
        assert_same_rollout(mine, alone, atol=1e-2)
