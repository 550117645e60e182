"""Engine set-up and requests: bad options rejected at request time, engines that cannot run
soft thinking refused, the caller's own vllm.LLM, ordinary requests beside soft ones, and
loading updated weights."""

import json
import uuid

import pytest
import torch
import vllm
from vllm.exceptions import VLLMValidationError
from vllm.inputs import TokensPrompt
from vllm_helpers import LLAMA_ENGINE, assert_same_rollout, replay_errors

from softgrpo.adapters import hf
from softgrpo.adapters import vllm as sv
from softgrpo.rollout import SoftThinkingConfig

PROMPTS = ["1 + 2 =", "x y", "the answer is"]


# Engines live for the whole session: vLLM tears down its process-global distributed state
# when an in-process engine shuts down, which would break the other engines.
@pytest.fixture(scope="session")
def plain(checkpoints, qwen):
    """A vllm.LLM without softgrpo's options (in-process: qwen's create_engine set that up)."""
    return vllm.LLM(str(checkpoints["qwen2"][0]), dtype="float32", max_model_len=128,
                    enforce_eager=True, kv_cache_memory_bytes=2**21)


@pytest.fixture(scope="session")
def own(checkpoints, llama):
    """The caller's own vllm.LLM built with engine_options."""
    path = checkpoints["llama"][0]
    return vllm.LLM(str(path), enforce_eager=True, **LLAMA_ENGINE, **sv.engine_options(path))


@pytest.fixture(scope="session")
def backend(checkpoints, qwen):
    _, model, tokenizer = checkpoints["qwen2_other"]
    return sv.VLLMRolloutBackend(model, tokenizer, dtype="float32", max_model_len=64,
                                 kv_cache_memory_bytes=2**21)


def _soft_params(config: SoftThinkingConfig, tokenizer, **changes) -> vllm.SamplingParams:
    think_end = tokenizer.encode(config.think_end, add_special_tokens=False)
    payload = sv.request_payload(config, 0, think_end, uuid.uuid4().hex)
    payload["softgrpo"].update(changes.pop("payload", {}))
    for key in changes.pop("drop", ()):
        del payload["softgrpo"][key]
    return vllm.SamplingParams(**{"temperature": 0.0, "max_tokens": config.max_new_tokens,
                                  "extra_args": payload, **changes})


@pytest.mark.parametrize("changes, message", [
    (dict(payload={"config": {"k": 0}}), "k must be"),
    (dict(payload={"config": {"tau": 0.1, "temprature": 1.0}}), "temprature"),
    (dict(payload={"sequence_id": -1}), "sequence_id"),
    (dict(payload={"think_end": []}), "think_end"),
    (dict(drop=("tag",)), "keys config, sequence_id, think_end and tag"),
    (dict(n=2, temperature=1.0), "n == 1"),
    (dict(logit_bias={3: 1.0}), "logit_bias"),
    (dict(allowed_token_ids=[3, 4]), "allowed_token_ids"),
    (dict(max_tokens=5), "max_tokens"),
    (dict(min_tokens=2), "min_tokens"),
])
def test_bad_request_options_rejected(qwen, changes, message):
    llm, _, tokenizer = qwen
    params = _soft_params(SoftThinkingConfig(max_new_tokens=8), tokenizer, **changes)
    with pytest.raises(VLLMValidationError, match=message):
        llm.generate(TokensPrompt(prompt_token_ids=[5, 6]), params, use_tqdm=False)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(config={"k": 5}), TypeError, "SoftThinkingConfig"),
    (dict(sequence_ids=torch.tensor([1, 1, 2])), ValueError, "distinct"),
    (dict(sequence_ids=torch.tensor([1, 2])), ValueError, "shape"),
    (dict(config=SoftThinkingConfig(think_end="</answer>")), ValueError, "think_end"),
    (dict(config=SoftThinkingConfig(max_new_tokens=126)), ValueError, "max_model_len"),
    (dict(config=SoftThinkingConfig(k=20, after_top_k=60)), ValueError, "after_top_k"),
    (dict(config=SoftThinkingConfig(soft_policy="multiplex", k=3, multiplex_top_k=60)),
     ValueError, "multiplex_top_k"),
])
def test_bad_generate_arguments_rejected(qwen, kwargs, error, message):
    llm, _, tokenizer = qwen
    kwargs = {"config": SoftThinkingConfig(max_new_tokens=8), **kwargs}
    with pytest.raises(error, match=message):
        sv.generate(llm, tokenizer, PROMPTS, **kwargs)


