"""Multiplex Thinking through softgrpo.adapters.hf (spec 10): records follow the noise keying,
the fed inputs are the records' mix, the training forward reproduces the rollout's per-draw
log-probs, replay, save/load with kept sets, slicing."""

import math

import pytest
import torch
from hf_models import boost, model_and_tokenizer
from test_hf_generate import PROMPTS, think_end_index

from softgrpo import SoftThinkingConfig, multiplex_logprob, noise_key
from softgrpo.adapters.hf import RolloutTrace, generate, input_embeddings, policy_logprobs
from softgrpo.rollout import Rollout, multiplex_step, select, to_discrete

CONFIGS = {
    "release": SoftThinkingConfig(soft_policy="multiplex", k=3, max_new_tokens=14,
                                  max_thinking_tokens=6, seed=5),
    "filtered": SoftThinkingConfig(soft_policy="multiplex", k=2, max_new_tokens=14,
                                   multiplex_top_k=6, multiplex_top_p=0.9, seed=6,
                                   multiplex_weighting="uniform", temperature=0.8),
}


def rollout_of(name, arch="phi"):
    model, tokenizer = model_and_tokenizer(arch)
    if arch == "phi":  # a head with a bias: make the think-end likely
        boost(model, tokenizer, ["</think>"], 1.0)
    trace = RolloutTrace()
    sequence_ids = torch.tensor([4, 0, 9, 2])
    rollout = generate(model, tokenizer, PROMPTS, CONFIGS[name], sequence_ids=sequence_ids,
                       trace=trace)
    return model, tokenizer, rollout, trace


@pytest.mark.parametrize("name", CONFIGS)
def test_records_follow_the_noise_keying(name):
    """Each step's records are multiplex_step on that step's logits with
    seed = noise_key(seed, sequence id), offset = t; the think-end step is discrete."""
    _, _, rollout, trace = rollout_of(name)
    config = rollout.config
    end = think_end_index(rollout)
    mask, soft = rollout.response_mask, rollout.thinking_mask
    assert soft.any() and (mask & ~soft).any()
    keys = noise_key(config.seed, rollout.sequence_ids)
    for t in range(rollout.response_ids.shape[1]):
        rows = mask[:, t]
        logits = trace.logits[rows, t]
        forced = rollout.forced_mask[rows, t]
        sample, kept = multiplex_step(logits, config, keys[rows], t, (t <= end[rows]) & ~forced)
        ended = (t == end[rows]) & ~forced
        sample = to_discrete(sample, ended, logits, config.temperature, -math.inf)
        for got, want in ((rollout.topk_ids, sample.ids), (rollout.response_ids, sample.token),
                          (rollout.logprobs, sample.logprob)):
            assert torch.equal(got[rows, t][~forced], want[~forced])
        assert torch.equal(rollout.perturbed[rows, t][~forced], sample.perturbed[~forced])
        if config.multiplex_top_k:
            assert torch.equal(rollout.kept_ids[rows, t][~forced & ~ended],
                               kept[~forced & ~ended])
    # conventions: thinking rows finite, discrete rows [l, -inf, ...]
    assert torch.isfinite(rollout.perturbed[soft]).all()
    discrete = mask & ~soft
    assert (rollout.perturbed[discrete][:, 1:] == -math.inf).all()
    assert (rollout.topk_ids[discrete][:, 1:] == 0).all()
    if config.multiplex_top_k:
        assert rollout.kept_ids.shape == (*mask.shape, config.multiplex_top_k)
        assert (rollout.kept_ids[discrete] == -1).all()
        inside = (rollout.topk_ids[soft][:, :, None] == rollout.kept_ids[soft][:, None]).any(-1)
        assert inside.all()
    else:
        assert rollout.kept_ids is None


