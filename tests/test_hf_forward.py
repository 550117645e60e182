"""softgrpo.adapters.hf training forward: rollout/training parity (log-probs and rebuilt
input embeddings), the documented top-p quirk, values and gradients against the model's own
logits, tied/untied/biased heads, Gemma's embed_scale, gradient checkpointing, bf16
autocast, slices and errors."""

import math

import pytest
import torch
import transformers
from hf_models import make_model, make_tokenizer, model_and_tokenizer

from softgrpo import SoftThinkingConfig, soft_logprob, soft_token_embedding
from softgrpo.adapters.hf import (
    RolloutTrace,
    generate,
    input_embeddings,
    policy_logprobs,
)
from softgrpo.adapters.hf.embeddings import InputEmbedder
from softgrpo.rollout import select

PROMPTS = ["1 + 2 = <think>", "x y", "so we get 3 4 5 6 7 8 9", "the answer is"]
# Forcing the think-end at step 6 guarantees forced and discrete rows beside the soft ones
# (rows with cut slots: test_rows_with_cut_slots_reproduce_the_rollout).
CONFIG = SoftThinkingConfig(max_new_tokens=14, top_p=1.0, max_thinking_tokens=6, seed=7)
HEADS = [("qwen2", False), ("qwen2", True), ("llama", None), ("gemma", None), ("phi", None)]


def rollout_of(arch, tie=None, config=CONFIG):
    model, tokenizer = model_and_tokenizer(arch, tie=tie)
    trace = RolloutTrace()
    rollout = generate(model, tokenizer, PROMPTS, config, trace=trace)
    return model, rollout, trace


def logits_reference(model, rollout, temperature, pathwise=False):
    """soft_logprob on the model's own full logits over the rebuilt inputs (spec 4)."""
    prompt = rollout.prompt_ids.shape[1]
    embeds = input_embeddings(model, rollout, pathwise=pathwise)[:, :-1]
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], 1)[:, :-1].long()
    logits = model(inputs_embeds=embeds, attention_mask=mask,
                   position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, prompt - 1:]
    sel = rollout.response_mask
    values = soft_logprob(logits[sel], rollout.topk_ids[sel], rollout.perturbed[sel],
                          temperature=temperature, clamp=rollout.config.noise_clamp)
    return torch.zeros(sel.shape).masked_scatter(sel, values)


@pytest.mark.parametrize("arch, tie", HEADS)
def test_training_forward_reproduces_the_rollout(arch, tie):
    model, rollout, trace = rollout_of(arch, tie)
    mask = rollout.response_mask
    soft, forced = rollout.thinking_mask, rollout.forced_mask
    discrete = mask & ~soft
    assert soft.any() and forced.any() and (discrete & ~forced).any()
    with torch.no_grad():
        logp = policy_logprobs(model, rollout)
        embeds = input_embeddings(model, rollout)
    assert logp.dtype == torch.float32 and logp.shape == mask.shape
    assert (logp[~mask] == 0).all()
    torch.testing.assert_close(logp[soft], rollout.logprobs[soft], rtol=0, atol=1e-5)
    torch.testing.assert_close(logp[discrete], rollout.logprobs[discrete], rtol=0, atol=1e-5)
    assert torch.equal(embeds[trace.fed], trace.inputs[trace.fed])  # exactly what was fed


@pytest.mark.parametrize("top_p, temperature", [(0.8, 1.0), (0.95, 0.3)])
def test_rows_with_cut_slots_reproduce_the_rollout(top_p, temperature):
    """Slots that top-p cut are stored with their real id and perturbed -inf (spec 2); the
    training side normalises over the kept slots, so at the rollout's weights every soft row,
    cut or not, scores exactly its rollout-side log-prob."""
    config = CONFIG.replace(top_p=top_p, temperature=temperature, max_thinking_tokens=None,
                            max_new_tokens=16)
    model, rollout, _ = rollout_of("llama", config=config)
    soft = rollout.thinking_mask
    with torch.no_grad():
        logp = policy_logprobs(model, rollout)
    y, ids = rollout.perturbed[soft], rollout.topk_ids[soft]
    cut = y == -math.inf
    assert cut.any()
    assert (ids[cut] != 0).any() and not cut[:, 0].any()  # real ids; the token is never cut
    torch.testing.assert_close(logp[soft], rollout.logprobs[soft], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch, tie", [("qwen2", True), ("gemma", None), ("phi", None)])
@pytest.mark.parametrize("pathwise", [False, True])
def test_values_and_gradients_match_the_model_logits(arch, tie, pathwise):
    model, rollout, _ = rollout_of(arch, tie)
    params = [p for p in model.parameters() if p.requires_grad]
    temperature = 0.7
    logp = policy_logprobs(model, rollout, temperature=temperature, pathwise=pathwise,
                           chunk_size=16)
    grads = torch.autograd.grad(logp.sum(), params, allow_unused=True)
    ref = logits_reference(model, rollout, temperature, pathwise)
    ref_grads = torch.autograd.grad(ref.sum(), params, allow_unused=True)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-5)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        if r is None:
            assert g is None or not g.any(), name
            continue
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=name)
    head = model.get_output_embeddings()
    by_param = {id(p): g for p, g in zip(params, grads)}
    assert by_param[id(head.weight)].abs().sum() > 0
    if head.bias is not None:
        assert by_param[id(head.bias)].abs().sum() > 0


