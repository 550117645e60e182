"""Both model runners against vLLM's own classes (drivers.py): the soft-input model (V1: the
soft class's forward; V2: the model state vLLM resolves for it) and the logits processor
through several steps with chunked prefill, slot reuse, row moves and swaps, row reordering
and preemption with recompute give the Hugging Face adapter's rollouts; given the same
logits both runners store the same records bit for bit."""

import pytest
import torch
from drivers import V1, V2
from vllm_helpers import assert_same_rollout, replay_errors

from softgrpo.adapters import hf
from softgrpo.rollout import SoftThinkingConfig

PROMPTS = ["1 + 2 =", "x", "the answer is 3 so we get", "( 4 + 5 ) . 3 = 2 x y 7 + 1 = 8 so",
           "y", "step 1 : 2 + 2 = 4 step 2 : 4 + 3"]
IDS = torch.tensor([4, 8, 15, 16, 23, 42])
CONFIG = SoftThinkingConfig(max_new_tokens=20, seed=5, think_end="8", max_thinking_tokens=10)
RUNNERS = [pytest.param("v1", marks=pytest.mark.skipif(not V1, reason="no V1 runner")),
           pytest.param("v2", marks=pytest.mark.skipif(not V2, reason="no Model Runner V2 "
                                                       "logits processors"))]


def _driver(runner: str, checkpoint, **kwargs):
    from drivers import V1Driver, V2Driver

    return (V2Driver if runner == "v2" else V1Driver)(checkpoint, **kwargs)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("arch", ["qwen3", "gemma"])
def test_runner_gives_the_hf_rollouts(checkpoints, runner, arch):
    path, model, tokenizer = checkpoints[arch]
    driver = _driver(runner, path, max_num_reqs=3, budget=12, seed=1)
    ours = driver.run(tokenizer, PROMPTS, CONFIG, IDS, preempt_steps=(9, 17))
    assert driver.preemptions == 2
    if runner == "v2":
        assert max(driver.slot_uses.values()) >= 3
    assert ours.thinking_mask.sum() > 30 and (ours.response_mask & ~ours.thinking_mask).any()
    assert_same_rollout(ours, hf.generate(model, tokenizer, PROMPTS, CONFIG, sequence_ids=IDS),
                        atol=1e-3)
    errors = replay_errors(model, ours)
    assert errors["soft_ids"] == 0 and errors["discrete_tokens"] == 0, errors
    assert errors["soft_perturbed"] < 1e-4, errors


@pytest.mark.skipif(not (V1 and V2), reason="this vLLM has only one of the runners")
def test_same_logits_give_the_same_records_bit_for_bit(checkpoints):
    """Without chunked prefill each request's forward is the same computation under both
    runners (its own KV cache, the same token spans), so both see the same logits whatever
    the rows' order and slots: the records are identical, bit for bit."""
    path, _, tokenizer = checkpoints["qwen3"]
    rollouts, drivers = [], []
    for runner, seed in (("v1", 2), ("v2", 3)):
        drivers.append(_driver(runner, path, max_num_reqs=3, budget=128, seed=seed))
        rollouts.append(drivers[-1].run(tokenizer, PROMPTS, CONFIG, IDS, preempt_steps=(7,)))
    v1, v2 = rollouts
    for name, tensor in v1.tensors().items():
        assert torch.equal(tensor.nan_to_num(), getattr(v2, name).nan_to_num()), name
    assert v1.thinking_mask.any() and v1.forced_mask.any()


@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM",
                                  "MistralForCausalLM", "Phi3ForCausalLM"])
def test_soft_class_built_from_vllms_class(arch):
    """The soft class of an architecture subclasses vLLM's own class, resolves by name the way
    a worker process does (a lazy registry entry importing softgrpo's module), and under
    Model Runner V2 names the soft-input model state."""
    from vllm import ModelRegistry

    from softgrpo.adapters.vllm import model as soft_models

    soft_models.register()  # the worker extension's import: every architecture, lazily
    base = ModelRegistry._try_load_model_cls(arch)
    cls = ModelRegistry._try_load_model_cls(soft_models.PREFIX + arch)
    assert cls is soft_models.soft_class(arch) and cls.__name__ == "SoftGRPO" + arch
    assert cls.__mro__[1:3] == (soft_models.SoftInputsMixin, base)
    if V2:
        from vllm.v1.worker.gpu.model_states import resolve_model_state_cls

        from softgrpo.adapters.vllm.runner_v2 import SoftModelState

        assert resolve_model_state_cls(None, cls) is SoftModelState


@pytest.mark.parametrize("arch, reason", [("PaliGemmaForConditionalGeneration", "multimodal"),
                                          ("JambaForCausalLM", "hybrid"),
                                          ("MambaForCausalLM", "attention-free"),
                                          ("NoSuchForCausalLM", "no loadable model class")])
def test_architectures_without_token_inputs_refused(arch, reason):
    from softgrpo.adapters.vllm.model import soft_class

    with pytest.raises(ValueError, match=f"{arch}.*{reason}|{reason}.*{arch}"):
        soft_class(arch)