@pytest.mark.parametrize("name", CONFIGS)
def test_multiplex_step_takes_per_row_offsets(name):
    """Rows at different response positions in one call (as the vLLM adapter's batches hold
    them), soft and discrete rows mixed, get the records each gets alone at its position."""
    config = CONFIGS[name]
    assert config.kept_width == (config.multiplex_top_k or 0)
    assert config.replace(soft_policy="gumbel", k=5).kept_width == 0
    logits = 3 * torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    keys = noise_key(config.seed, torch.arange(6))
    offsets = torch.tensor([0, 5, 5, 2, 9, 1])
    soft = torch.tensor([True, False, True, True, False, True])
    together, kept = multiplex_step(logits, config, keys, offsets, soft)
    assert kept.shape == (6, config.kept_width)
    for i in range(6):
        alone, kept_alone = multiplex_step(logits[i:i + 1], config, keys[i:i + 1],
                                           int(offsets[i]), soft[i:i + 1])
        for field, want in zip(together, alone):
            assert torch.equal(field[i:i + 1], want)
        assert torch.equal(kept[i:i + 1], kept_alone)


@pytest.mark.parametrize("name", CONFIGS)
def test_fed_inputs_are_the_records_mix_and_training_reproduces_the_rollout(name):
    model, _, rollout, trace = rollout_of(name)
    prompt = rollout.prompt_ids.shape[1]
    fed = trace.fed[:, prompt:]
    embeds = input_embeddings(model, rollout)[:, prompt:]
    torch.testing.assert_close(embeds[fed], trace.inputs[:, prompt:][fed], rtol=0, atol=1e-6)
    with torch.no_grad():
        logp = policy_logprobs(model, rollout)
        full = policy_logprobs(model, rollout, multiplex_logprob="full")
    mask, soft = rollout.response_mask, rollout.thinking_mask
    k = rollout.config.k
    assert logp.shape == (*mask.shape, k) and logp.dtype == torch.float32
    # at the rollout's weights the filtered log-prob of every draw is the sampler's
    torch.testing.assert_close(logp[soft], rollout.perturbed[soft], rtol=1e-4, atol=1e-4)
    assert (logp[~mask] == 0).all()
    # the full log-prob is log_softmax over the vocabulary at the step's logits
    z = trace.logits[mask] / rollout.config.temperature
    want = torch.log_softmax(z, -1).gather(-1, rollout.topk_ids[mask])
    want[~soft[mask], 1:] = 0.0
    torch.testing.assert_close(full[mask], want, rtol=1e-4, atol=1e-4)
    discrete = mask & ~soft
    torch.testing.assert_close(logp[discrete], full[discrete], rtol=0, atol=1e-6)
    # and multiplex_logprob on those logits, with the kept sets, is the filtered one
    kept = None if rollout.kept_ids is None else rollout.kept_ids[mask]
    from_logits = multiplex_logprob(trace.logits[mask], rollout.topk_ids[mask],
                                    rollout.perturbed[mask], kept=kept,
                                    temperature=rollout.config.temperature)
    torch.testing.assert_close(logp[mask], from_logits, rtol=1e-4, atol=1e-4)


def test_gradients_flow_and_slices_line_up():
    model, _, rollout, _ = rollout_of("filtered", "qwen2")
    logp = policy_logprobs(model, rollout)
    logp.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    part = select(rollout, [2, 0])
    with torch.no_grad():
        whole, sliced = policy_logprobs(model, rollout), policy_logprobs(model, part)
    torch.testing.assert_close(sliced, whole[[2, 0]], rtol=1e-5, atol=1e-5)
    assert torch.equal(part.kept_ids, rollout.kept_ids[[2, 0]])


def test_replay_and_save_load(tmp_path):
    _, _, first, _ = rollout_of("filtered")
    _, _, again, _ = rollout_of("filtered")
    for name, value in first.tensors().items():
        assert torch.equal(value, getattr(again, name)), name
    first.save(tmp_path / "r.pt")
    loaded = Rollout.load(tmp_path / "r.pt")
    assert loaded.config == first.config and loaded.config.multiplex
    assert set(loaded.tensors()) == set(first.tensors()) and "kept_ids" in loaded.tensors()
    for name, value in first.tensors().items():
        assert torch.equal(value, getattr(loaded, name)), name


@pytest.mark.parametrize("changes,match", [
    (dict(k=1), "k must be"), (dict(multiplex_top_p=0.9), "needs a top-k filter"),
    (dict(multiplex_top_k=200), "top_k must be"), (dict(multiplex_weighting="mean"), "weighting"),
    (dict(temperature=0.0), "temperature"), (dict(soft_policy="dirichlet"), "soft_policy"),
])
def test_config_refuses_bad_multiplex_settings(changes, match):
    with pytest.raises(ValueError, match=match):
        CONFIGS["release"].replace(**changes)