def test_pathwise_controls_the_gradient_through_the_inputs():
    model, rollout, _ = rollout_of("llama")  # untied: the table only feeds the inputs
    table = model.get_input_embeddings().weight
    detached = torch.autograd.grad(policy_logprobs(model, rollout).sum(), table,
                                   allow_unused=True)[0]
    assert detached is None
    kept = torch.autograd.grad(policy_logprobs(model, rollout, pathwise=True).sum(), table)[0]
    assert kept.abs().sum() > 0


def test_gemma_embed_scale_is_honoured():
    model, rollout, trace = rollout_of("gemma")
    embedder = InputEmbedder(model)
    table = model.get_input_embeddings().weight
    scale = math.sqrt(model.config.hidden_size)
    assert float(embedder.scale) == pytest.approx(scale)
    with torch.no_grad():
        embeds = input_embeddings(model, rollout)
        prompt = rollout.prompt_ids.shape[1]
        torch.testing.assert_close(embeds[:, :prompt], table[rollout.prompt_ids] * scale)
        soft = soft_token_embedding(table, rollout.topk_ids, rollout.perturbed,
                                    rollout.config.tau)
        torch.testing.assert_close(embeds[:, prompt:], soft * scale)
    assert not torch.allclose(embeds[:, :prompt], table[rollout.prompt_ids])
    assert torch.equal(embeds[trace.fed], trace.inputs[trace.fed])


class _ShiftedEmbedding(torch.nn.Embedding):
    def forward(self, ids):
        return super().forward(ids) + 1.0


def test_an_embedding_module_that_is_not_a_scaled_lookup_is_refused():
    model, tokenizer = model_and_tokenizer("qwen2")
    old = model.get_input_embeddings()
    shifted = _ShiftedEmbedding(old.num_embeddings, old.embedding_dim)
    model.set_input_embeddings(shifted)
    with pytest.raises(ValueError, match="unsupported input-embedding module"):
        generate(model, tokenizer, PROMPTS, CONFIG)


def test_gradient_checkpointing_and_bf16_autocast():
    model, rollout, _ = rollout_of("qwen2")
    params = [p for n, p in model.named_parameters() if "embed_tokens" not in n]  # detached
    plain = policy_logprobs(model, rollout)
    plain_grads = torch.autograd.grad(plain.sum(), params)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.gradient_checkpointing
    checkpointed = policy_logprobs(model, rollout)
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=1e-6)
    for g, r in zip(torch.autograd.grad(checkpointed.sum(), params), plain_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = policy_logprobs(model, rollout)
    grads = torch.autograd.grad(low.sum(), params)
    mask = rollout.response_mask
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low[mask] != plain[mask]).any()  # autocast did run the body in bf16
    assert (low[mask] - plain[mask]).abs().mean() < 0.05
    assert all(torch.isfinite(g).all() for g in grads) and grads[-1].abs().sum() > 0


def test_a_slice_scores_like_its_rows_in_the_full_batch():
    model, rollout, _ = rollout_of("phi")
    with torch.no_grad():
        full = policy_logprobs(model, rollout)
        part = policy_logprobs(model, select(rollout, [3, 1]))
    torch.testing.assert_close(part, full[[3, 1]], rtol=0, atol=1e-5)


def test_forward_errors():
    model, rollout, _ = rollout_of("qwen2")
    with pytest.raises(TypeError, match="Rollout"):
        policy_logprobs(model, rollout.tensors())
    bad = select(rollout, [0, 1])
    bad.perturbed = bad.perturbed[:, :-1]
    with pytest.raises(ValueError, match="perturbed"):
        policy_logprobs(model, bad)
    tokenizer = make_tokenizer()
    capped = transformers.Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, pad_token_id=0)
    gemma2 = transformers.Gemma2ForCausalLM(capped).eval()
    assert gemma2.config.final_logit_softcapping is not None
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        policy_logprobs(gemma2, rollout)
    assert make_model("qwen2", len(tokenizer)).get_output_embeddings() is not None