def test_unsupported_engine_refused(checkpoints, plain, monkeypatch):
    """An engine without softgrpo's options would sample ordinary tokens: refused, naming the
    supported versions and runners. So are unsupported versions and runners, conflicting
    options and architectures that cannot take soft inputs."""
    path, _, tokenizer = checkpoints["qwen2"]
    with pytest.raises(RuntimeError, match="prefix caching must be off.*Supported: vLLM 0.24 to "
                                           "0.34"):
        sv.generate(plain, tokenizer, PROMPTS, SoftThinkingConfig(max_new_tokens=4))
    for version in ("0.23.1", "0.35.0", "1.0.0"):
        with pytest.raises(RuntimeError, match=f"does not support vLLM {version}.*V1 model "
                                               "runner on 0.24-0.33"):
            sv.check_version(version)
    for version in ("0.24.0", "0.32.9", "0.34.1+cpu"):
        sv.check_version(version)
    with pytest.raises(RuntimeError, match="Model Runner V2 is not supported with vLLM 0.30.0"):
        sv.check_runner(True, "0.30.0")
    with pytest.raises(RuntimeError, match="V1 model runner is not supported with vLLM 0.34.0"):
        sv.check_runner(False, "0.34.0")
    sv.check_runner(True, "0.31.0")
    sv.check_runner(False, "0.33.2")
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        sv.create_engine(path, enable_prefix_caching=True)
    for value, runner in (("0", False), ("1", True)):  # the user's choice, checked up front
        monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", value)
        assert sv.engine.requested_runner() is runner
        sv.engine_options(path)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "yes")
    with pytest.raises(RuntimeError, match="must be 0 or 1.*Supported: vLLM 0.24"):
        sv.engine_options(path)
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    config = json.loads((path / "config.json").read_text())
    for arch, message in (("MambaForCausalLM", "cannot take soft inputs: an? .*model"),
                          ("PaliGemmaForConditionalGeneration", "a multimodal model"),
                          ("NoSuchForCausalLM", "no loadable model class")):
        other = path.parent / arch
        other.mkdir()
        (other / "config.json").write_text(json.dumps({**config, "architectures": [arch]}))
        with pytest.raises(ValueError, match=f"{arch}.*{message}|{message}.*{arch}"):
            sv.engine_options(other)


def test_own_llm_with_ordinary_requests_beside(checkpoints, llama, own):
    """engine_options on the caller's own vllm.LLM gives the same rollouts, and ordinary
    requests batched with soft ones decode exactly as they do alone."""
    tokenizer = checkpoints["llama"][2]
    config = SoftThinkingConfig(max_new_tokens=16, seed=4)
    assert_same_rollout(sv.generate(own, tokenizer, PROMPTS, config),
                        sv.generate(llama[0], tokenizer, PROMPTS, config), atol=0.0)

    plain = [TokensPrompt(prompt_token_ids=tokenizer.encode(p)) for p in PROMPTS]
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=16)
    alone = [o.outputs[0].token_ids for o in own.generate(plain, greedy, use_tqdm=False)]
    soft = [_soft_params(config, tokenizer) for _ in PROMPTS]
    mixed = own.generate([p for pair in zip(plain, plain) for p in pair],
                         [q for pair in zip([greedy] * 3, soft) for q in pair], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[::2]] == alone
    tags = [q.extra_args["softgrpo"]["tag"] for q in soft]
    taken = own.collective_rpc("softgrpo_take", args=(tags,))[0]
    for output, tag in zip(mixed[1::2], tags):
        assert taken[tag]["token"] == list(output.outputs[0].token_ids)
        assert any(taken[tag]["soft"])


def test_load_weights_changes_outputs(qwen, checkpoints):
    llm, model, tokenizer = qwen
    other = checkpoints["qwen2_other"][1]
    config = SoftThinkingConfig(max_new_tokens=12, seed=1)
    base = sv.generate(llm, tokenizer, PROMPTS, config)
    try:
        sv.load_weights(llm, other)
        changed = sv.generate(llm, tokenizer, PROMPTS, config)
        assert not torch.equal(changed.topk_ids, base.topk_ids)
        assert_same_rollout(changed, hf.generate(other, tokenizer, PROMPTS, config), atol=1e-2)
        errors = replay_errors(other, changed)
        assert errors["soft_ids"] == 0 and errors["soft_perturbed"] < 1e-4, errors
    finally:
        sv.load_weights(llm, model.state_dict())
    assert_same_rollout(sv.generate(llm, tokenizer, PROMPTS, config), base, atol=0.0)
    with pytest.raises(TypeError, match="state dict"):
        sv.load_weights(llm, [1, 2])


def test_rollout_backend(checkpoints, backend):
    """VLLMRolloutBackend from an in-memory HF model: the RolloutBackend protocol."""
    _, model, tokenizer = checkpoints["qwen2_other"]
    config = SoftThinkingConfig(max_new_tokens=8, seed=2)
    ids = torch.tensor([3, 1, 2])
    rollout = backend.generate(PROMPTS, config, sequence_ids=ids)
    assert_same_rollout(rollout, hf.generate(model, tokenizer, PROMPTS, config, sequence_ids=ids),
                        atol=1e-2)
    backend.load_weights(checkpoints["qwen2"][1])
    assert not torch.equal(backend.generate(PROMPTS, config, sequence_ids=ids).topk_ids,
                           rollout.topk_ids)
