"""Model Runner V2 end to end on a GPU (benchmarks/gpu_check.sh runs it where a CUDA vLLM
0.31-0.34 is installed; on CPU it is skipped): real engines on the tiny Qwen3 and Gemma
checkpoints under pressure (chunked prefill, preemption), eager and with CUDA graphs, whose
rollouts, under both soft policies, are what the policy's sampler gives on a Hugging Face
replay of their own soft inputs."""

import pytest
import torch
import vllm
from vllm_helpers import POLICIES, QWEN_ENGINE, as_discrete_inputs, replay_errors, with_policy

from softgrpo.adapters import vllm as sv
from softgrpo.rollout import SoftThinkingConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")

PROMPTS = ["1 + 2 =", "x", "the answer is 3 so we get", "( 4 + 5 ) . 3 = 2 x y",
           "step 1 : 2 + 2 = 4 step 2 : 4 + 3 = 7 so the answer is", "y y y"]
_engines: dict[tuple[str, bool], vllm.LLM] = {}  # kept alive: see test_engine


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "cuda-graphs"])
@pytest.mark.parametrize("arch", ["qwen3", "gemma"])
@pytest.mark.parametrize("policy", POLICIES)
def test_model_runner_v2_on_gpu(checkpoints, arch, eager, policy):
    major, minor = (int(x) for x in vllm.__version__.split(".")[:2])
    assert (major, minor) >= (0, 31), f"Model Runner V2 needs vLLM >= 0.31, got {vllm.__version__}"
    path, model, tokenizer = checkpoints[arch]
    if (arch, eager) not in _engines:
        _engines[arch, eager] = sv.create_engine(path, **{**QWEN_ENGINE, "enforce_eager": eager})
    llm = _engines[arch, eager]
    assert llm.collective_rpc("softgrpo_attach")[0]["v2"], "the engine runs the V1 runner"
    before = sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
    config = with_policy(SoftThinkingConfig(max_new_tokens=60, seed=9, think_end="8",
                                            max_thinking_tokens=40), policy)
    rollout = sv.generate(llm, tokenizer, PROMPTS, config, sequence_ids=torch.arange(6) * 7)
    assert sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions") > before
    assert rollout.thinking_mask.sum() > 40
    errors = replay_errors(model, rollout)
    assert errors["soft_ids"] == 0 and errors["discrete_tokens"] == 0, errors
    assert errors["soft_kept"] == 0 and errors["soft_perturbed"] < 1e-3, errors
    control = replay_errors(model, as_discrete_inputs(rollout))
    assert control["soft_ids"] > 10, control
