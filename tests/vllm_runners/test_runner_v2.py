"""Model Runner V2 against vLLM's own classes (v2_driver.py): the soft-input model state and
the logits processor through several steps with chunked prefill, slot reuse, row reordering
and preemption with recompute give the Hugging Face adapter's rollouts."""

import pytest
import torch
from conftest import needs_v2
from vllm_helpers import assert_same_rollout, replay_errors

from softgrpo.adapters import hf
from softgrpo.rollout import SoftThinkingConfig

pytestmark = needs_v2

PROMPTS = ["1 + 2 =", "x", "the answer is 3 so we get", "( 4 + 5 ) . 3 = 2 x y 7 + 1 = 8 so",
           "y", "step 1 : 2 + 2 = 4 step 2 : 4 + 3"]


@pytest.mark.parametrize("arch", ["qwen3", "gemma"])
def test_v2_bookkeeping_gives_the_hf_rollouts(checkpoints, arch):
    from v2_driver import V2Driver

    path, model, tokenizer = checkpoints[arch]
    config = SoftThinkingConfig(max_new_tokens=20, seed=5, think_end="8", max_thinking_tokens=10)
    ids = torch.tensor([4, 8, 15, 16, 23, 42])
    driver = V2Driver(model, path, max_num_reqs=3, budget=12, seed=1)
    ours = driver.run(tokenizer, PROMPTS, config, ids, preempt_steps=(9, 17))
    assert driver.preemptions == 2 and max(driver.slot_uses.values()) >= 3
    assert ours.thinking_mask.sum() > 30 and (ours.response_mask & ~ours.thinking_mask).any()
    assert_same_rollout(ours, hf.generate(model, tokenizer, PROMPTS, config, sequence_ids=ids),
                        atol=1e-3)
    errors = replay_errors(model, ours)
    assert errors["soft_ids"] == 0 and errors["discrete_tokens"] == 0, errors
    assert errors["soft_perturbed"] < 1e-4, errors
