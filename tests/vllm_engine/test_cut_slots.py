"""Cut slots on the vLLM engine (spec 2): slots that top-p cut travel as (real id, -inf)
through the per-request records, and at the rollout's weights the training side reproduces
the rollout-side log-prob of every soft row."""

import math

import pytest
import torch
from vllm_helpers import replay_errors

from softgrpo.adapters import vllm as sv
from softgrpo.adapters.hf import policy_logprobs
from softgrpo.rollout import SoftThinkingConfig

PROMPTS = ["1 + 2 =", "x", "the answer is 3 so we get", "( 4 + 5 ) . 3 = 2 x y"]


@pytest.mark.parametrize("top_p, temperature", [(0.8, 1.0), (0.95, 0.3)])
def test_rows_with_cut_slots_reproduce_the_rollout(top_p, temperature, llama):
    llm, model, tokenizer = llama
    config = SoftThinkingConfig(max_new_tokens=16, seed=4, top_p=top_p, temperature=temperature)
    rollout = sv.generate(llm, tokenizer, PROMPTS, config)
    soft = rollout.thinking_mask
    cut = rollout.perturbed[soft] == -math.inf
    assert cut.any() and not cut[:, 0].any()
    errors = replay_errors(model, rollout)  # the records are soft_sample's on the replay
    assert errors["soft_ids"] == 0 and errors["soft_perturbed"] < 1e-4, errors
    with torch.no_grad():
        logp = policy_logprobs(model, rollout)
    torch.testing.assert_close(logp[soft], rollout.logprobs[soft], rtol=0, atol=1e-4)
