"""Both model runners against vLLM's own classes (drivers.py): the soft-input model (V1: the
soft class's forward; V2: the model state vLLM resolves for it) and the logits processor
through several steps with chunked prefill, slot reuse, row moves and swaps, row reordering
and preemption with recompute give the Hugging Face adapter's rollouts, under both soft
policies (SofT-GRPO's and Multiplex Thinking's records), also with requests of both in one
batch; given the same logits both runners store the same records bit for bit."""

import pytest
import torch
from drivers import V1, V2
from vllm_helpers import POLICIES, assert_same_rollout, replay_errors, with_policy

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


def _check_records(ours, model, tokenizer, prompts, config, ids) -> None:
    """``ours`` is the HF adapter's rollout of the same prompts, and every recorded step is
    what the policy's sampler gives on the replayed logits."""
    assert_same_rollout(ours, hf.generate(model, tokenizer, prompts, config, sequence_ids=ids),
                        atol=1e-3)
    assert (ours.kept_ids is not None) == config.multiplex  # the policies' test settings
    errors = replay_errors(model, ours)
    assert errors["soft_ids"] == 0 and errors["discrete_tokens"] == 0, errors
    assert errors["soft_kept"] == 0 and errors["discrete_tails"] == 0, errors
    assert errors["soft_perturbed"] < 1e-4, errors


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("arch", ["qwen3", "gemma"])
@pytest.mark.parametrize("policy", POLICIES)
def test_runner_gives_the_hf_rollouts(checkpoints, runner, arch, policy):
    path, model, tokenizer = checkpoints[arch]
    config = with_policy(CONFIG, policy)
    driver = _driver(runner, path, max_num_reqs=3, budget=12, seed=1)
    ours = driver.run(tokenizer, PROMPTS, config, IDS, preempt_steps=(9, 17))
    assert driver.preemptions == 2
    if runner == "v2":
        assert max(driver.slot_uses.values()) >= 3
    assert ours.thinking_mask.sum() > 30 and (ours.response_mask & ~ours.thinking_mask).any()
    _check_records(ours, model, tokenizer, PROMPTS, config, IDS)


@pytest.mark.parametrize("runner", RUNNERS)
def test_both_policies_in_one_batch(checkpoints, runner):
    """Requests of both policies (and widths k 5 and 3) share the runner's batches: each
    gets its own records and soft inputs (the soft inputs are built per config)."""
    path, model, tokenizer = checkpoints["gemma"]
    driver = _driver(runner, path, max_num_reqs=4, budget=16, seed=4)
    halves = (PROMPTS[:3], IDS[:3], "gumbel"), (PROMPTS[3:], IDS[3:], "multiplex")
    jobs = [(prompts, with_policy(CONFIG, policy), ids) for prompts, ids, policy in halves]
    rollouts = driver.run_together(tokenizer, jobs, preempt_steps=(8,))
    assert driver.preemptions == 1
    for (prompts, config, ids), ours in zip(jobs, rollouts):
        assert ours.thinking_mask.any()
        _check_records(ours, model, tokenizer, prompts, config, ids)


@pytest.mark.skipif(not (V1 and V2), reason="this vLLM has only one of the runners")
@pytest.mark.parametrize("policy", POLICIES)
def test_same_logits_give_the_same_records_bit_for_bit(checkpoints, policy):
    """Without chunked prefill each request's forward is the same computation under both
    runners (its own KV cache, the same token spans), so both see the same logits whatever
    the rows' order and slots: the records are identical, bit for bit."""
    path, _, tokenizer = checkpoints["qwen3"]
    config = with_policy(CONFIG, policy)
    rollouts, drivers = [], []
    for runner, seed in (("v1", 2), ("v2", 3)):
        drivers.append(_driver(runner, path, max_num_reqs=3, budget=128, seed=seed))
        rollouts.append(drivers[-1].run(tokenizer, PROMPTS, config, IDS, preempt_steps=(7,)))
    v1, v2 = rollouts
    assert v1.tensors().keys() == v2.tensors().keys()
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
